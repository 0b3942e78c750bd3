"""``texup upscale`` (being written)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="upscale image files, folders or globs")
    p.set_defaults(func=lambda args: 2)
