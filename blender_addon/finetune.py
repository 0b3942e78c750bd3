"""The "Fine-tune on these textures" run: export the chosen textures as a dataset, train in the worker,
and hand the exported model to the panel. Never blocks, like :mod:`.session` for Upscale.

:class:`FineTuneSession.begin` writes the dataset (files copied as they are, every UDIM tile; packed
and generated images written out) to ``//texup_training/<run>/data`` next to the .blend, or to a
temporary folder for a file that was never saved, and gets a worker without waiting for it; each
:meth:`FineTuneSession.step` picks up the worker's hello (then sends the ``train`` message) or its
events. When the run succeeded, :meth:`FineTuneSession.finish` sets the scene's Model field to the
exported ``model.safetensors``, so Upscale uses it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import bpy

from . import service
from .bridge.client import WorkerClient, WorkerStartError
from .bridge.jobs import TextureInfo
from .bridge.train_plan import TRAINING_FOLDER, DatasetPlan, TrainTracker, plan_dataset, run_folders, run_name
from .bridge.worker_protocol import Done, ProtocolError, TrainJob
from .session import FINISHED, SessionError, WorkerSession


@dataclass(frozen=True)
class FineTuneSettings:
    """What the panel chose: ``steps``, ``stage`` ("psnr" or "gan"), the model to start from
    (``pretrained``; ``None``: the worker's default), an optional training config file, the device."""

    steps: int = 300
    stage: str = "gan"
    pretrained: str | None = None
    config_file: str | None = None
    device: str = "auto"


def training_root() -> str:
    """``//texup_training`` next to the saved .blend, else a new temporary folder."""
    if bpy.data.filepath:
        return os.path.normpath(bpy.path.abspath("//" + TRAINING_FOLDER))
    return tempfile.mkdtemp(prefix="texup_training_")


def export_dataset(plan: DatasetPlan) -> list[tuple[str, str]]:
    """Write the planned files; return ``(texture, reason)`` for each that could not be written."""
    failures: list[tuple[str, str]] = []
    for item in plan.files:
        try:
            os.makedirs(os.path.dirname(item.dst), exist_ok=True)
            if item.src:
                shutil.copyfile(item.src, item.dst)
                continue
            image = bpy.data.images.get(item.texture)
            if image is None:
                failures.append((item.texture, "no such image in the file"))
            elif image.packed_file is not None:
                with open(item.dst, "wb") as fh:
                    fh.write(image.packed_file.data)
            else:  # generated: save a copy (saving the image itself would turn it into a file image)
                copy = image.copy()
                try:
                    copy.file_format = "PNG"
                    copy.save(filepath=item.dst)
                finally:
                    bpy.data.images.remove(copy)
        except (OSError, RuntimeError) as err:
            failures.append((item.texture, f"cannot write {item.dst}: {err}"))
    return failures


class FineTuneSession(WorkerSession):
    """One "Fine-tune" click: the dataset, the worker client, the train job and where it stands.

    ``state`` is :data:`~.session.STARTING` (waiting for the worker's hello), :data:`~.session.RUNNING`
    or :data:`~.session.FINISHED`; ``error`` is set when the worker could not start or take the job.
    """

    def __init__(self, client: WorkerClient, job: TrainJob, plan: DatasetPlan, failures: list[tuple[str, str]]) -> None:
        super().__init__(client)
        self.job = job
        self.plan = plan
        self.failures = failures
        self.tracker = TrainTracker(steps=job.steps)

    @classmethod
    def begin(
        cls,
        infos: list[TextureInfo],
        settings: FineTuneSettings,
        worker_python: str | None = None,
        *,
        root: str | None = None,
        start_timeout: float = 120.0,
    ) -> FineTuneSession:
        """Export the dataset and get a worker (spawned, not waited for); send the job at once if it is warm.

        Raises :class:`~.session.SessionError` when no texture could be exported, no worker Python is
        found, or a warm worker cannot take the job.
        """
        try:  # no worker Python: say so before writing the dataset
            python = service.resolve_python(worker_python)
        except WorkerStartError as err:
            raise SessionError(str(err)) from err
        if not os.path.exists(python):
            raise SessionError(
                f"the worker Python {python!r} does not exist: set 'Worker Python' in the texup "
                "add-on preferences (or TEXUP_PYTHON)"
            )
        root = root or training_root()
        existing = os.listdir(root) if os.path.isdir(root) else []
        data_dir, model_dir = run_folders(root, run_name(existing=existing))
        plan = plan_dataset(infos, data_dir)
        failures = list(plan.skipped) + export_dataset(plan)
        failed_names = {name for name, _ in failures}
        if not [f for f in plan.files if f.texture not in failed_names]:
            reasons = "; ".join(f"{name}: {why}" for name, why in failures)
            raise SessionError("no texture could be exported for fine-tuning" + (f" ({reasons})" if reasons else ""))
        job = TrainJob(
            data_dir=data_dir,
            out_dir=model_dir,
            steps=settings.steps,
            stage=settings.stage,
            pretrained=settings.pretrained or None,
            config_file=settings.config_file or None,
            device=settings.device,
        )
        try:
            job.validate()
            client = service.ensure_worker(worker_python, timeout=start_timeout)
        except (WorkerStartError, ProtocolError) as err:
            raise SessionError(str(err)) from err
        session = cls(client, job, plan, failures)
        session.step()
        if session.state == FINISHED and session.error is not None:
            raise SessionError(session.error)
        return session

    cancel_note = "cancelling after this step"
    cancel_grace = 30.0  # a training step can take a while on a CPU; then the worker is stopped

    def _submit(self) -> str:
        job_id = self.client.submit_train(self.job)
        self.tracker.job_id = job_id
        return job_id

    def _handle(self, event: Any) -> None:
        self.tracker.handle(event)

    def _job_finished(self) -> bool:
        return self.tracker.finished

    def _job_progress(self) -> float:
        return self.tracker.progress

    def _job_message(self) -> str:
        return self.tracker.message

    def _abandon(self) -> None:
        self.tracker.handle(Done(id=self.job_id or "", ok=0, failed=0, cancelled=True))

    @property
    def failure(self) -> str | None:
        """Why no model came out (start failure, worker crash, training error), else ``None``."""
        if self.error is not None:
            return self.error
        if self.tracker.crashed is not None:
            return self.tracker.crashed
        if self.tracker.finished and self.tracker.model_path is None and not self.tracker.cancelled:
            return self.tracker.errors[0] if self.tracker.errors else "the worker exported no model"
        return None

    def finish(self, scene: Any) -> str | None:
        """Set ``scene.texup.model`` to the exported model when the run succeeded; return its path."""
        if self.error is not None or self.cancelled_before_start or not self.tracker.succeeded:
            return None
        path = self.tracker.model_path
        assert path is not None
        stored = path
        if bpy.data.filepath:
            try:
                stored = bpy.path.relpath(path)
            except ValueError:  # another drive on Windows: keep it absolute
                stored = path
        scene.texup.model = stored
        return path

    def summary(self) -> str:
        if self.cancelled_before_start:
            return "texup: fine-tuning cancelled before the worker started; nothing was changed"
        if self.error is not None:
            return f"texup: fine-tuning failed: {self.error}"
        return self.tracker.summary()
