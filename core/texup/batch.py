"""Executing a batch plan (:class:`texup.library.Plan`'s ``todo``): each output claimed, upscaled into a
temporary file and committed into the output folder's manifest, here (:meth:`Batch.execute`: read ahead, upscale,
write behind) or on a Ray cluster (:func:`execute_on_ray`, :func:`texup.cluster.run_on_ray`).

``texup upscale`` (texup.cli.upscale) plans, then hands the plan's ``todo`` to a :class:`Batch` and prints what it
reports: library code never prints, so every line goes through the batch's callbacks (``fail``: a file that
failed and why; ``done``: one line per output written; ``note``: a warning or status line; ``unexpected``: an
error that is not texup's; ``bar``: a progress bar for N files).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texup.errors import FileError, ImageReadError, ImageWriteError, TexupError
from texup.imageio import Image, read_image
from texup.inference.pipeline import UpscaleOptions, refuse_overwrite, write_options
from texup.library import (
    NEW,
    REFUSED,
    UP_TO_DATE,
    Claim,
    Claimant,
    Planned,
    Settings,
    WorkItem,
    commit_output,
    entry_for,
    source_state,
    write_output,
)
from texup.options import EngineChoice
from texup.outputs import OutputRecord
from texup.weights.cache import remove_stale_temp_files
from texup.weights.ref import ModelRef

if TYPE_CHECKING:
    from texup.inference.pipeline import Upscaler

__all__ = ["Batch", "Claims", "commit_temp", "execute_on_ray", "output_folder", "read_source"]


class _NoBar:
    """The progress a batch moves when nobody draws it."""

    n: float = 0.0

    def refresh(self) -> None:
        pass

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "") -> None:
        pass


def _no_bar(total: int, desc: str) -> AbstractContextManager[Any]:
    return nullcontext(_NoBar())


def _ignore(*_args: Any) -> None:
    pass


def read_source(planned: Planned, max_pixels: int | None) -> tuple[Image, dict[str, Any]]:
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


def output_folder(dst: Path, swept: set[Path]) -> None:
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


class Batch:
    """The execution of a plan's ``todo`` into ``record``'s folder: counts, and what happened told through the
    callbacks (the module's docstring). ``args``: the run's values by name (``texup upscale``'s parsed arguments):
    ``max_pixels``, and the engine choice for Ray (``engine``, ``device``, ``precision``, ``layout``)."""

    def __init__(
        self,
        args: Any,
        record: OutputRecord,
        settings: Settings,
        fail: Callable[[object, str], None],
        *,
        done: Callable[[str], None] = _ignore,
        note: Callable[[str], None] = _ignore,
        unexpected: Callable[[BaseException], None] = _ignore,
        bar: Callable[[int, str], AbstractContextManager[Any]] = _no_bar,
    ) -> None:
        self.args, self.record, self.settings, self.fail = args, record, settings, fail
        self.done, self.note, self.unexpected, self.bar = done, note, unexpected, bar
        self.new = self.redone = self.failed = 0
        self.by_other = 0  # outputs another run sharing the folder made meanwhile (up to date when looked at)
        self.redone_why: dict[str, int] = {}
        #: Every output's claim, here and on Ray (a folder whose lock cannot be taken: a warning, then no claims).
        self.claimant = Claimant(lambda line: self.note(f"warning: {line}"))

    def claim(self, planned: Planned) -> Claim:
        """Claim ``planned``'s output for this run (:class:`~texup.library.Claimant`) and count what that settles:
        a refusal is a failure (reported), an output another run made meanwhile is counted in ``by_other``."""
        got = self.claimant.claim(self.record, planned, self.settings)
        if got.outcome == REFUSED:
            self.failed += 1
            self.fail(planned.item.src, str(got.refused))
        elif got.outcome == UP_TO_DATE:
            self.by_other += 1
        return got

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
            self.unexpected(err)

    def settle(
        self, planned: Planned, future: Future[None], info: dict[str, Any], expected: tuple[type[BaseException], ...]
    ) -> None:
        """Wait for one background write; record it and report ``src -> dst``, or its failure."""
        try:
            future.result()
        except expected as err:
            self.failure(err, planned.item, planned.dst)
            return
        self.written(planned, info)

    def written(self, planned: Planned, info: dict[str, Any]) -> None:
        """Record a written output and report its line."""
        self.record.add(planned.dst, **info)
        if planned.reason == NEW:
            self.new += 1
            self.done(f"{planned.item.src} -> {planned.dst}")
        else:
            self.redone += 1
            self.redone_why[planned.reason] = self.redone_why.get(planned.reason, 0) + 1
            self.done(f"{planned.item.src} -> {planned.dst} ({planned.reason})")

    def execute(self, todo: list[Planned], upscaler: Upscaler, options: UpscaleOptions) -> None:
        """Upscale ``todo`` in order, each output claimed first (:class:`Claims`: outputs another live run sharing
        the folder is making are left to it and looked at again at the end). The next input is decoded and the
        previous output encoded on their own threads while the network runs (both engines release the GIL): file
        I/O costs no wall time beyond the first read."""
        expected = (TexupError, OSError, ValueError, RuntimeError, MemoryError)
        engine = f"{upscaler.engine.name} {upscaler.device} {upscaler.precision}"
        max_pixels = getattr(self.args, "max_pixels", None)
        swept: set[Path] = set()
        claims = Claims(todo, self)
        with (
            self.bar(len(todo), "upscaling") as bar,
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
                return None if planned is None else (planned, reader.submit(read_source, planned, max_pixels))

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
                    output_folder(planned.dst, swept)
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


class Claims:
    """The plan's ``todo``, handed out one claimed output at a time (:meth:`Batch.claim`, the rule of
    :func:`texup.library.claim_output`).

    Runs sharing an output folder split the work: an output another live run has claimed is put aside, and
    looked at again once the rest is done: when that run wrote it, it is up to date (counted in
    ``batch.by_other``); when that run died or failed on it, this run claims it and makes it. An output that
    another run claimed or wrote before this one got it, or whose file appeared since the plan, is judged again
    (:func:`texup.library.judge`), so it is not made twice."""

    POLL_S = 0.2

    def __init__(self, todo: list[Planned], batch: Batch) -> None:
        self.pending: deque[Planned] = deque(todo)
        self.deferred: deque[Planned] = deque()
        self.batch = batch
        self.resolved = 0  # outputs settled without making them here (made by another run, or refused now)

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
        got = self.batch.claim(planned)
        if got.held:
            self.deferred.append(planned)
        elif got.planned is None:
            self.resolved += 1
        return got.planned


def commit_temp(record: OutputRecord, dst: Path, tmp: str, info: dict[str, Any]) -> None:
    """Put a Ray node's finished output (``tmp``, beside ``dst``) in place as texup's own, as the local path does:
    the journal line (with the file's size and mtime, which renames keep) before the rename over ``dst``
    (:meth:`OutputRecord.writing`). A driver killed before the journal line leaves only temporary files (swept by a
    later run); after it, an output the next run recognises (:func:`texup.library.commit_output`)."""
    commit_output(record, dst, info, lambda slot: os.replace(tmp, slot))


def execute_on_ray(
    batch: Batch, todo: list[Planned], model: ModelRef, options: UpscaleOptions, address: str | None
) -> None:
    """The plan's ``todo`` on a Ray cluster (:func:`texup.cluster.run_on_ray`): sources hashed here (the storage is
    shared), files upscaled on the nodes into temporary files, each journalled, renamed, recorded and printed here
    as it arrives (:func:`commit_temp`): a kill at any moment loses nothing, as on one machine."""
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
            output_folder(planned.dst, swept)
        except ImageWriteError as err:
            batch.failure(err, planned.item)
            continue
        kept.append((planned, entry_for(batch.settings, source, engine=engine)))
    tasks = [(os.path.abspath(p.item.src), os.path.abspath(p.dst)) for p, _ in kept]
    fields = asdict(options)  # UpscaleOptions(**fields) on the nodes
    with batch.bar(len(tasks), "upscaling on Ray") as bar:

        def claim(index: int) -> bool | None:
            """Claim a file's output before it goes to the cluster, as a run on one machine does (:class:`Claims`):
            None while another live run holds it (asked again later), False when settled here (made by another
            run meanwhile, or refused now: :meth:`Batch.claim`)."""
            planned, info = kept[index]
            got = batch.claim(planned)
            if got.held:
                return None
            if got.planned is None:
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
            commit_temp(batch.record, planned.dst, outcome.tmp, info)

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
            status=batch.note,
            commit=commit,
            claim=claim,
        )
