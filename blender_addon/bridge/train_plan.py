"""Fine-tuning from the add-on, the parts that need no Blender: which files make the dataset, what they
are called there, where a run's folders go, and following a ``train`` job's events (stdlib only).

A run lives in ``<root>/<run name>/``: ``data/`` (the exported textures) and ``model/`` (the worker's
checkpoint, logs, sample grids and ``model.safetensors``). ``<root>`` is ``//texup_training`` next to the
.blend, or a temporary folder for a file that was never saved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .jobs import TextureInfo
from .naming import UDIM_TOKENS, safe_stem, udim_tile_path
from .worker_protocol import Crashed, Done, Error, Message, Progress, Result

TRAINING_FOLDER = "texup_training"
"""The folder, next to the .blend, that holds fine-tuning runs."""

EXPORTABLE_SOURCES = ("file", "packed", "generated", "udim")


def run_name(now: float | None = None, existing: Iterable[str] = ()) -> str:
    """A new run's folder name, ``run_YYYYmmdd_HHMMSS`` (local time), with ``_2``, ``_3``... when taken."""
    stamp = time.strftime("run_%Y%m%d_%H%M%S", time.localtime(time.time() if now is None else now))
    taken = set(existing)
    name, counter = stamp, 1
    while name in taken:
        counter += 1
        name = f"{stamp}_{counter}"
    return name


def run_folders(root: str, name: str) -> tuple[str, str]:
    """``(data_dir, model_dir)`` of run ``name`` under ``root``."""
    base = os.path.join(root, name)
    return os.path.join(base, "data"), os.path.join(base, "model")


@dataclass(frozen=True)
class DatasetFile:
    """One file to put into the dataset: ``texture`` (the image's name) from ``src`` (a file on disk, or
    ``""`` when the add-on has to write the pixels: packed and generated images) to ``dst``."""

    texture: str
    src: str
    dst: str


@dataclass
class DatasetPlan:
    """What :func:`plan_dataset` decided: the files to write, and the textures left out with why."""

    files: list[DatasetFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def textures(self) -> list[str]:
        """Names of the textures that give at least one file, in order."""
        seen: list[str] = []
        for f in self.files:
            if f.texture not in seen:
                seen.append(f.texture)
        return seen


def _extension(info: TextureInfo) -> str:
    ext = os.path.splitext(info.filepath)[1].lower() if info.filepath else ""
    return ext or ".png"


def plan_dataset(infos: Sequence[TextureInfo], data_dir: str) -> DatasetPlan:
    """Name a dataset file for every usable texture of ``infos``, unique in ``data_dir``.

    Files (and each tile of a UDIM image) are copied as they are, in their own format; packed and
    generated images get ``src`` ``""`` (their pixels are written by the add-on). Missing files are
    skipped with a reason, as are UDIM images without tiles. Names are the texture's file name
    (or image name) made safe, with ``_2``, ``_3``... when two textures would share one.
    """
    plan = DatasetPlan()
    used: set[str] = set()

    def unique(stem: str, ext: str) -> str:
        name, counter = f"{stem}{ext}", 1
        while name.lower() in used:
            counter += 1
            name = f"{stem}_{counter}{ext}"
        used.add(name.lower())
        return os.path.join(data_dir, name)

    for info in infos:
        if info.source not in EXPORTABLE_SOURCES or info.status == "missing":
            plan.skipped.append(
                (
                    info.name,
                    "its file is missing"
                    if info.source == "missing" or info.status == "missing"
                    else f"images of source {info.source!r} cannot be exported",
                )
            )
            continue
        base = os.path.basename(info.filepath) if info.filepath else ""
        stem = safe_stem(os.path.splitext(base)[0] if base else info.name)
        ext = _extension(info) if info.source != "generated" else ".png"
        if info.source == "udim":
            for token in UDIM_TOKENS:
                stem = stem.replace(token, "")
            stem = safe_stem(stem.rstrip("._-"), fallback=safe_stem(info.name))
            if not info.udim_tiles:
                plan.skipped.append((info.name, "a UDIM image without tiles"))
                continue
            for tile in info.udim_tiles:
                plan.files.append(
                    DatasetFile(info.name, udim_tile_path(info.filepath, tile), unique(f"{stem}_{tile}", ext))
                )
        elif info.source == "file":
            plan.files.append(DatasetFile(info.name, info.filepath, unique(stem, ext)))
        else:  # packed or generated: the add-on writes the pixels
            plan.files.append(DatasetFile(info.name, "", unique(stem, ext)))
    return plan


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class TrainTracker:
    """Follows one ``train`` job's events: progress, the model file, errors, the end.

    Feed every polled event to :meth:`handle`; events of other jobs are ignored. ``finished`` is set by
    the job's ``done`` or a worker crash; then ``model_path`` is the exported model (``None`` when the
    run failed), ``cancelled`` tells an early stop, ``errors`` holds the error messages and ``notes``
    the trainer's lines for the user (data found, files skipped, fallbacks).
    """

    def __init__(self, job_id: str | None = None, steps: int = 0) -> None:
        self.job_id = job_id
        self.steps = steps
        self.step = 0
        self.loss: float | None = None
        self.eta_s: float | None = None
        self.model_path: str | None = None
        self.psnr_before: float | None = None
        self.psnr_after: float | None = None
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.cancelled = False
        self.finished = False
        self.crashed: str | None = None

    def handle(self, event: Any) -> None:
        if isinstance(event, Crashed):
            self.crashed = event.message
            self.finished = True
            return
        if getattr(event, "id", None) != self.job_id or self.job_id is None:
            return
        if isinstance(event, Progress):
            self.step, self.steps = event.done, event.total
            self.loss, self.eta_s = event.loss, event.eta_s
        elif isinstance(event, Result):
            self.model_path = event.dst
            self.psnr_before, self.psnr_after = event.psnr_before, event.psnr_after
            if event.steps is not None:
                self.step = event.steps
        elif isinstance(event, Error):
            self.errors.append(event.message)
        elif isinstance(event, Message):
            self.notes.append(event.text)
        elif isinstance(event, Done):
            self.cancelled = event.cancelled
            self.finished = True

    @property
    def progress(self) -> float:
        """0..1: steps done of the run's steps."""
        return min(1.0, self.step / self.steps) if self.steps > 0 else 0.0

    @property
    def succeeded(self) -> bool:
        """The run ended, not cancelled, and a model was exported."""
        return self.finished and not self.cancelled and self.crashed is None and self.model_path is not None

    @property
    def message(self) -> str:
        """One line for the panel and the status bar."""
        if not self.step:
            return "fine-tuning: preparing (loading the model and the textures)..."
        text = f"fine-tuning: step {self.step}/{self.steps}"
        if self.loss is not None:
            text += f", loss {self.loss:.4g}"
        if self.eta_s is not None:
            text += f", about {_duration(self.eta_s)} left"
        return text

    def summary(self) -> str:
        """One line about how the run ended."""
        if self.crashed is not None:
            return f"texup: fine-tuning failed: {self.crashed}"
        if self.errors and self.model_path is None:
            return f"texup: fine-tuning failed: {self.errors[0]}"
        if self.cancelled:
            return f"texup: fine-tuning cancelled at step {self.step}; the model was not added"
        if self.model_path is None:
            return "texup: fine-tuning ended without a model"
        text = f"texup: fine-tuned {self.step} steps -> {os.path.basename(self.model_path)}"
        if self.psnr_before is not None and self.psnr_after is not None:
            text += f" (held-out PSNR {self.psnr_before:.2f} -> {self.psnr_after:.2f} dB)"
        return text
