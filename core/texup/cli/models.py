"""``texup models`` (being written)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, fetch and convert models")
    p.set_defaults(func=lambda args: 2)
