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
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texup import options as schema
from texup.errors import FileError, ImageReadError, ImageWriteError, TexupError
from texup.imageio import Image, chosen_dds_format, format_for_path, read_image
from texup.inference.pipeline import UpscaleOptions, options_from, refuse_overwrite, write_options
from texup.library import (
    NEW,
    Plan,
    Planned,
    Settings,
    WorkItem,
    claim_output,
    entry_for,
    expand_inputs,
    make_plan,
    options_of,
    output_size_problem,
    parse_shard,
    path_reason,
    scale_label,
    source_state,
    take_shard,
    write_output,
)
from texup.options import SCALE_MAX, EngineChoice
from texup.outputs import ManifestError, OutputRecord
from texup.weights.cache import remove_stale_temp_files
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


def _read_source(planned: Planned, max_pixels: int | None) -> tuple[Image, dict[str, Any]]:
    """On the read-ahead thread: the source's state (hashed before decoding: a change during the read makes
    the next run see a new size or mtime and compare again) and its pixels; an output that is the input itself
    is refused.

    A path that is no longer a regular file (swapped for a FIFO since it was listed) is refused before it is
    opened (hashed or decoded), so the batch cannot hang on it.
    """
    src = planned.item.src
    if not src.is_file():
        raise ImageReadError(src, "not a regular file" if src.exists() else "no such file")
    try:
        source = planned.source or source_state(src)
    except OSError as err:
        raise ImageReadError(src, f"cannot read: {err.strerror or err}") from err
    refuse_overwrite(src, planned.dst)
    return read_image(src, max_pixels=max_pixels), source


def _output_folder(dst: Path, swept: set[Path]) -> None:
    """Create ``dst``'s folder; the first time a run sees a folder, remove the temporary files an earlier run
    killed mid-write left in it (an hour old or more)."""
    folder = dst.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageWriteError(folder, f"cannot create the output folder: {err.strerror or err}") from err
    if folder not in swept:
        swept.add(folder)
        remove_stale_temp_files(folder)


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


class _Batch:
    """The execution of a plan's ``todo``: counts and the per-file lines."""

    def __init__(
        self, args: argparse.Namespace, record: OutputRecord, settings: Settings, fail: Callable[[object, str], None]
    ) -> None:
        self.args, self.record, self.settings, self.fail = args, record, settings, fail
        self.new = self.redone = self.failed = 0
        self.by_other = 0  # outputs another run sharing the folder made meanwhile (up to date when looked at)
        self.redone_why: dict[str, int] = {}

    def failure(self, err: BaseException, item: WorkItem, dst: Path | None = None) -> None:
        self.failed += 1
        if dst is not None:  # another run may try it
            key = self.record.key(dst)
            if key is not None:
                self.record.release(key)
        if isinstance(err, FileError):
            self.fail(err.path, err.reason)
        elif isinstance(err, TexupError):
            self.fail(item.src, str(err))
        else:
            self.fail(item.src, f"{type(err).__name__}: {err}")
            if self.args.debug:
                traceback.print_exception(err)

    def settle(
        self, planned: Planned, future: Future[None], info: dict[str, Any], expected: tuple[type[BaseException], ...]
    ) -> None:
        """Wait for one background write; record it and print ``src -> dst``, or its failure."""
        try:
            future.result()
        except expected as err:
            self.failure(err, planned.item, planned.dst)
            return
        self.written(planned, info)

    def written(self, planned: Planned, info: dict[str, Any]) -> None:
        """Record a written output and print its line."""
        self.record.add(planned.dst, **info)
        if planned.reason == NEW:
            self.new += 1
            tqdm_write(f"{planned.item.src} -> {planned.dst}")
        else:
            self.redone += 1
            self.redone_why[planned.reason] = self.redone_why.get(planned.reason, 0) + 1
            tqdm_write(f"{planned.item.src} -> {planned.dst} ({planned.reason})")

    def execute(self, todo: list[Planned], upscaler: Upscaler, options: UpscaleOptions) -> None:
        """Upscale ``todo`` in order, each output claimed first (:class:`_Claims`: outputs another live run sharing
        the folder is making are left to it and looked at again at the end). The next input is decoded and the
        previous output encoded on their own threads while the network runs (both engines release the GIL): file
        I/O costs no wall time beyond the first read."""
        from tqdm import tqdm

        expected = (TexupError, OSError, ValueError, RuntimeError, MemoryError)
        engine = f"{upscaler.engine.name} {upscaler.device} {upscaler.precision}"
        max_pixels = self.args.max_pixels
        swept: set[Path] = set()
        claims = _Claims(todo, self)
        with (
            tqdm(
                total=len(todo),
                unit="file",
                desc="upscaling",
                disable=None,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}] {postfix}",
            ) as bar,
            ThreadPoolExecutor(1, thread_name_prefix="texup-read") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="texup-write") as writer,
        ):
            writing: tuple[Planned, Future[None], dict[str, Any]] | None = None

            def settle_writing() -> None:
                nonlocal writing
                if writing is not None:
                    self.settle(writing[0], writing[1], writing[2], expected)
                    writing = None

            def take(block: bool) -> tuple[Planned, Future[tuple[Image, dict[str, Any]]]] | None:
                if block:
                    settle_writing()  # never wait for other runs while holding an unfinished claim
                planned = claims.take(block=block)
                bar.n = claims.resolved + self.new + self.redone + self.failed
                bar.refresh()
                return None if planned is None else (planned, reader.submit(_read_source, planned, max_pixels))

            current = take(block=True)
            while current is not None:
                planned, reading = current
                upcoming = take(block=False)  # read ahead
                bar.set_postfix_str(planned.item.src.name)
                base = claims.resolved + self.new + self.redone + self.failed

                def on_tiles(done_tiles: float, total_tiles: int, base: int = base) -> None:
                    bar.n = base + (done_tiles / total_tiles if total_tiles else 0.0)
                    bar.refresh()

                started: tuple[Planned, Future[None], dict[str, Any]] | None = None
                try:
                    image, source = reading.result()
                    del reading  # the decoded input goes with `image`
                    result = upscaler.upscale_array(
                        image.pixels, options, colorspace=image.info.colorspace, progress=on_tiles
                    )
                    _output_folder(planned.dst, swept)
                    info = entry_for(self.settings, source, engine=engine)
                    write = writer.submit(
                        write_output, self.record, planned.dst, result, image.info, info, **write_options(options)
                    )
                    started = (planned, write, info)
                    del image, result
                except expected as err:
                    self.failure(err, planned.item, planned.dst)
                settle_writing()
                writing = started
                current = upcoming if upcoming is not None else take(block=True)
            settle_writing()
            bar.n = len(todo)
            bar.refresh()


