"""``texup upscale IN... -o OUTDIR``: files, folders and globs, one failure never stops the batch.

A run is a plan (:mod:`texup.library`: inputs, this farm task's shard, output names, what is up to date and
why; no model) and its execution here (read ahead, upscale, write behind, record each output in the folder's
manifest, :mod:`texup.outputs`). A rerun upscales only outputs that are new or whose source, model, texup
version or pixel-changing options changed.

Exit code: 0 when every input was upscaled, up to date (or skipped with ``--skip-existing``), 1 when any
input failed, 2 for a usage error. Each failure is one line on stderr: ``texup: error: <file>: <reason>``.
Each result is one line on stdout: ``<input> -> <output>`` (with the reason when an earlier output was redone).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texup import options as schema
from texup.batch import Batch, execute_on_ray
from texup.errors import TexupError
from texup.imageio import chosen_dds_format, format_for_path
from texup.inference.pipeline import UpscaleOptions, options_from
from texup.library import (
    Plan,
    Planned,
    Settings,
    expand_inputs,
    make_plan,
    options_of,
    output_size_problem,
    parse_shard,
    path_reason,
    scale_label,
    take_shard,
)
from texup.options import SCALE_MAX, EngineChoice
from texup.outputs import ManifestError, OutputRecord
from texup.weights.ref import ModelRef

if TYPE_CHECKING:
    from texup.inference.pipeline import Upscaler

__all__ = ["add_parser", "parse_size", "run"]


#: The run options whose flags are written here by hand (a longer help, --scale or --size, WxH with the formats'
#: limits); every other option's flag is the schema's (:meth:`texup.options.Option.cli_kwargs`).
_OWN_FLAGS = ("model", "scale", "target_size")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale image files, folders or globs",
        description="Upscale textures with an ESRGAN model. Outputs keep the input's format, bit depth, "
        "channels and colour space, and are written atomically, never over an input.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out-dir", required=True, type=Path, help="folder for the results (created if needed)")
    p.add_argument(
        "--model",
        default=None,
        help="known model name (see `texup models list`), a weights file, or a blend of two models "
        "blend:A,B@ALPHA ((1 - ALPHA) * A + ALPHA * B, made once and cached; see `texup models blend`) "
        "(default: realesrgan-x4plus)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=None, help="output scale, e.g. 2, 3, 4 (default: the model's)")
    size.add_argument("--size", default=None, metavar="WxH", help="exact output size, e.g. 2048x2048")
    p.add_argument(
        "--suffix",
        default="_x{scale}",
        help="added to each output's stem; {scale} is replaced (default: %(default)s; use '' for none)",
    )
    p.add_argument("--format", default=None, help="write this format instead of the input's (png, tiff, exr, ...)")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose output file already exists, whatever it was made from (by name only)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="redo texup's earlier outputs even when they are up to "
        "date (files texup did not write still need --overwrite)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list each output with what would happen to it and "
        "why (new, source/model/options changed, up to date); write nothing (no model is loaded, except once "
        "for a weights file this folder has not seen when the suffix needs its scale)",
    )
    p.add_argument(
        "--shard",
        type=_shard_arg,
        default=None,
        metavar="K/N",
        help="do only task K's share of N (1 <= K <= N) for a farm array job: chosen by a hash of "
        "each input's relative path, so N tasks cover the inputs once and adding files moves no other",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="spread the files over a Ray cluster (pip install 'texup[ray]'): at ADDRESS, else RAY_ADDRESS, "
        "else a new local one; one warm model per node (or GPU); paths must mean the same on every node",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files at output paths even when texup did not write them (never this "
        "run's inputs); without it only texup's own, unchanged earlier outputs are replaced",
    )
    p.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="descend into sub-folders of folder inputs (the output keeps the sub-folder layout)",
    )
    # every other run option's flag from the schema, any kind: --tile, --overlap, --seamless, --role, --color-fix,
    # --dds-format, --engine, --device, --precision, --layout (a new option of texup.options gets its flag here)
    for option in schema.RUN_OPTIONS:
        if option.name not in _OWN_FLAGS:
            p.add_argument(option.flag, **option.cli_kwargs(argparse.ArgumentTypeError))
    p.add_argument(
        "--max-pixels",
        type=_pixels_arg,
        default=None,
        metavar="N|WxH",
        help="largest input to decode, checked from the header (default 8192x8192, or TEXUP_MAX_PIXELS)",
    )
    p.add_argument("--debug", action="store_true", help="print a traceback for unexpected errors")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int, int]:
    """``"2048x1024"`` -> (2048, 1024); raises ValueError with a readable message.

    Each side must fit the largest any output format stores (``texup.imageio.write.LARGEST_SIDE``);
    :func:`_check_size_fits` then checks the formats this run writes."""
    from texup.imageio.write import LARGEST_SIDE

    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and len(p.strip()) <= 20 for p in parts):
        raise ValueError(f"--size must look like WIDTHxHEIGHT, e.g. 2048x2048, not {shown}")
    w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ValueError(f"--size must be at least 1x1, not {shown}")
    if max(w, h) > LARGEST_SIDE:
        raise ValueError(f"--size {w}x{h}: no image format texup writes holds a side above {LARGEST_SIDE} pixels")
    return w, h


def _check_size_fits(args: argparse.Namespace, target: tuple[int, int]) -> None:
    """ValueError when an output of ``target`` size cannot be stored in the format this run writes: --format's,
    else each input's own (the inputs listed as the run will list them: folders and patterns too)."""
    from texup.imageio.write import size_problem

    if args.format is not None:
        formats = {format_for_path(Path("x." + args.format.lower().lstrip(".")))}
    else:
        items, _problems = expand_inputs(args.inputs, recursive=args.recursive)  # problems: reported by the run
        formats = set()
        for item in items:
            try:
                formats.add(format_for_path(item.src))
            except ValueError:  # not an image suffix: the run says so
                continue
    for fmt in sorted(formats):
        problem = size_problem(fmt, *target)
        if problem:
            raise ValueError(f"--size {target[0]}x{target[1]}: {problem}; choose a smaller --size or another --format")


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pixels_arg(text: str) -> int:
    from texup.limits import parse_pixels

    try:
        return parse_pixels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _has_separator(text: str) -> bool:
    return any(sep and sep in text for sep in ("/", os.sep, os.altsep))


