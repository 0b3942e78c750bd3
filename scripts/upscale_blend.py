"""Upscale a .blend file's image textures headless, with the same code as the add-on's Upscale button.

    blender -b scene.blend --python scripts/upscale_blend.py -- [--model NAME|PATH] [--max-size N]
        [--images a,b] [--roles color,normal,data] [--scale 2|4] [--tile N] [--seamless auto|on|off]
        [--color-fix auto|on|off] [--alpha auto|model|resample] [--detail D]
        [--out-dir DIR] [--save | --save-as PATH] [--report PATH.json] [--worker-python PATH]

Also runs with a plain Python that has the ``bpy`` module: ``python scripts/upscale_blend.py scene.blend
[options]``. The worker (``python -m texup worker``) runs in the Python given by --worker-python, else
TEXUP_PYTHON, else the one of a ``texup`` command on PATH. While it runs it prints a progress line at
least on every new file and at most every 2 s (``texup: 2/5 wall.1001.png 40% (job 23%, ETA 1m05s)``).
Writes a JSON report (per image: name, role, input and output size, output path, seconds, status,
error; the textures the filters left out with the reason).

Reruns are incremental: results go to ``<stem>_x<scale>.<ext>`` in --out-dir, and the folder's manifest
(``.texup/outputs.json``, the record ``texup upscale`` keeps) tells which are up to date: an unchanged
texture whose output is current is relinked to it (status ``up_to_date``), a changed source is redone in
place, and no second copy (``_2``) is ever written for the same texture. When every chosen texture is up to
date no worker starts, and --save does not save a file in which nothing changed.

Exit codes: 0 -- every chosen texture was upscaled or is up to date (textures whose file was already missing
when the run began are reported as ``skipped``, a known gap; the filters' left-outs do not count); 1 -- some
chosen texture failed or was cancelled, the --timeout ran out, or (with --strict) a chosen texture's file was
missing; 2 -- a usage error, or the worker cannot start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The add-on package lives in the repository: make `import blender_addon` work from any folder.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import bpy  # noqa: E402  (after the sys.path set-up, like every import of the add-on below)

from blender_addon import scene as addon_scene  # noqa: E402
from blender_addon import service  # noqa: E402
from blender_addon.bridge import client as bridge_client  # noqa: E402
from blender_addon.bridge import options as schema  # noqa: E402
from blender_addon.bridge.client import WorkerError, WorkerStartError, find_worker_python  # noqa: E402
from blender_addon.bridge.jobs import (  # noqa: E402
    JobTracker,
    exit_code,
    left_out_rows,
    report_document,
    sort_textures,
    unknown_names,
    write_report,
)
from blender_addon.bridge.scene_options import run_options  # noqa: E402
from blender_addon.bridge.worker_protocol import ProtocolError  # noqa: E402
from blender_addon.defaults import DEFAULT_MODEL, DEFAULT_OUT_DIR  # noqa: E402
from blender_addon.upscale_run import RunError, RunSettings, UpscaleRun, run_blocking  # noqa: E402

EXIT_FAILED = 1
EXIT_USAGE = 2
PROGRESS_EVERY = 2.0  # seconds between progress lines (a new file always gets one)


def _detail(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def run_flags() -> list[schema.Option]:
    """The schema's run options (:class:`RunSettings`' fields) whose flags come from the schema, any kind: all but
    those this script writes by hand (--model, --scale, --tile, --device)."""
    own = {"model", "scale", "tile", "device"}
    return [option for option in run_options() if option.name not in own]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="blender -b scene.blend --python scripts/upscale_blend.py --",
        description="Upscale the image textures of a .blend file and relink its materials.",
    )
    parser.add_argument(
        "blend", nargs="?", help="the .blend to open (only with plain python + bpy; blender -b opens it itself)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or weights file (default %(default)s)")
    parser.add_argument(
        "--max-size", type=int, default=None, metavar="N", help="only textures whose larger side is at most N pixels"
    )
    parser.add_argument("--images", type=_csv, default=None, metavar="A,B", help="only these image datablocks")
    parser.add_argument("--roles", type=_csv, default=None, metavar="R,R", help="only these roles: color,normal,data")
    parser.add_argument("--include-upscaled", action="store_true", help="also upscale earlier texup results again")
    parser.add_argument("--scale", type=int, choices=(2, 4), default=4)
    parser.add_argument("--tile", type=int, default=0, help="input tile size in pixels (0: automatic)")
    parser.add_argument(
        "--detail",
        type=_detail,
        default=1.0,
        metavar="D",
        help="the panel's Detail: 1 the model, 0 its PSNR partner, between them a blend of the two (models with "
        "a partner only; others run as they are)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps, vulkan or vulkan:N")
    for option in run_flags():  # texup's schema: --seamless, --color-fix, --engine, --precision, --layout, ...
        parser.add_argument(option.flag, **option.cli_kwargs(argparse.ArgumentTypeError))
    parser.add_argument(
        "--out-dir",
        default=DEFAULT_OUT_DIR,
        help="folder for the results; // is the .blend's folder (default %(default)s)",
    )
    save = parser.add_mutually_exclusive_group()
    save.add_argument("--save", action="store_true", help="save the .blend in place")
    save.add_argument("--save-as", metavar="PATH", help="save the changed file as PATH")
    parser.add_argument("--report", metavar="PATH.json", help="write the JSON report here")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 also when a chosen texture's file was already missing (default: reported as skipped, exit 0)",
    )
    parser.add_argument("--worker-python", default=None, help="the Python with texup (default: TEXUP_PYTHON, PATH)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up (cancel the job, change nothing) after this many seconds of upscaling",
    )
    return parser.parse_args(argv)


def script_argv() -> list[str]:
    """Our arguments: after ``--`` (blender -b ... -- args), else everything after the script."""
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1 :]
    return [] if bpy.app.binary_path and os.path.basename(sys.argv[0]).startswith("blender") else sys.argv[1:]


HEADLESS_HINT = "pass --worker-python PATH, the python of an environment with texup (or set TEXUP_PYTHON)"


bridge_client.SETTING_HINT = HEADLESS_HINT  # the worker's own start errors end with this script's flag


def worker_python(option: str | None) -> str:
    """The worker's Python from --worker-python, TEXUP_PYTHON or PATH; raises WorkerStartError naming
    this script's own flags (the add-on's preferences do not exist here)."""
    python = find_worker_python(option)
    if python is None:
        raise WorkerStartError(f"no Python with texup found: {HEADLESS_HINT}")
    if not os.path.exists(python):
        given = "--worker-python" if option else "TEXUP_PYTHON"
        raise WorkerStartError(f"the worker Python {python!r} ({given}) does not exist: {HEADLESS_HINT}")
    return python


class ProgressPrinter:
    """Prints the job's progress: on each new file, else at most every ``every`` seconds."""

    def __init__(self, every: float = PROGRESS_EVERY, out=None, clock=time.monotonic) -> None:
        self.every = every
        self.out = out or sys.stdout
        self.clock = clock
        self._last_at = float("-inf")
        self._last_item: str | None = None

    def __call__(self, tracker: JobTracker) -> None:
        now = self.clock()
        if tracker.current_item is None:
            return
        if tracker.current_item == self._last_item and now - self._last_at < self.every:
            return
        self._last_at, self._last_item = now, tracker.current_item
        self.out.write(f"texup: {tracker.progress_line()}\n")
        self.out.flush()


