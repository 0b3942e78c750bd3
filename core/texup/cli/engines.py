"""``texup engines``: what can run here, what was measured, and what ``--engine auto`` picks.

Exit code 0; 1 when ``--measure`` cannot run any engine.
"""

from __future__ import annotations

import argparse
import json
import sys

from texup.options import ENGINES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engines",
        help="show the engines and devices available here, and which one auto picks",
        description=f"List the engines ({', '.join(e for e in ENGINES if e != 'auto')}) and devices (CPU, CUDA, MPS, "
        "Vulkan GPUs) texup can use on this machine, the measurements behind --engine auto, and its choice per model.",
    )
    p.add_argument(
        "--measure",
        nargs="?",
        const="realesrgan-x4plus",
        metavar="MODEL",
        default=None,
        help="measure every candidate now on MODEL (default: realesrgan-x4plus) and record the winner",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from texup.engines.base import EngineUnavailable
    from texup.engines.select import calibrate, summary
    from texup.engines.spec import registered
    from texup.errors import TexupError

    if args.measure:
        try:
            winner, _times = calibrate(args.measure, status=lambda line: print(f"texup: {line}", file=sys.stderr))
        except (TexupError, ValueError, EngineUnavailable) as err:
            print(f"texup engines: error: {err}", file=sys.stderr)
            return 1
        print(
            f"texup: auto picks {winner.name} on {winner.device} ({winner.precision}) for {args.measure}",
            file=sys.stderr,
        )
    info = summary()
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"cpu: {info['cpu']}")
    for spec in registered():
        for line in spec.summary_lines(info):
            print(line)
    print("candidates for --engine auto: " + (", ".join(info["candidates"]) or "none"))
    measured = info["measured"]
    if not measured:
        print("measured: nothing yet (the first `texup upscale` of a model measures; or run `texup engines --measure`)")
    for key, entry in sorted(measured.items()):
        model, _, pool = key.partition("|")
        times = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(entry.get("seconds_per_mpx", {}).items(), key=lambda kv: kv[1])
        )
        print(f"{model}: auto -> {entry.get('choice')} (s per output Mpx: {times}; measured {entry.get('measured')})")
    print(f"recorded in {info['calibration_file']}")
    return 0