def _out_dir_problem(out_dir: Path) -> str | None:
    """Why ``out_dir`` cannot be the output folder (an existing file on its way, a loop of symbolic links, a name
    the system refuses), or None."""
    try:
        out_dir.resolve()  # Python 3.11 raises RuntimeError for a loop of links, later versions OSError
    except (RuntimeError, OSError) as err:
        return f"-o {out_dir}: {path_reason(err, 'folder')}"
    here = out_dir
    try:
        while not here.exists() and here != here.parent:
            here = here.parent
        if here.exists() and not here.is_dir():
            if here == out_dir:
                return f"-o {out_dir} is a file, not a folder"
            return f"-o {out_dir}: {here} is a file, not a folder"
    except OSError as err:  # a name too long, a folder that cannot be searched
        return f"-o {out_dir}: {path_reason(err, 'folder')}"
    return None


def _validate(args: argparse.Namespace) -> tuple[int, int] | None:
    """Usage errors as ValueError; returns the exact output size (--size) or None."""
    target = parse_size(args.size) if args.size else None
    if args.format is not None:
        format_for_path(Path("x." + args.format.lower().lstrip(".")))
    if args.tile is not None and args.overlap > args.tile:
        raise ValueError(f"--overlap ({args.overlap}) must not be larger than --tile ({args.tile})")
    if _has_separator(args.suffix):
        raise ValueError(f"--suffix must not contain a path separator, got {args.suffix!r}")
    if args.format is not None and _has_separator(args.format):
        raise ValueError(f"--format must be a format name such as png, got {args.format!r}")
    problem = _out_dir_problem(args.out_dir)
    if problem:
        raise ValueError(problem)
    if target is not None:
        _check_size_fits(args, target)
    if args.scale is not None and not 0 < args.scale <= SCALE_MAX:
        raise ValueError(f"--scale must be above 0 and at most {SCALE_MAX:g}")
    if args.force and args.skip_existing:
        raise ValueError("--force redoes outputs and --skip-existing leaves them: choose one")
    return target


