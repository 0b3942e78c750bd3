"""The Upscale operator's run as a small state machine that never blocks: starting -> running -> finished.

:class:`UpscaleSession` is what the modal operator drives from its timer (and what the in-process
tests drive directly, since the ``bpy`` module has no event loop): :meth:`UpscaleSession.begin`
spawns the worker if none is warm and returns at once; every :meth:`UpscaleSession.step` picks up the
worker's hello (then submits the job) or its events, without waiting; :meth:`UpscaleSession.finish`
relinks what succeeded. Start failures (no texup in that Python, another protocol version, no hello
in time) arrive through ``step`` as :attr:`UpscaleSession.error`, with nothing changed.
"""

from __future__ import annotations

import time
from typing import Any

from . import service
from .bridge.client import WorkerClient, WorkerError, WorkerStartError
from .bridge.jobs import TextureInfo
from .bridge.worker_protocol import Job, ProtocolError
from .upscale_run import RunError, RunSettings, UpscaleRun

STARTING, RUNNING, FINISHED = "starting", "running", "finished"


class SessionError(Exception):
    """A run cannot begin (no worker Python, nothing to upscale, ...); ``str()`` is one line for the user."""


class WorkerSession:
    """One job in the warm worker as a state machine that never blocks (shared by Upscale and Fine-tune).

    ``state`` is :data:`STARTING` (the worker has not said hello yet; the job waits here),
    :data:`RUNNING` (the job was sent) or :data:`FINISHED`. ``error`` is set when the worker could not
    start or the job could not be sent. Subclasses say how the job is sent (:meth:`_submit`), how its
    events are followed (:meth:`_handle`, :meth:`_job_finished`, :meth:`_job_progress`,
    :meth:`_job_message`) and what a cancel waits for (:attr:`cancel_note`).
    """

    cancel_note = "cancelling"
    #: Seconds the worker has to confirm a cancel (its ``done``); then the session stops waiting: it ends
    #: as cancelled and the worker is stopped (a new one starts on the next run).
    cancel_grace = 2.0

    def __init__(self, client: WorkerClient | None) -> None:
        self.client: Any = client  # None: nothing for a worker to do (the session starts finished)
        self.job_id: str | None = None
        self.state = STARTING
        self.error: str | None = None
        self.cancel_sent = False
        self.cancel_sent_at: float | None = None
        self.cancelled_before_start = False
        self.worker_stopped = False  # the worker did not confirm a cancel in time and was stopped
        self.started_at = time.monotonic()

    # --- what a subclass provides ---
    def _submit(self) -> str:
        raise NotImplementedError

    def _handle(self, event: Any) -> None:
        raise NotImplementedError

    def _job_finished(self) -> bool:
        raise NotImplementedError

    def _job_progress(self) -> float:
        raise NotImplementedError

    def _job_message(self) -> str:
        raise NotImplementedError

    def _abandon(self) -> None:
        """End the job's tracking as cancelled without the worker's ``done``."""
        raise NotImplementedError

    # --- the shared state machine ---
    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def progress(self) -> float:
        """0..1 over the job (0 while the worker starts)."""
        return self._job_progress() if self.state != STARTING else 0.0

    @property
    def message(self) -> str:
        """One line for the panel and the status bar."""
        if self.state == STARTING:
            return f"starting the texup worker ({time.monotonic() - self.started_at:.0f} s)..."
        text = self._job_message()
        if self.cancel_sent and self.state == RUNNING:
            text += f" - {self.cancel_note}"
        return text

    def request_cancel(self) -> None:
        """Esc / Cancel: before the job was sent, drop it; else ask the worker to stop it."""
        if self.state == STARTING:
            self.cancelled_before_start = True
            self.state = FINISHED
            return
        if self.state == RUNNING and not self.cancel_sent and self.job_id is not None:
            self.cancel_sent = True
            self.cancel_sent_at = time.monotonic()
            try:
                self.client.cancel(self.job_id)  # sent now: the worker polls for it inside each tile
            except WorkerError:
                pass  # the worker is gone: the next step() gets its Crashed event

    def step(self, wait: float = 0.0) -> bool:
        """Advance without blocking (``wait`` > 0: wait up to that long for the worker); True when finished."""
        if self.state == STARTING:
            try:
                hello = self.client.check_ready(wait=wait)
            except WorkerStartError as err:
                self._fail(str(err))
                return True
            if hello is None:
                return False
            try:
                self.job_id = self._submit()
            except (WorkerError, ProtocolError) as err:
                self._fail(str(err))
                return True
            self.state = RUNNING
            wait = 0.0
        if self.state == RUNNING:
            for event in self.client.poll(timeout=wait):
                self._handle(event)
            if (
                not self._job_finished()
                and self.cancel_sent_at is not None
                and time.monotonic() - self.cancel_sent_at > self.cancel_grace
            ):
                self._stop_unresponsive_worker()
            if self._job_finished():
                self.state = FINISHED
        return self.finished

    def _stop_unresponsive_worker(self) -> None:
        """The worker did not confirm the cancel in time: stop waiting for it, and stop it (so it writes
        nothing more); the next run starts a new worker."""
        self._abandon()
        self.worker_stopped = True
        self.client.stop(timeout=0.2)

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = FINISHED


