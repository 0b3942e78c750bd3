"""Pure helpers between the scene scan and the worker: choose textures, build a job, follow its events,
and write the headless script's JSON report. Stdlib only; the bpy side fills :class:`TextureInfo`.

Typical use (operator or headless script)::

    chosen = choose_textures(scanned, max_size=1024, roles={"color", "data"})
    plan = build_job(chosen, JobOptions(model="realesrgan-x4plus", scale=4), out_dir, name_scale=4)
    job_id = client.submit(plan.job)
    tracker = JobTracker(plan)
    ... for event in client.poll(): tracker.apply(event) ...   # from a timer
    for outcome in tracker.outcomes.values(): relink when outcome.status == "ok"
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .manifest import OutputsView
from .naming import has_udim_token, safe_stem, tile_of, udim_tile_path, unique_output_path
from .worker_protocol import Crashed, Done, Error, Event, Job, JobItem, JobOptions, Progress, Result

ROLES: tuple[str, ...] = ("color", "normal", "data")
SOURCES: tuple[str, ...] = ("file", "packed", "generated", "udim", "missing")
STATUSES: tuple[str, ...] = ("original", "upscaled", "missing")
REPORT_VERSION = 1
MISSING_REASON = "image file not found"
UP_TO_DATE = "up to date"  # a result's reason when its earlier output was current (nothing was done)


@dataclass(frozen=True)
class TextureInfo:
    """One image datablock used by image texture nodes, as the scene scan saw it.

    name: the datablock name (unique in the .blend). filepath: the absolute file path (``//`` already
    resolved), with a ``<UDIM>``/``<UVTILE>`` token for tiled images; ``""`` when there is no file.
    size: (width, height) in pixels (UDIM: of the first tile). role: "color", "normal" or "data".
    colorspace: Blender's colour space name ("sRGB", "Non-Color", ...). source: "file", "packed",
    "generated", "udim" or "missing". users: how many image texture nodes use it. udim_tiles: tile
    numbers (1001...) of a UDIM image. has_alpha: its alpha output is linked in a material.
    status: "original", "upscaled" (a texup result) or "missing".
    """

    name: str
    filepath: str
    size: tuple[int, int]
    role: str
    colorspace: str
    source: str
    users: int = 0
    udim_tiles: tuple[int, ...] = ()
    has_alpha: bool = False
    status: str = "original"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.source not in SOURCES:
            raise ValueError(f"{self.name}: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.status not in STATUSES:
            raise ValueError(f"{self.name}: status must be one of {', '.join(STATUSES)}, got {self.status!r}")


# --- choosing ----------------------------------------------------------------------------------


def choose_textures(
    textures: Iterable[TextureInfo],
    *,
    max_size: int | None = None,
    roles: Collection[str] | None = None,
    names: Collection[str] | None = None,
    include_upscaled: bool = False,
) -> list[TextureInfo]:
    """The textures that pass every given filter, in the given order (see :func:`sort_textures`)."""
    return sort_textures(textures, max_size=max_size, roles=roles, names=names, include_upscaled=include_upscaled)[0]


def sort_textures(
    textures: Iterable[TextureInfo],
    *,
    max_size: int | None = None,
    roles: Collection[str] | None = None,
    names: Collection[str] | None = None,
    include_upscaled: bool = False,
) -> tuple[list[TextureInfo], list[tuple[TextureInfo, str]]]:
    """``(chosen, left_out)``: the textures that pass every filter, and each other one with the reason.

    max_size: the larger side is at most this many pixels (the panel's "At most N px" and the headless
    ``--max-size`` agree: a 512 px image passes 512). roles: keep only these roles. names: keep only these
    datablock names (see :func:`unknown_names`). Results of an earlier upscale (status "upscaled") are left
    out unless ``include_upscaled``. Missing textures are kept: :func:`build_job` reports them as failed.
    Nothing is dropped silently: the caller lists ``left_out`` in its report.
    """
    if roles is not None:
        bad = sorted(set(roles) - set(ROLES))
        if bad:
            raise ValueError(f"unknown role(s) {', '.join(bad)}: expected {', '.join(ROLES)}")
    chosen: list[TextureInfo] = []
    left_out: list[tuple[TextureInfo, str]] = []
    for tex in textures:
        reason = None
        if names is not None and tex.name not in names:
            reason = "not among the requested images"
        elif filter_reason(tex.size, tex.role, max_size=max_size, roles=roles) is not None:
            reason = filter_reason(tex.size, tex.role, max_size=max_size, roles=roles)
        elif tex.status == "upscaled" and not include_upscaled:
            reason = "already the result of an upscale"
        if reason is None:
            chosen.append(tex)
        else:
            left_out.append((tex, reason))
    return chosen, left_out


def filter_reason(
    size: Sequence[int],
    role: str,
    *,
    max_size: int | None = None,
    roles: Collection[str] | None = None,
    short: bool = False,
) -> str | None:
    """Why the size limit or the role filter leaves a texture out, else ``None`` (it passes).

    The one rule of the panel's "At most N px" and role filter and of the headless ``--max-size`` /
    ``--roles``: the larger side must be at most ``max_size`` (a 512 px image passes 512). ``short``:
    a few words for a narrow panel ("4096 > 2048 px", "role data").
    """
    largest = max(size) if size else 0
    if max_size is not None and largest > max_size:
        return f"{largest} > {max_size} px" if short else f"larger than the size limit ({largest} px > {max_size} px)"
    if roles is not None and role not in roles:
        return f"role {role}" if short else f"role {role} is not among {', '.join(sorted(roles))}"
    return None


def left_out_rows(left_out: Iterable[tuple[TextureInfo, str]]) -> list[dict[str, Any]]:
    """Report rows (status "skipped") for what the filters left out."""
    return [
        {"name": tex.name, "status": "skipped", "reason": reason, "size": list(tex.size) if tex.size else None}
        for tex, reason in left_out
    ]


def unknown_names(textures: Iterable[TextureInfo], names: Iterable[str]) -> list[str]:
    """The requested ``names`` that no scanned texture has (for a clear error in the headless script)."""
    known = {tex.name for tex in textures}
    return [name for name in names if name not in known]


# --- building a job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedOutput:
    """What one texture becomes: ``dst`` (a UDIM pattern for tiled images) written from ``item_keys``."""

    texture: str
    dst: str
    role: str
    tiles: tuple[int, ...]
    item_keys: tuple[str, ...]
    srcs: tuple[str, ...]
    size: tuple[int, int] = (0, 0)  # of the texture (UDIM: of its first tile), for progress weights


@dataclass(frozen=True)
class Skipped:
    """A chosen texture that cannot be upscaled, and why (never silently dropped). ``missing``: its file was
    already missing when the run began (reported as skipped, a known gap); anything else is reported as failed."""

    texture: str
    reason: str
    missing: bool = False


@dataclass(frozen=True)
class JobPlan:
    job: Job
    outputs: tuple[PlannedOutput, ...]
    skipped: tuple[Skipped, ...]

    def owner(self, item_key: str) -> PlannedOutput | None:
        """The planned output an item key belongs to."""
        for out in self.outputs:
            if item_key in out.item_keys:
                return out
        return None


def _source_files(tex: TextureInfo, extracted: Mapping[str, str]) -> tuple[tuple[str, ...] | None, str]:
    """(source files, reason when there are none) for one texture."""
    if tex.name in extracted:
        path = extracted[tex.name]
        if has_udim_token(path):
            return tuple(udim_tile_path(path, t) for t in tex.udim_tiles), ""
        return (path,), ""
    if tex.source == "missing" or tex.status == "missing":
        shown = tex.filepath or "(no file path)"
        return None, f"{MISSING_REASON}: {shown}"
    if tex.source == "packed":
        return None, "packed image: the add-on must unpack it to a temporary file first"
    if tex.source == "generated":
        return None, "generated image: the add-on must save its pixels to a temporary file first"
    if not tex.filepath:
        return None, "the image has no file path"
    if tex.source == "udim" or has_udim_token(tex.filepath):
        if not tex.udim_tiles:
            return None, f"UDIM image without tiles: {tex.filepath}"
        files = tuple(udim_tile_path(tex.filepath, t) for t in tex.udim_tiles)
    else:
        files = (tex.filepath,)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        return None, f"{MISSING_REASON}: " + ", ".join(missing)
    return files, ""


def build_job(
    textures: Sequence[TextureInfo],
    options: JobOptions,
    out_dir: str,
    *,
    name_scale: float | None = None,
    extracted: Mapping[str, str] | None = None,
    taken: Collection[str] = (),
    origins: Mapping[str, str] | None = None,
    earlier: OutputsView | None = None,
) -> JobPlan:
    """Turn chosen textures into a worker job: one item per file (one per tile for UDIM images).

    out_dir: an absolute folder for the results (created by the worker). name_scale: the scale written
    into output names (default: ``options.scale``, else 4, the usual model scale). extracted: texture
    name -> a file the add-on wrote for a packed or generated image (a UDIM pattern for tiled ones);
    its extension gives the output format. taken: paths already used by other outputs (never reused).
    origins: texture name -> a stable name for an extracted image's source (its file is a new temporary copy
    each run), sent as the items' ``origin``. earlier: the output folder's manifest (:mod:`.manifest`).
    Output names follow :func:`naming.unique_output_path`: ``<stem>_x<scale>.<ext>`` in ``out_dir``, the
    stem from the original file name, else from the datablock name; a name holding this texture's own
    earlier output (by ``earlier``) is used again, so a rerun writes no second copy.
    """
    extracted = dict(extracted or {})
    scale = name_scale if name_scale is not None else (options.scale if options.scale is not None else 4)
    used = set(taken)
    items: list[JobItem] = []
    outputs: list[PlannedOutput] = []
    skipped: list[Skipped] = []
    for index, tex in enumerate(textures):
        files, reason = _source_files(tex, extracted)
        if files is None:
            skipped.append(Skipped(tex.name, reason, missing=reason.startswith(MISSING_REASON)))
            continue
        ext_from = extracted.get(tex.name) or tex.filepath
        ext = os.path.splitext(ext_from)[1]
        if not ext:
            skipped.append(Skipped(tex.name, f"cannot tell the file format of {ext_from!r} (no extension)"))
            continue
        stem = os.path.splitext(os.path.basename(tex.filepath))[0] if tex.filepath else ""
        stem = safe_stem(stem or tex.name)
        tiled = tex.source == "udim" or has_udim_token(ext_from)
        if tiled and not has_udim_token(stem):
            stem = f"{stem}.<UDIM>"
        base_origin = (origins or {}).get(tex.name)
        if tiled:
            tile_origins = {
                tile: f"{base_origin}#{tile}" if base_origin else os.path.abspath(src)
                for tile, src in zip(tex.udim_tiles, files)
            }
        else:
            tile_origins = {}
        origin = base_origin or os.path.abspath(files[0])

        def ours(path: str, origin: str = origin, tile_origins: Mapping[int, str] = tile_origins) -> bool:
            if earlier is None:
                return False
            tile = tile_of(path) if tile_origins else None
            return earlier.owned_by(path, tile_origins.get(tile, "") if tile is not None else origin)

        dst = unique_output_path(
            out_dir, stem, scale, ext, tiles=tex.udim_tiles if tiled else (), taken=used, ours=ours
        )
        used.add(dst)
        if tiled:
            keys = tuple(f"{index}:{tex.name}:{tile}" for tile in tex.udim_tiles)
            dsts = tuple(udim_tile_path(dst, tile) for tile in tex.udim_tiles)
            item_origins: tuple[str | None, ...] = tuple(
                tile_origins[tile] if base_origin else None for tile in tex.udim_tiles
            )
        else:
            keys, dsts, item_origins = (f"{index}:{tex.name}",), (dst,), (base_origin,)
        for key, src, item_dst, item_origin in zip(keys, files, dsts, item_origins):
            items.append(JobItem(key=key, src=src, dst=item_dst, role=tex.role, origin=item_origin))
        outputs.append(
            PlannedOutput(
                texture=tex.name,
                dst=dst,
                role=tex.role,
                tiles=tex.udim_tiles if tiled else (),
                item_keys=keys,
                srcs=files,
                size=(int(tex.size[0]), int(tex.size[1])) if tex.size else (0, 0),
            )
        )
    job = Job(options=options, items=tuple(items))
    job.validate()
    return JobPlan(job=job, outputs=tuple(outputs), skipped=tuple(skipped))


def _item_dsts(out: PlannedOutput) -> tuple[str, ...]:
    """The file of each of ``out``'s items (its tiles' files for a UDIM pattern)."""
    return tuple(udim_tile_path(out.dst, tile) for tile in out.tiles) if out.tiles else (out.dst,)


# --- following a job ---------------------------------------------------------------------------


@dataclass
class TextureOutcome:
    """Where one texture stands: status "pending", "ok", "failed" or "cancelled".

    A UDIM texture is "ok" only when every tile was written (a half-upscaled tiled image is never relinked).
    ``up_to_date``: it is "ok" because its earlier output was current, with nothing upscaled.
    width/height: the result's size (UDIM: of the first tile); seconds: summed over its files.
    """

    texture: str
    dst: str
    status: str = "pending"
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)  # item key -> file written (or found up to date)
    up_to_date: bool = False  # "ok" without any work: every file's earlier output was current
    reasons: dict[str, str | None] = field(default_factory=dict)  # item key -> the result's reason ("new", ...)


ETA_MIN_SECONDS = 1.0  # no estimate before the job has run this long ...
ETA_MIN_FRACTION = 0.01  # ... and moved this far since its first progress event


def estimate_eta(elapsed: float, fraction: float, *, start_fraction: float = 0.0) -> float | None:
    """Seconds left when ``fraction`` (0..1) of the job took ``elapsed`` seconds since it stood at
    ``start_fraction``; ``None`` until there is a meaningful estimate (at least :data:`ETA_MIN_SECONDS`
    and :data:`ETA_MIN_FRACTION` of progress), 0.0 when done."""
    if fraction >= 1.0:
        return 0.0
    moved = fraction - start_fraction
    if elapsed < ETA_MIN_SECONDS or moved < ETA_MIN_FRACTION:
        return None
    return max(0.0, elapsed * (1.0 - fraction) / moved)


def format_duration(seconds: float | None) -> str:
    """``"42s"``, ``"1m05s"``, ``"2h03m"``; ``"--"`` for ``None`` (no estimate yet)."""
    if seconds is None:
        return "--"
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total // 60 % 60:02d}m"


class JobTracker:
    """Folds a job's events into per-texture outcomes, an overall fraction and an ETA, for the panel,
    the status bar, the headless script's output and the report.

    :attr:`fraction` (0..1) weighs every file by its pixels and moves within a file: by whole tiles
    (``done``/``total`` of a progress event) and within the next tile (``tile_fraction``, when the
    worker sends it). It never goes backwards. :attr:`eta_s` is measured from the first progress event
    (so the worker's start and model load do not count); ``clock`` is the time source (tests pass a
    fake one).
    """

    def __init__(
        self, plan: JobPlan, job_id: str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.plan = plan
        self.job_id = job_id
        self.outcomes: dict[str, TextureOutcome] = {
            out.texture: TextureOutcome(texture=out.texture, dst=out.dst) for out in plan.outputs
        }
        self.job_errors: list[str] = []
        self.finished = not plan.job.items
        self.cancelled = False
        self.fraction = 1.0 if self.finished else 0.0
        self.current: str | None = None  # the texture being upscaled
        self.current_item: str | None = None  # its file (item key) being upscaled
        self.item_fraction = 0.0  # how far that file is
        self._clock = clock
        self._started: tuple[float, float] | None = None  # (time, fraction) at the first progress event
        self._ended: set = set()  # item keys written or failed
        keys = [item.key for item in plan.job.items]
        self._position = {key: i for i, key in enumerate(keys)}
        weight = {}
        for out in plan.outputs:
            for key in out.item_keys:
                weight[key] = float(max(1, out.size[0] * out.size[1]))
        self._weights = [weight.get(key, 1.0) for key in keys]
        self._before = [sum(self._weights[:i]) for i in range(len(keys))]
        self._total_weight = sum(self._weights) or 1.0

    def _mine(self, event: Event) -> bool:
        return self.job_id is None or event.id is None or event.id == self.job_id

    def _item_done_fraction(self) -> float:
        """Fraction of the job in files that ended (written or failed), by weight."""
        done = sum(self._weights[self._position[key]] for key in self._ended if key in self._position)
        return min(1.0, done / self._total_weight)

    def _on_progress(self, event: Progress) -> None:
        within = 0.0
        if event.total > 0:
            tile_fraction = event.tile_fraction or 0.0
            within = (event.done + min(1.0, max(0.0, float(tile_fraction)))) / event.total
        within = min(1.0, max(0.0, within))
        position = self._position.get(event.item)
        if position is None:  # not a key of the plan: the worker's own count
            fraction = event.fraction
        else:
            fraction = (self._before[position] + self._weights[position] * within) / self._total_weight
        if self.current_item != event.item:
            self.current_item, self.item_fraction = event.item, within
        else:
            self.item_fraction = max(self.item_fraction, within)
        self.fraction = max(self.fraction, min(1.0, fraction))
        owner = self.plan.owner(event.item)
        self.current = owner.texture if owner else None
        if self._started is None:
            self._started = (self._clock(), self.fraction)

    def apply(self, event: Event) -> None:
        """Take one event from :meth:`WorkerClient.poll`; events of other jobs are ignored."""
        if isinstance(event, Crashed):
            self._finish(failed_reason=event.message)
            return
        if not self._mine(event) or self.finished:
            return
        if isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, Result):
            owner = self.plan.owner(event.item)
            if owner is None:
                return
            outcome = self.outcomes[owner.texture]
            outcome.written[event.item] = event.dst
            outcome.seconds += event.seconds
            outcome.reasons[event.item] = event.reason
            if len(outcome.written) == 1:
                outcome.width, outcome.height = event.width, event.height
            if len(outcome.written) == len(owner.item_keys) and not outcome.errors:
                outcome.status = "ok"
                outcome.up_to_date = all(outcome.reasons.get(k) == UP_TO_DATE for k in owner.item_keys)
            if event.item == self.current_item:
                self.item_fraction = 1.0
            self._ended.add(event.item)
            self.fraction = max(self.fraction, self._item_done_fraction())
        elif isinstance(event, Error):
            owner = self.plan.owner(event.item) if event.item else None
            text = f"{event.kind}: {event.message}" if event.kind else event.message
            if owner is None:
                if event.id is not None:  # about the whole job (model load, bad options)
                    self.job_errors.append(text)
                return
            outcome = self.outcomes[owner.texture]
            outcome.errors.append(text)
            outcome.status = "failed"
            self._ended.add(event.item)
            self.fraction = max(self.fraction, self._item_done_fraction())
        elif isinstance(event, Done):
            self.cancelled = event.cancelled
            self._finish(failed_reason=None)

    def mark_up_to_date(self, texture: str) -> None:
        """Record a texture the add-on found up to date itself (no item of the job): "ok" with nothing done."""
        owner = next(out for out in self.plan.outputs if out.texture == texture)
        outcome = self.outcomes[texture]
        outcome.written = dict(zip(owner.item_keys, _item_dsts(owner)))
        outcome.reasons = dict.fromkeys(owner.item_keys, UP_TO_DATE)
        outcome.status, outcome.up_to_date = "ok", True

    def abandon(self) -> None:
        """Stop following the job as cancelled without the worker's ``done`` (it did not confirm a cancel
        in time): files written so far stay ``ok``, every other texture is ``cancelled``."""
        if not self.finished:
            self.cancelled = True
            self._finish(failed_reason=None)

    def fail(self, reason: str) -> None:
        """Stop following the job as failed (a timeout ran out): every texture without a result fails
        with ``reason``."""
        self._finish(failed_reason=reason)

    def _finish(self, failed_reason: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.fraction = 1.0
        for outcome in self.outcomes.values():
            if outcome.status != "pending":
                continue
            if failed_reason is not None:
                outcome.status = "failed"
                outcome.errors.append(failed_reason)
            elif self.cancelled:
                outcome.status = "cancelled"
            else:
                outcome.status = "failed"
                outcome.errors.append("; ".join(self.job_errors) or "the worker reported no result for it")

    @property
    def elapsed(self) -> float:
        """Seconds since the first progress event (0 before it)."""
        return 0.0 if self._started is None else max(0.0, self._clock() - self._started[0])

    @property
    def eta_s(self) -> float | None:
        """Seconds left (estimated from the progress so far), ``None`` until that means something."""
        if self.finished:
            return 0.0
        if self._started is None:
            return None
        return estimate_eta(self.elapsed, self.fraction, start_fraction=self._started[1])

    @property
    def written_files(self) -> int:
        return sum(len(o.written) for o in self.outcomes.values())

    def current_file(self) -> tuple[int, int, str]:
        """``(position, count, file name)`` of the file being upscaled (position 1-based; 0 before the
        first progress event)."""
        count = len(self.plan.job.items)
        if self.current_item is None or self.current_item not in self._position:
            return 0, count, ""
        position = self._position[self.current_item]
        return position + 1, count, os.path.basename(self.plan.job.items[position].src)

    def status_text(self) -> str:
        """A short line for the panel and the status bar: ``"Upscaling wall (2/5, 40%) ETA 1m05s"``
        (the texture, which of the job's files, how far that file is, the time left for the job)."""
        if self.finished:
            ok = sum(1 for o in self.outcomes.values() if o.status == "ok")
            return f"Upscaled {ok} of {len(self.outcomes)} textures" + (" (cancelled)" if self.cancelled else "")
        label = f" {self.current}" if self.current else ""
        position, count, _ = self.current_file()
        where = f"{position}/{count}, {int(self.item_fraction * 100)}%" if position else f"{int(self.fraction * 100)}%"
        eta = self.eta_s
        return f"Upscaling{label} ({where})" + (f" ETA {format_duration(eta)}" if eta is not None else "")

    def progress_line(self) -> str:
        """One line for a log: ``"2/5 wall.1001.png 40% (job 23%, ETA 1m05s)"``."""
        position, count, name = self.current_file()
        if not position:
            return f"0/{count} waiting for the worker (job {int(self.fraction * 100)}%)"
        return (
            f"{position}/{count} {name} {int(self.item_fraction * 100)}% "
            f"(job {int(self.fraction * 100)}%, ETA {format_duration(self.eta_s)})"
        )

    def how_far(self) -> str:
        """How far the job got, for a timeout or cancel message: ``"23% of the job, 1 of 5 files written"``."""
        return (
            f"{int(self.fraction * 100)}% of the job, {self.written_files} of {len(self.plan.job.items)} files written"
        )


# --- the headless report -----------------------------------------------------------------------


def report_rows(textures: Sequence[TextureInfo], tracker: JobTracker | None, plan: JobPlan) -> list[dict[str, Any]]:
    """One JSON row per chosen texture: name, role, input/output size, output path, seconds, status, error.

    status is "ok" (upscaled), "up_to_date" (its earlier output was current and is used again), "failed",
    "cancelled" or "skipped" (``missing``: the file was already missing when the run began).
    """
    skipped = {s.texture: (s.reason, s.missing) for s in plan.skipped}
    rows = []
    for tex in textures:
        row: dict[str, Any] = {
            "name": tex.name,
            "role": tex.role,
            "source": tex.source,
            "input_size": list(tex.size),
            "output_size": None,
            "output_path": None,
            "seconds": 0.0,
            "status": "failed",
            "error": None,
        }
        if tex.name in skipped:
            reason, missing = skipped[tex.name]
            row["error"] = reason
            if missing:  # already missing before the run: a known gap, not a failure (unless --strict)
                row.update(status="skipped", missing=True, reason=reason)
        elif tracker is not None and tex.name in tracker.outcomes:
            outcome = tracker.outcomes[tex.name]
            row["status"] = outcome.status if outcome.status != "pending" else "failed"
            row["seconds"] = round(outcome.seconds, 3)
            if outcome.status == "ok":
                row["output_size"] = [outcome.width, outcome.height]
                row["output_path"] = outcome.dst
                if outcome.up_to_date:
                    row["status"] = "up_to_date"
            row["error"] = "; ".join(outcome.errors) or (
                None if outcome.status == "ok" else "cancelled" if outcome.status == "cancelled" else "no result"
            )
        else:
            row["error"] = "not part of the job"
        rows.append(row)
    return rows


def report_document(rows: Sequence[Mapping[str, Any]], **context: Any) -> dict[str, Any]:
    """The report: ``{"version", "ok", "failed", "cancelled", "images": rows, **context}``."""
    doc: dict[str, Any] = {"version": REPORT_VERSION}
    doc.update(context)
    doc["ok"] = sum(1 for r in rows if r["status"] == "ok")
    doc["up_to_date"] = sum(1 for r in rows if r["status"] == "up_to_date")
    doc["failed"] = sum(1 for r in rows if r["status"] == "failed")
    doc["cancelled"] = sum(1 for r in rows if r["status"] == "cancelled")
    doc["skipped"] = sum(1 for r in rows if r["status"] == "skipped")
    doc["images"] = [dict(r) for r in rows]
    return doc


def exit_code(rows: Sequence[Mapping[str, Any]], *, strict: bool = False) -> int:
    """0 when every chosen texture was upscaled or is up to date, else 1. Rows the filters left out do not count,
    nor textures whose file was already missing when the run began, unless ``strict``."""
    for row in rows:
        if row["status"] in ("ok", "up_to_date"):
            continue
        if row["status"] == "skipped" and not (strict and row.get("missing")):
            continue
        return 1
    return 0


def write_report(path: str, document: Mapping[str, Any]) -> str:
    """Write the report as UTF-8 JSON atomically (temporary file + rename); return the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Not mkstemp (which makes the file 0600): a report is for the user and their tools, so it gets the
    # permissions of any file they create (0666 less the umask); O_EXCL keeps the name ours.
    tmp = os.path.join(folder, f".report.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