def _known_scale(model: ModelRef, model_id: str, record: OutputRecord) -> int | None:
    """The model's scale without loading it: the registry's for a known name, else what an earlier run here
    recorded for the same weights."""
    from texup.weights.registry import KNOWN_MODELS

    if model.kind == "name" and model.text in KNOWN_MODELS:
        return KNOWN_MODELS[model.text].scale
    scale = record.model_info(model_id).get("scale")
    return int(scale) if isinstance(scale, int) else None


def _print_plan(plan: Plan, out_dir: Path) -> None:
    for group in (plan.todo, plan.current, plan.skipped):
        for planned in group:
            print(f"{planned.item.src} -> {planned.dst} ({planned.reason})")
    todo = ", ".join(f"{n} {why}" for why, n in sorted(plan.reasons().items()))
    line = f"texup: dry run: {len(plan.todo)} to upscale" + (f" ({todo})" if todo else "")
    line += f", {len(plan.current)} up to date"
    if plan.skipped:
        line += f", {len(plan.skipped)} skipped (exist)"
    if plan.refused:
        line += f", {len(plan.refused)} would fail"
    print(f"{line}; nothing written to {out_dir}", file=sys.stderr)


class _Stop(Exception):
    """Ends the command early with exit code ``code`` (what went wrong is printed already)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _say_error(err: object) -> None:
    print(f"texup: error: {err}", file=sys.stderr)


@dataclass
class _Prepared:
    """What :func:`_prepare` decided: the plan and what executing it needs."""

    plan: Plan
    record: OutputRecord
    settings: Settings
    model: ModelRef  # resolved once
    model_id: str
    options: UpscaleOptions
    problems: int  # inputs that could not be expanded (already reported)
    upscaler: Upscaler | None  # opened while planning when a weights file's scale names the outputs


def _open_upscaler(args: argparse.Namespace, model: ModelRef) -> Upscaler:
    import texup.api as api

    return api.get_upscaler(
        model,
        choice=EngineChoice.from_values(vars(args)),
        status=lambda line: print(f"texup: {line}", file=sys.stderr),
    )


def _prepare(args: argparse.Namespace, fail: Callable[[object, str], None]) -> _Prepared:
    """Validate the options, expand the inputs (``--shard``), identify the model and plan every output
    (:func:`texup.library.make_plan`). Raises :class:`_Stop` when there is nothing to plan."""
    import texup
    import texup.api as api

    try:
        target = _validate(args)
        dds_format = chosen_dds_format(args.dds_format)  # else TEXUP_DDS_FORMAT: Ray nodes get it from here
    except (ValueError, TexupError) as err:
        print(f"texup upscale: error: {err}", file=sys.stderr)
        raise _Stop(2) from None
    items, found = expand_inputs(args.inputs, recursive=args.recursive)
    items = take_shard(items, args.shard)
    problems = [problem for problem in found if not problem.warning]
    for problem in found:
        if problem.warning:  # left out, named; the batch goes on
            print(f"texup: warning: {problem.arg}: {problem.reason}", file=sys.stderr)
        else:
            fail(problem.arg, problem.reason)
    if not items:
        if args.shard is not None and not problems:
            print(f"texup: shard {args.shard[0]}/{args.shard[1]} holds none of these inputs", file=sys.stderr)
            raise _Stop(0)
        raise _Stop(1)

    model = ModelRef.of(os.fspath(args.model or api.DEFAULT_MODEL))
    record = OutputRecord(args.out_dir)  # what earlier runs wrote here, and from what
    upscaler: Upscaler | None = None
    try:
        model_id = model.identity(record.file_hash)
        scale = args.scale
        if scale is None and "{scale}" in args.suffix:
            scale = _known_scale(model, model_id, record)
            if scale is None:  # a weights file this folder has not seen: its scale is in the weights
                upscaler = _open_upscaler(args, model)
                scale = upscaler.scale
    except (TexupError, ValueError, OSError) as err:
        _say_error(err)
        raise _Stop(1) from None
    options = options_from(vars(args), target_size=target, dds_format=dds_format)
    settings = Settings(
        out_dir=args.out_dir,
        suffix=args.suffix.replace("{scale}", scale_label(scale) if scale else ""),
        fmt=args.format,
        model=model_id,
        texup=texup.__version__,
        options=options_of(options),
        skip_existing=args.skip_existing,
        overwrite=args.overwrite,
        force=args.force,
    )
    plan = make_plan(items, settings, record)
    return _Prepared(plan, record, settings, model, model_id, options, len(problems), upscaler)


def _execute(args: argparse.Namespace, prep: _Prepared, batch: Batch) -> None:
    """Run the plan: refresh the records of touched-but-unchanged sources, then upscale what it says, on Ray
    (``--ray``) or here. Raises :class:`_Stop` when no model or cluster can run it."""
    record, todo = prep.record, prep.plan.todo
    for dst, entry in prep.plan.refresh:
        if record.entry(dst) is not None:
            record.put(str(record.key(dst)), entry)
    if not todo:
        return
    upscaler = prep.upscaler
    if args.ray is None and upscaler is None:
        try:
            upscaler = _open_upscaler(args, prep.model)
        except (TexupError, ValueError) as err:
            _say_error(err)
            raise _Stop(1) from None
    if upscaler is not None:  # known to the next run (a weights file's scale names its outputs)
        record.note_model(prep.model_id, scale=upscaler.scale)
    todo = _refuse_oversize(batch, todo, prep, upscaler)
    if not todo:
        return
    try:
        record.open_journal()
    except ManifestError as err:  # nothing written could be known as texup's: write nothing
        _say_error(f"{err}; nothing was upscaled")
        raise _Stop(1) from None
    if args.ray is None:
        assert upscaler is not None
        batch.execute(todo, upscaler, prep.options)
        return
    try:
        execute_on_ray(batch, todo, prep.model, prep.options, args.ray or None)
    except RuntimeError as err:  # no Ray, or a cluster without a usable node
        _say_error(err)
        raise _Stop(1) from None


def _refuse_oversize(batch: Batch, todo: list[Planned], prep: _Prepared, upscaler: Upscaler | None) -> list[Planned]:
    """``todo`` less the outputs their format cannot store at the size this run gives them (``--scale``, else the
    model's; :func:`texup.library.output_size_problem`, from each input's header), each refused in one line before
    anything is upscaled. Without ``--scale`` on Ray the model's scale is known only when named or seen here before."""
    scale = upscaler.scale if upscaler is not None else _known_scale(prep.model, prep.model_id, prep.record)
    if scale is None and prep.options.scale is None:
        return todo
    kept = []
    for planned in todo:
        problem = output_size_problem(planned.item.src, planned.dst, prep.options, scale or 1)
        if problem is None:
            kept.append(planned)
        else:
            batch.failed += 1
            batch.fail(planned.item.src, f"{problem}; choose a smaller --scale or another --format")
    return kept