class UpscaleSession(WorkerSession):
    """One Upscale click: the run (:class:`~.upscale_run.UpscaleRun`), its job, and the shared state machine.

    After a start failure nothing is changed by :meth:`finish`.
    """

    cancel_note = "cancelling"

    def __init__(self, run: UpscaleRun, client: WorkerClient | None, job: Job) -> None:
        super().__init__(client)
        self.run = run
        self.job = job

    @classmethod
    def begin(
        cls,
        infos: list[TextureInfo],
        settings: RunSettings,
        worker_python: str | None = None,
        *,
        start_timeout: float = 120.0,
    ) -> UpscaleSession:
        """Prepare the job and get a worker (spawned, not waited for); submit at once if it is warm. When every
        chosen texture's output is up to date no worker is started and the session is finished at once.

        Raises :class:`SessionError` when no worker Python is set or found, when nothing is left to
        upscale, or when a warm worker cannot take the job; temporary files are removed then.
        """
        run = UpscaleRun(infos, settings)
        try:
            job = run.prepare()
            # Every output up to date (the output folder's manifest says so): relinked without any worker.
            client = service.ensure_worker(worker_python, timeout=start_timeout) if run.needs_worker else None
        except (WorkerStartError, RunError) as err:
            run.cleanup()
            raise SessionError(str(err)) from err
        session = cls(run, client, job)
        if client is None:
            session.state = FINISHED
            return session
        session.step()  # a warm worker takes the job now
        if session.state == FINISHED and session.error is not None:
            raise SessionError(session.error)
        return session

    def _submit(self) -> str:
        job_id = self.client.submit(self.job)
        self.run.started(job_id)
        return job_id

    def _handle(self, event: Any) -> None:
        self.run.handle(event)

    def _job_finished(self) -> bool:
        return self.run.finished

    def _job_progress(self) -> float:
        return self.run.progress

    def _job_message(self) -> str:
        return self.run.message

    def _abandon(self) -> None:
        if self.run.tracker is not None:
            self.run.tracker.abandon()

    @property
    def eta_s(self) -> float | None:
        """Seconds left for the job (estimated), ``None`` while there is no estimate."""
        tracker = self.run.tracker
        return tracker.eta_s if tracker is not None and self.state == RUNNING else None

    def finish(self) -> list[dict[str, Any]]:
        """Apply the results (see :meth:`UpscaleRun.apply`) and return the report rows.

        After a start failure or a cancel before the start nothing is changed and no rows are returned.
        """
        if self.error is not None or self.cancelled_before_start:
            self.run.cleanup()
            return []
        return self.run.apply()

    @property
    def failure(self) -> str | None:
        """Why nothing was changed (start failure or worker crash), else ``None``."""
        return self.error or self.run.crashed

    def summary(self) -> str:
        if self.cancelled_before_start:
            return "texup: cancelled before the worker started; nothing was changed"
        if self.failure is not None:  # the panel shows the whole reason (the status bar cuts it)
            return f"texup: nothing was changed: {self.failure}"
        text = self.run.summary()
        if self.worker_stopped:
            text += f" (the worker did not stop within {self.cancel_grace:g} s of the cancel and was restarted)"
        return text