def fail(message: str, code: int, report: str | None, **context) -> int:
    sys.stderr.write(f"upscale_blend: error: {message}\n")
    if report:
        write_report(report, report_document([], error=message, **context))
    return code


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.blend:
        bpy.ops.wm.open_mainfile(filepath=os.path.abspath(args.blend))
    blend = bpy.data.filepath
    context = {"blend": blend, "model": args.model, "scale": args.scale}
    try:
        scanned = addon_scene.scan()
        # A file saved after an earlier run uses the results: their originals are what a rerun checks (and redoes
        # in place when their source changed), so `--images color.png` still names them.
        scanned += addon_scene.stand_in_originals(scanned)
        if args.images:
            missing = unknown_names(scanned, args.images)
            if missing:
                return fail(
                    f"no image texture named {', '.join(missing)} in {blend or 'the file'}",
                    EXIT_USAGE,
                    args.report,
                    **context,
                )
        chosen, left_out = sort_textures(
            scanned, max_size=args.max_size, roles=args.roles, names=args.images, include_upscaled=args.include_upscaled
        )
    except ValueError as err:
        return fail(str(err), EXIT_USAGE, args.report, **context)
    skipped = left_out_rows(left_out)
    for row in skipped:  # nothing is dropped silently: each left-out texture is said and reported
        sys.stderr.write(f"upscale_blend: {row['name']}: left out: {row['reason']}\n")
    if not chosen:
        if args.report:
            write_report(args.report, report_document(skipped, **context))
        sys.stderr.write("upscale_blend: no textures match the filters\n")
        return 0
    out_dir = args.out_dir
    if not out_dir.startswith("//"):
        out_dir = os.path.abspath(out_dir)
    settings = RunSettings(
        model=args.model,
        scale=args.scale,
        tile=args.tile,
        detail=args.detail,
        device=args.device,
        out_dir=out_dir,
        **{option.name: getattr(args, option.name) for option in run_flags()},
    )
    run = UpscaleRun(chosen, settings)
    started = time.monotonic()
    timed_out = False

    def connect():
        """The worker, started only when some texture's output is not up to date."""
        python = worker_python(args.worker_python)
        print(f"texup: starting the worker ({python} -m texup worker)", flush=True)
        client = service.get_client(python)
        print(f"texup: upscaling {len(run.plan.job.items)} file(s)", flush=True)
        return client

    try:
        rows = run_blocking(connect, run, timeout=args.timeout, on_progress=ProgressPrinter())
        timed_out = run.crashed is not None and run.crashed.startswith("the timeout")
    except RunError as err:
        rows = run.report()
        for row in rows:
            sys.stderr.write(f"upscale_blend: {row['name']}: {row['error']}\n")
        sys.stderr.write(f"upscale_blend: {err}\n")
    except (WorkerStartError, WorkerError, ProtocolError) as err:
        return fail(str(err), EXIT_USAGE, args.report, **context)
    finally:
        service.stop_worker()
    if timed_out:
        sys.stderr.write(f"upscale_blend: error: {run.crashed}; nothing was changed\n")
    for row in rows:
        if row["status"] in ("ok", "up_to_date"):
            size = "x".join(map(str, row["output_size"] or ()))
            how = "up to date" if row["status"] == "up_to_date" else f"{row['seconds']} s"
            sys.stderr.write(f"upscale_blend: {row['name']} -> {row['output_path']} ({size}, {how})\n")
        elif row["status"] == "skipped":
            sys.stderr.write(f"upscale_blend: {row['name']}: skipped: {row['error']}\n")
        else:
            sys.stderr.write(f"upscale_blend: {row['name']}: {row['status']}: {row['error']}\n")
    saved_as = None
    changed = any(row.get("nodes_changed") for row in rows)
    if args.save_as:
        saved_as = os.path.abspath(args.save_as)
        bpy.ops.wm.save_as_mainfile(filepath=saved_as, relative_remap=True)
    elif args.save:
        if not blend:
            return fail(
                "--save needs a .blend that was opened from a file; use --save-as", EXIT_USAGE, args.report, **context
            )
        if changed:
            bpy.ops.wm.save_mainfile()
            saved_as = blend
        else:  # nothing relinked: the file on disk is already what this run would save
            sys.stderr.write(f"upscale_blend: nothing changed in {blend}; not saving it\n")
    if args.report:
        extra = {"error": run.crashed} if timed_out else {}
        write_report(
            args.report,
            report_document(
                list(rows) + skipped, saved=saved_as, seconds=round(time.monotonic() - started, 3), **extra, **context
            ),
        )
    if not rows:
        return EXIT_FAILED
    return EXIT_FAILED if exit_code(rows, strict=args.strict) else 0


if __name__ == "__main__":
    sys.exit(main(script_argv()))