def _bar(total: int, desc: str) -> Any:
    """The progress bar of a batch (:class:`texup.batch.Batch`): files, with the fraction of the one running."""
    from tqdm import tqdm

    fraction = {"bar_format": "{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}] {postfix}"}
    return tqdm(
        total=total, unit="file", desc=desc, disable=None, file=sys.stderr, **(fraction if desc == "upscaling" else {})
    )


def _summary(args: argparse.Namespace, prep: _Prepared, batch: Batch, seconds: float) -> int:
    """Print the run's one-line summary; the exit code (1 when anything failed)."""
    plan = prep.plan
    failed = batch.failed + len(plan.refused) + prep.problems
    redone = f"{batch.redone} changed and redone"
    if batch.redone_why:
        redone += " (" + ", ".join(f"{n} {why}" for why, n in sorted(batch.redone_why.items())) + ")"
    current = f"{len(plan.current) + batch.by_other} up to date"
    if batch.by_other:
        current += f" ({batch.by_other} made by another run meanwhile)"
    summary = f"texup: {batch.new} upscaled, {current}, {redone}, {failed} failed"
    if plan.skipped:
        summary += f", {len(plan.skipped)} skipped (exist)"
    print(f"{summary} into {args.out_dir} ({seconds:.1f} s)", file=sys.stderr)
    return 1 if failed else 0


