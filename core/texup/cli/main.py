"""The ``texup`` command: ``texup upscale | engines | models | worker | train``.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser it adds sets
``func(args) -> int`` (the process exit code). Library code never prints; this layer turns events into
progress bars and one-line messages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from texup._malloc import keep_freed_memory


def build_parser() -> argparse.ArgumentParser:
    from texup import __version__
    from texup.cli import engines, models, train, upscale, worker

    parser = argparse.ArgumentParser(
        prog="texup",
        description=(
            "ESRGAN texture upscaling: texture-grade tiles, alpha, 16-bit and float, offline pretrained models."
        ),
    )
    parser.add_argument("--version", action="version", version=f"texup {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    upscale.add_parser(sub)
    engines.add_parser(sub)
    models.add_parser(sub)
    train.add_parser(sub)
    worker.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Run as a program (``argv`` None: the ``texup`` command, ``python -m texup``, the add-on's worker), the
    process keeps freed memory for reuse (:func:`texup._malloc.keep_freed_memory`; the worker gives it back
    after every job). Called with an explicit ``argv`` from Python, the caller's process is left alone.
    """
    if argv is None:
        keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("texup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
