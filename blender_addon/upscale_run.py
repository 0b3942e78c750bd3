"""One upscale run: scan results -> worker job -> events -> relink. Shared by the modal operator and the
headless script (``scripts/upscale_blend.py``), so both change a file in exactly the same way.

The run never blocks: :meth:`UpscaleRun.handle` takes events that the caller polled from the worker
client. The operator feeds it from a timer; :func:`run_blocking_started` loops on ``poll(timeout)``.
Choosing files, naming outputs and following events is ``bridge.jobs`` (plain Python, tested without
Blender); this module adds what needs bpy: writing packed and generated images to temporary files,
and loading and relinking the results.

Where results go: ``out_dir`` (default ``//textures_upscaled/``, next to the .blend). A file that has
never been saved has no "next to", so its results go to a temporary folder and are packed; a packed
original also gives a packed result (its file is written to ``out_dir`` too, where it would unpack).
Each result is named ``<stem>_x<scale>.<ext>`` in the original's format and bit depth (the worker
keeps both), never over an existing file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bpy

from . import relink
from .bridge import options as schema
from .bridge.client import WorkerError
from .bridge.jobs import JobPlan, JobTracker, TextureInfo, build_job, report_rows
from .bridge.manifest import OutputsView, dds_format_setting, pixel_options
from .bridge.naming import UDIM_TOKENS, safe_stem
from .bridge.partners import dialled
from .bridge.scene_options import run_options, sent_as_they_are
from .bridge.worker_protocol import Job, JobOptions
from .defaults import ADDON_VERSION, DEFAULT_MODEL, DEFAULT_OUT_DIR

# File formats Blender writes for generated images (which have no file yet), by float-ness.
_GENERATED_FORMATS = {False: ("PNG", "png"), True: ("OPEN_EXR", "exr")}
_FORMAT_EXTENSIONS = {
    "PNG": "png",
    "JPEG": "jpg",
    "TARGA": "tga",
    "TARGA_RAW": "tga",
    "TIFF": "tif",
    "OPEN_EXR": "exr",
    "OPEN_EXR_MULTILAYER": "exr",
    "BMP": "bmp",
    "WEBP": "webp",
    "HDR": "hdr",
}


def _packed_extension(image: bpy.types.Image) -> str:
    """The extension for a packed image without a file path: DDS by its bytes' signature (Blender reads DDS but has
    no DDS ``file_format`` item, as it does not write DDS), else from ``file_format``."""
    packed = image.packed_file or (image.packed_files[0].packed_file if len(image.packed_files) else None)
    if packed is not None and bytes(packed.data[:4]) == b"DDS ":
        return "dds"
    return _FORMAT_EXTENSIONS.get(image.file_format, "png")


#: The run options of texup's schema a run carries (bridge/scene_options.py: every job option but an exact size and
#: the overlap), each a field with its default: a new option of the schema is one of RunSettings' without an edit.
_RunFields: Any = schema.option_record("_RunFields", run_options(), "The schema's run options, with their defaults.")


@dataclass(frozen=True)
class RunSettings(_RunFields):
    """What the user chose for a run (panel, preferences or command line): the schema's run options (seamless,
    color_fix, engine, device, precision, layout, ...: their names and defaults) and the add-on's own settings.

    ``model``: a model name or weights path (``None``: the worker's default); ``scale``: 2 or 4;
    ``tile``: input tile size in pixels (0: automatic); ``seamless``: "auto" / "on" / "off"; ``color_fix``: keep
    the source's low-frequency colour, "auto" / "on" / "off";
    ``detail``: the Detail dial, 1 the model, 0 its partner (ignored for a model without one: bridge/partners.py);
    ``out_dir``: folder for results, ``//`` = next to the .blend; ``relative``: store results' paths
    relative to the .blend where possible.
    """

    model: str | None = None
    scale: int = 4
    tile: int = 0
    detail: float = 1.0
    out_dir: str = DEFAULT_OUT_DIR
    relative: bool = True


class RunError(Exception):
    """A run cannot start (nothing to upscale); ``str()`` is one line for the user."""


class UpscaleRun:
    """Prepare a job for ``infos``, follow the worker's events, then apply the results to the file.

    Life cycle: ``run = UpscaleRun(infos, settings)``; ``job = run.prepare()`` (writes packed and
    generated images to temporary files; missing ones are reported, not sent); ``job_id =
    client.submit(job)``; ``run.started(job_id)``; feed every polled event to :meth:`handle` until
    :attr:`finished`; then :meth:`apply` (relinks what succeeded, all at once) — after a worker crash
    it changes nothing. Temporary files are removed by :meth:`apply` / :meth:`cleanup`.
    """

    def __init__(self, infos: list[TextureInfo], settings: RunSettings) -> None:
        self.infos = list(infos)
        self.settings = settings
        self.plan: JobPlan | None = None
        self.tracker: JobTracker | None = None
        self.crashed: str | None = None
        self.rows: list[dict[str, Any]] = []
        self._pack = False
        self._temp_dir: str | None = None
        self._failures: dict[str, str] = {}  # image name -> why (bpy-side problems)
        self._applied: dict[str, tuple[str, int]] = {}  # image name -> (result image name, nodes changed)

    # -- preparing ------------------------------------------------------------------------------

    def _tmp(self) -> str:
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="texup_")
        return self._temp_dir

    def prepare(self) -> Job:
        """Build the worker job. Raises :class:`RunError` when no file is left to upscale."""
        saved = bool(bpy.data.filepath)
        self._pack = not saved
        if saved:
            out_dir = os.path.normpath(bpy.path.abspath(self.settings.out_dir or DEFAULT_OUT_DIR))
        else:
            out_dir = os.path.join(self._tmp(), "results")
        extracted: dict[str, str] = {}
        usable: list[TextureInfo] = []
        for info in self.infos:
            image = bpy.data.images.get(info.name)
            if image is None:
                self._failures[info.name] = f"{info.name}: no such image in the file"
                continue
            try:
                if info.source == "packed":
                    extracted[info.name] = self._write_packed(image)
                elif info.source == "generated":
                    extracted[info.name] = self._write_generated(image)
            except (OSError, RuntimeError) as err:
                self._failures[info.name] = f"{info.name}: cannot write it to a temporary file: {err}"
                continue
            usable.append(info)
        options = JobOptions(
            model=self._model() if self.settings.detail < 1 else self.settings.model or None,
            scale=float(self.settings.scale),
            tile=self.settings.tile or None,
            **self._as_they_are(),
        )
        earlier = OutputsView(out_dir)
        plan = build_job(
            usable,
            options,
            out_dir,
            name_scale=self.settings.scale,
            extracted=extracted,
            origins=self._origins(extracted),
            earlier=earlier,
        )
        # Outputs the folder's manifest shows up to date are relinked as they are: no item, no worker for them.
        current = {out.texture for out in plan.outputs if self._is_current(out, plan.job, earlier)}
        kept = {key for out in plan.outputs if out.texture not in current for key in out.item_keys}
        job = Job(options=plan.job.options, items=tuple(i for i in plan.job.items if i.key in kept))
        self.plan = JobPlan(job=job, outputs=plan.outputs, skipped=plan.skipped)
        self.tracker = JobTracker(self.plan)
        for texture in current:
            self.tracker.mark_up_to_date(texture)
        if not self.plan.outputs:
            reasons = [f"{s.texture}: {s.reason}" for s in self.plan.skipped] + list(self._failures.values())
            self.cleanup()
            raise RunError("nothing to upscale" + (": " + "; ".join(reasons) if reasons else ""))
        if job.items:
            os.makedirs(out_dir, exist_ok=True)
        return job

    @property
    def needs_worker(self) -> bool:
        """Whether the prepared job has anything for the worker (False: every output was up to date)."""
        return self.plan is not None and bool(self.plan.job.items)

    def _origins(self, extracted: dict[str, str]) -> dict[str, str]:
        """Stable names for the sources the add-on wrote to temporary files (packed, generated images): the
        .blend and the datablock, so the output folder's manifest knows them again in the next run."""
        blend = bpy.data.filepath or "(unsaved)"
        return {name: f"{blend}#{name}" for name in extracted}

    def _model(self) -> str:
        """The model reference the worker gets: the model dialled to the Detail setting (a blend with its partner)."""
        return dialled(self.settings.model or DEFAULT_MODEL, self.settings.detail)

    def _as_they_are(self) -> dict[str, Any]:
        """The run's options that the job takes as the settings hold them (texup's schema: seamless, color_fix,
        engine, device, ...; model, scale and tile are converted: bridge/scene_options.py)."""
        return {o.name: getattr(self.settings, o.name) for o in sent_as_they_are()}

    def _is_current(self, out: Any, job: Job, earlier: OutputsView) -> bool:
        model = self._model()
        items = [item for item in job.items if item.key in out.item_keys]
        options = pixel_options(
            scale=float(self.settings.scale),
            role=out.role,
            dds_format=dds_format_setting(),
            **{k: v for k, v in self._as_they_are().items() if schema.OPTIONS[k].pixels},
        )
        return bool(items) and all(
            earlier.why_not_current(item.dst, source=item.src, model=model, options=options, texup=ADDON_VERSION)
            is None
            for item in items
        )

    def started(self, job_id: str) -> None:
        """Tell the run the id the client gave its job (events of other jobs are then ignored)."""
        if self.tracker is not None:
            self.tracker.job_id = job_id

    def _write_packed(self, image: bpy.types.Image) -> str:
        """Write a packed image's bytes (every tile of a tiled one) to a temporary file; return its path
        (a ``<UDIM>`` pattern for tiled images)."""
        folder = os.path.join(self._tmp(), "inputs", safe_stem(image.name))
        os.makedirs(folder, exist_ok=True)
        base = os.path.basename(bpy.path.abspath(image.filepath)) if image.filepath else ""
        ext = os.path.splitext(base)[1].lstrip(".").lower() or _packed_extension(image)
        stem = safe_stem(os.path.splitext(base)[0] if base else image.name)
        if image.source == "TILED":
            for token in UDIM_TOKENS:
                stem = stem.replace(token, "")
            stem = stem.rstrip("._-") or safe_stem(image.name)
            pattern = os.path.join(folder, f"{stem}.<UDIM>.{ext}")
            for packed in image.packed_files:
                with open(pattern.replace("<UDIM>", str(int(packed.tile_number))), "wb") as fh:
                    fh.write(packed.packed_file.data)
            return pattern
        path = os.path.join(folder, f"{stem}.{ext}")
        with open(path, "wb") as fh:
            fh.write(image.packed_file.data)
        return path

    def _write_generated(self, image: bpy.types.Image) -> str:
        """Save a generated image's pixels (PNG, or EXR for float images) to a temporary file."""
        folder = os.path.join(self._tmp(), "inputs")
        os.makedirs(folder, exist_ok=True)
        file_format, ext = _GENERATED_FORMATS[bool(image.is_float)]
        path = os.path.join(folder, f"{safe_stem(image.name)}.{ext}")
        # Image.save(filepath=...) turns a generated image into a file image: save a copy instead.
        copy = image.copy()
        try:
            copy.file_format = file_format
            copy.save(filepath=path)
        finally:
            bpy.data.images.remove(copy)
        return path

    # -- following the worker -------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        """Take one event polled from the worker client (progress, result, error, done, crashed)."""
        if event.type == "crashed":
            self.crashed = event.message
        if self.tracker is not None:
            self.tracker.apply(event)

    @property
    def finished(self) -> bool:
        return self.tracker is not None and self.tracker.finished

    @property
    def progress(self) -> float:
        """0..1 over all files of the job."""
        return self.tracker.fraction if self.tracker is not None else 0.0

    @property
    def message(self) -> str:
        return self.tracker.status_text() if self.tracker is not None else ""

    # -- finishing ------------------------------------------------------------------------------

    def apply(self) -> list[dict[str, Any]]:
        """Load every fully upscaled image as a new image and swap it into all nodes of its original.

        An image with a failed file (one UDIM tile, say) is left as it is. After a cancel, images
        finished before it are applied. After a worker crash nothing is changed and this run's result
        files are deleted. Returns the report rows (see :meth:`report`).
        """
        try:
            if self.crashed is not None:
                self._delete_results()
            elif self.plan is not None and self.tracker is not None:
                for planned in self.plan.outputs:
                    outcome = self.tracker.outcomes[planned.texture]
                    if outcome.status == "ok":
                        self._apply_one(planned, outcome)
        finally:
            self.cleanup()
        self.rows = self.report()
        return self.rows

    def _apply_one(self, planned: Any, outcome: Any) -> None:
        name = planned.texture
        original = bpy.data.images.get(name)
        if original is None:
            self._failures[name] = f"{name}: the image was removed from the file during the run"
            return
        info = next(i for i in self.infos if i.name == name)
        pack = self._pack or info.source == "packed"
        if planned.tiles:
            key_tile = dict(zip(planned.item_keys, planned.tiles))
            files: Any = {key_tile[key]: path for key, path in outcome.written.items()}
        else:
            files = next(iter(outcome.written.values()))
        record: str | None = None
        if pack:
            # A packed result records where it would unpack to: the configured output folder.
            record = (self.settings.out_dir or DEFAULT_OUT_DIR).rstrip("/\\") + "/" + os.path.basename(planned.dst)
        elif self.settings.relative:
            try:
                record = bpy.path.relpath(planned.dst)
            except ValueError:  # another drive (Windows): keep the absolute path
                record = None
        try:
            # Loaded by an earlier run: the same datablock again (a file one reads its redone pixels again; a
            # packed one is used again only when its pixels are still current).
            result = None
            if not pack:
                result = relink.find_result(original, planned.dst)
                if result is not None and not outcome.up_to_date:
                    result.reload()
            elif outcome.up_to_date and record is not None:
                result = relink.find_result(original, planned.dst, packed_as=record)
            if result is None:
                result = relink.load_result(
                    original, files, name=_image_name(planned.dst), pack=pack, pattern=planned.dst, filepath=record
                )
        except (RuntimeError, ValueError) as err:
            self._failures[name] = f"{name}: Blender cannot load the result {planned.dst}: {err}"
            return
        if not outcome.width:  # found up to date by the add-on: the size is the file's
            outcome.width, outcome.height = (int(v) for v in result.size)
        self._applied[name] = (result.name, relink.apply_result(original, result))

    def _delete_results(self) -> None:
        if self.tracker is None:
            return
        for outcome in self.tracker.outcomes.values():
            for key, path in outcome.written.items():
                # only files this run created: an earlier output (up to date, or redone in place) may be what a
                # saved .blend already uses
                if outcome.reasons.get(key) == "new" and os.path.isfile(path):
                    os.remove(path)

    def cleanup(self) -> None:
        """Remove this run's temporary folder (inputs written for the worker, packed results' files)."""
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def report(self) -> list[dict[str, Any]]:
        """One row per image: ``bridge.jobs.report_rows`` plus ``result_image`` and ``nodes_changed``;
        problems found on the Blender side (cannot load the result, ...) turn a row ``failed``."""
        plan = (
            self.plan
            if self.plan is not None
            else JobPlan(job=Job(options=JobOptions(), items=()), outputs=(), skipped=())
        )
        rows = report_rows(self.infos, self.tracker, plan)
        for row in rows:
            name = row["name"]
            if name in self._failures:
                row.update(status="failed", error=self._failures[name], output_size=None, output_path=None)
            elif self.crashed is not None and row["status"] not in ("failed", "skipped", "up_to_date"):
                row.update(status="failed", error=self.crashed, output_size=None, output_path=None)
            if name in self._applied:
                row["result_image"], row["nodes_changed"] = self._applied[name]
                if self._pack or row.get("source") == "packed":
                    row["packed"] = True
            else:
                row["result_image"], row["nodes_changed"] = None, 0
        return rows

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] == "failed"]

    def summary(self) -> str:
        """One line for the status bar / operator report."""
        statuses = ("ok", "up_to_date", "skipped", "failed", "cancelled")
        counts = {status: sum(row["status"] == status for row in self.rows) for status in statuses}
        parts = [f"{counts['ok']} upscaled"]
        if counts["up_to_date"]:
            parts.append(f"{counts['up_to_date']} up to date")
        if counts["skipped"]:
            parts.append(f"{counts['skipped']} missing")
        if counts["failed"]:
            parts.append(f"{counts['failed']} failed")
        if counts["cancelled"]:
            parts.append(f"{counts['cancelled']} cancelled")
        return "texup: " + ", ".join(parts)