class _Terminated(BaseException):
    """SIGTERM (a farm scheduler's cancel, ``kill``) or SIGHUP (the terminal closed) arrived: unwinds like Ctrl-C,
    so the outputs written so far are recorded, then the run exits 128 + the signal's number (143, 129), as the
    shell reports a process the signal ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: The signals that end a run the way Ctrl-C does (SIGINT stays Python's KeyboardInterrupt: exit 130).
_ENDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGHUP raise :class:`_Terminated`; a second one ends
    the process at once (the default), as a second Ctrl-C does in most programs. A signal the caller set to be
    ignored (``nohup``) or handles itself stays as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise _Terminated(signum)

    previous = {}
    for signum in _ENDING_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _warn(record: OutputRecord, said: set[str]) -> None:
    """Print each of the record's new warnings (a damaged manifest, links in .texup) as one line."""
    for line in record.warnings:
        if line not in said:
            said.add(line)
            print(f"texup: warning: {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """``texup upscale``: plan (:func:`_prepare`), report what is refused or skipped, execute, summarise.
    SIGTERM and SIGHUP end it as Ctrl-C does (what was written is recorded; exit 143 and 129)."""
    try:
        with _signals_unwind():
            return _run(args)
    except _Terminated as stop:
        name = signal.Signals(stop.signum).name
        print(f"texup: stopped by {name}; the outputs written so far are recorded", file=sys.stderr)
        return 128 + stop.signum


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    def fail(name: object, reason: str) -> None:
        tqdm.write(f"texup: error: {name}: {reason}", file=sys.stderr)

    try:
        prep = _prepare(args, fail)
    except _Stop as stop:
        return stop.code
    said: set[str] = set()
    _warn(prep.record, said)
    plan = prep.plan
    for src, reason in plan.refused:
        fail(src, reason)
    if args.dry_run:
        _print_plan(plan, args.out_dir)
        return 1 if plan.refused or prep.problems else 0
    for planned in plan.skipped:
        tqdm.write(f"{planned.item.src} -> {planned.dst} (exists, skipped)")

    start = time.monotonic()
    batch = Batch(
        args,
        prep.record,
        prep.settings,
        fail,
        done=tqdm.write,
        note=lambda line: tqdm.write(f"texup: {line}", file=sys.stderr),
        unexpected=traceback.print_exception if args.debug else lambda err: None,
        bar=_bar,
    )
    unsaved = False
    try:
        _execute(args, prep, batch)
    except _Stop as stop:
        return stop.code
    finally:
        try:
            prep.record.close()  # also when interrupted: what was written stays known as texup's
        except ManifestError as err:  # the outputs are written and in the journal; the next run saves them
            _warn(prep.record, said)
            _say_error(err)
            unsaved = True
    _warn(prep.record, said)
    code = _summary(args, prep, batch, time.monotonic() - start)
    return 1 if unsaved else code