class _Claims:
    """The plan's ``todo``, handed out one claimed output at a time (:meth:`OutputRecord.claim`).

    Runs sharing an output folder split the work: an output another live run has claimed is put aside, and
    looked at again once the rest is done: when that run wrote it, it is up to date (counted in
    ``batch.by_other``); when that run died or failed on it, this run claims it and makes it. An output that
    another run claimed or wrote before this one got it, or whose file appeared since the plan, is judged again
    (:func:`texup.library.judge`), so it is not made twice."""

    POLL_S = 0.2

    def __init__(self, todo: list[Planned], batch: _Batch) -> None:
        self.pending: deque[Planned] = deque(todo)
        self.deferred: deque[Planned] = deque()
        self.batch, self.record = batch, batch.record
        self.resolved = 0  # outputs settled without making them here (made by another run, or refused now)
        self.unclaimed = False  # the lock could not be taken once: no more claims

    def take(self, *, block: bool) -> Planned | None:
        """The next output this run may make, claimed; None when none is left (``block``: after waiting for the
        outputs other runs hold) or, without ``block``, when only held ones are left."""
        while True:
            while self.pending:
                planned = self._claim(self.pending.popleft())
                if planned is not None:
                    return planned
            if not self.deferred or not block:
                return None
            for _ in range(len(self.deferred)):
                planned = self._claim(self.deferred.popleft())
                if planned is not None:
                    return planned
            if self.deferred:
                time.sleep(self.POLL_S)

    def _claim(self, planned: Planned) -> Planned | None:
        if self.unclaimed:
            return planned
        try:
            got = claim_output(self.record, planned, self.batch.settings)
        except ManifestError as err:  # the lock cannot be taken (held for 10 minutes): work on without claims
            print(f"texup: warning: {err}; outputs are made without claims from now on", file=sys.stderr)
            self.unclaimed = True
            return planned
        if got.held:
            self.deferred.append(planned)
        elif got.planned is None:
            self.resolved += 1
            if got.refused is not None:
                self.batch.failed += 1
                self.batch.fail(planned.item.src, got.refused)
            else:
                self.batch.by_other += 1
        return got.planned


def _commit_ray_output(record: OutputRecord, dst: Path, tmp: str, info: dict[str, Any]) -> None:
    """Put a Ray node's finished output (``tmp``, beside ``dst``) in place as texup's own, as the local path does:
    the journal line (with the file's size and mtime, which renames keep) before the rename over ``dst``
    (:meth:`OutputRecord.writing`). A driver killed before the journal line leaves only temporary files (swept by a
    later run); after it, an output the next run recognises."""
    with record.writing(dst, info) as slot:
        os.replace(tmp, slot)