def _image_name(dst_pattern: str) -> str:
    """Datablock name of a result: its file name without extension and UDIM token (``wall_x4``)."""
    stem = os.path.splitext(os.path.basename(dst_pattern))[0]
    for token in UDIM_TOKENS:
        stem = stem.replace(token, "")
    return stem.strip("._-") or "upscaled"


def run_blocking_started(
    client: Any,
    run: UpscaleRun,
    job_id: str,
    *,
    poll_interval: float = 0.1,
    timeout: float | None = None,
    on_progress: Callable[[JobTracker], None] | None = None,
) -> list[dict[str, Any]]:
    """Wait for the submitted job ``job_id`` of ``run``, then apply it; returns the report rows.

    The headless path: blocking is fine there. ``on_progress(tracker)`` is called after every batch of
    events (the caller decides how often to print). After ``timeout`` seconds the job is cancelled and
    treated like a crash (nothing changed); the rows' error says that the timeout ran out and how far
    the job got.
    """
    import time

    run.started(job_id)
    start = time.monotonic()
    while not run.finished:
        events = client.poll(timeout=poll_interval)
        for event in events:
            run.handle(event)
        if events and on_progress is not None and run.tracker is not None:
            on_progress(run.tracker)
        if not run.finished and timeout is not None and time.monotonic() - start > timeout:
            how_far = run.tracker.how_far() if run.tracker is not None else "nothing done"
            try:
                client.cancel(job_id)
            except WorkerError:
                pass  # the worker is gone: the timeout is still what to say
            run.crashed = f"the timeout ({timeout:g} s) ran out at {how_far}; the job was cancelled"
            if run.tracker is not None:
                run.tracker.fail(run.crashed)
            break
    return run.apply()


def run_blocking(
    connect: Callable[[], Any],
    run: UpscaleRun,
    *,
    timeout: float | None = None,
    on_progress: Callable[[JobTracker], None] | None = None,
) -> list[dict[str, Any]]:
    """Prepare, submit, wait and apply (see :func:`run_blocking_started`); raises :class:`RunError`. ``connect()``
    gives the worker client; it is called only when the job has anything for a worker (when every output is up
    to date, no worker starts)."""
    job = run.prepare()
    if not run.needs_worker:
        return run.apply()
    worker = connect()
    job_id = worker.submit(job)
    return run_blocking_started(worker, run, job_id, timeout=timeout, on_progress=on_progress)
