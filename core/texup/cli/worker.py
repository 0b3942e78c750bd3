"""``texup worker``: serve upscale jobs as JSON lines on stdin/stdout (for the Blender add-on).

stdout carries protocol lines only; logs go to stderr. Exit code 0 after ``shutdown`` or end of stdin,
2 for an unusable ``--device``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from texup.options import PRECISIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="serve upscale jobs as JSON lines on stdin/stdout (used by the Blender add-on)",
        description="Long-lived upscaling process speaking texup's JSON-lines protocol on stdin/stdout; "
        "models stay loaded between jobs. Logs go to stderr.",
    )
    p.add_argument("--device", default="auto", help="default device for jobs: auto, cpu, cuda[:N], mps or vulkan[:N]")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="default precision for jobs")
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="stderr log level (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texup.worker.server import serve_stdio

    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s texup-worker %(levelname)s %(message)s"
    )
    return serve_stdio(device=args.device, precision=args.precision)