def _execute_on_ray(
    batch: _Batch, todo: list[Planned], model: ModelRef, options: UpscaleOptions, address: str | None
) -> None:
    """The plan's ``todo`` on a Ray cluster (:func:`texup.cluster.run_on_ray`): sources hashed here (the storage is
    shared), files upscaled on the nodes into temporary files, each journalled, renamed, recorded and printed here
    as it arrives (:func:`_commit_ray_output`): a kill at any moment loses nothing, as on one machine."""
    from tqdm import tqdm

    from texup.cluster import RayOutcome, run_on_ray

    args = batch.args
    kept: list[tuple[Planned, dict[str, Any]]] = []
    swept: set[Path] = set()
    engine = f"ray {args.engine} {args.device}"
    for planned in todo:
        try:
            source = planned.source or source_state(planned.item.src)
        except OSError as err:
            batch.failure(ImageReadError(planned.item.src, f"cannot read: {err.strerror or err}"), planned.item)
            continue
        try:
            _output_folder(planned.dst, swept)
        except ImageWriteError as err:
            batch.failure(err, planned.item)
            continue
        kept.append((planned, entry_for(batch.settings, source, engine=engine)))
    tasks = [(os.path.abspath(p.item.src), os.path.abspath(p.dst)) for p, _ in kept]
    fields = asdict(options)  # UpscaleOptions(**fields) on the nodes
    unclaimed = False  # the lock could not be taken once: no more claims
    with tqdm(total=len(tasks), unit="file", desc="upscaling on Ray", disable=None, file=sys.stderr) as bar:

        def claim(index: int) -> bool | None:
            """Claim a file's output before it goes to the cluster, as a run on one machine does (:class:`_Claims`):
            None while another live run holds it (asked again later), False when settled here (made by another
            run meanwhile, or refused now)."""
            nonlocal unclaimed
            planned, info = kept[index]
            if unclaimed:
                return True
            try:
                got = claim_output(batch.record, planned, batch.settings)
            except ManifestError as err:
                tqdm.write(f"texup: warning: {err}; outputs are made without claims from now on", file=sys.stderr)
                unclaimed = True
                return True
            if got.held:
                return None
            if got.planned is None:
                if got.refused is not None:
                    batch.failed += 1
                    batch.fail(planned.item.src, got.refused)
                else:
                    batch.by_other += 1
                bar.update(1)
                return False
            if got.planned is not planned:  # judged again: the entry records the source as hashed now
                source = got.planned.source
                if source is not None:
                    info = entry_for(batch.settings, source, engine=engine)
                kept[index] = (got.planned, info)
            return True

        def commit(outcome: RayOutcome) -> None:
            planned, info = kept[outcome.index]
            assert outcome.tmp is not None
            _commit_ray_output(batch.record, planned.dst, outcome.tmp, info)

        def arrived(outcome: RayOutcome) -> None:
            planned, info = kept[outcome.index]
            if outcome.ok:
                batch.written(planned, info)
            else:
                batch.failed += 1
                key = batch.record.key(planned.dst)
                if key is not None:  # another run may try it
                    batch.record.release(key)
                reason = outcome.error or "failed"
                for name in (outcome.src, outcome.dst):  # texup's errors name the file: print it once
                    if reason.startswith(f"{name}: "):
                        batch.fail(planned.item.src if name == outcome.src else planned.dst, reason[len(name) + 2 :])
                        break
                else:
                    batch.fail(planned.item.src, reason)
            bar.update(1)

        run_on_ray(
            tasks,
            model=model,
            options=fields,
            choice=EngineChoice.from_values(vars(args)),
            address=address,
            max_pixels=args.max_pixels,
            on_outcome=arrived,
            status=lambda line: tqdm.write(f"texup: {line}", file=sys.stderr),
            commit=commit,
            claim=claim,
        )


def tqdm_write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)


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


def _execute(args: argparse.Namespace, prep: _Prepared, batch: _Batch) -> None:
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
        _execute_on_ray(batch, todo, prep.model, prep.options, args.ray or None)
    except RuntimeError as err:  # no Ray, or a cluster without a usable node
        _say_error(err)
        raise _Stop(1) from None


def _refuse_oversize(batch: _Batch, todo: list[Planned], prep: _Prepared, upscaler: Upscaler | None) -> list[Planned]:
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


def _summary(args: argparse.Namespace, prep: _Prepared, batch: _Batch, seconds: float) -> int:
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
    batch = _Batch(args, prep.record, prep.settings, fail)
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
