"""The worker process behind ``texup worker``: upscale and train jobs arriving as JSON lines on stdin.

One thread reads stdin and answers what needs no model at once (``ping``, ``models``, ``cancel``,
malformed lines, unknown types), so a ``cancel`` reaches a running job; the thread that called
:meth:`WorkerServer.serve` runs upscale and train jobs one after another (a train job cancels at
its next step). Models stay loaded between jobs
(:func:`texup.api.get_upscaler` keeps one Upscaler per (model, device, precision)).

stdout carries protocol lines only; :func:`serve_stdio` moves file descriptor 1 to stderr first, so a
stray ``print`` or a native library's message cannot corrupt the stream. End of stdin (the client
died) and ``shutdown`` both cancel the running job at its next tile and end :meth:`serve` with 0.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, Any

from texup._malloc import release_freed_memory
from texup.errors import FileError, ImageReadError, TexupError
from texup.options import EngineChoice
from texup.worker import protocol
from texup.worker.protocol import ProtocolError, TrainRequest, UpscaleRequest

log = logging.getLogger("texup.worker")

PROGRESS_INTERVAL_S = 0.05
"""At most one progress event per item in this many seconds (the first and last tile always go out)."""
#: How often an output another run sharing its folder holds is asked for again (texup.library.claim_output).
CLAIM_POLL_S = 0.2

MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest request line read (16 MiB). The largest real message, an upscale job, spends a few hundred bytes
per item, so this still allows tens of thousands of textures in one job; a longer line is answered with an
``error`` event and skipped in pieces of :data:`_DISCARD_CHUNK` without ever being held whole, so a runaway
client cannot make the worker (inside Blender's memory budget) buffer gigabytes."""

_DISCARD_CHUNK = 1024 * 1024

_STOP = object()


class WorkerServer:
    """Serve the protocol on ``stdin`` (bytes, one message per line) and ``stdout`` (text).

    ``device`` and ``precision`` are the defaults for jobs whose options leave them at ``"auto"``.
    ``get_upscaler`` is :func:`texup.api.get_upscaler` unless a test passes another factory.
    """

    def __init__(
        self,
        stdin: IO[bytes],
        stdout: IO[str],
        *,
        device: str = "auto",
        precision: str = "auto",
        get_upscaler: Callable[..., Any] | None = None,
    ) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._device = device
        self._precision = precision
        self._get_upscaler = get_upscaler
        self._write_lock = threading.Lock()
        self._jobs: queue.Queue[object] = queue.Queue()
        self._cancel_lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._pending: dict[str, int] = {}  # ids of queued or running jobs (how many with that id)
        self._stopping = threading.Event()

    # --- output ------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> bool:
        """Write one protocol line; False (and stop serving) when the client has gone."""
        line = protocol.encode(message) + "\n"
        with self._write_lock:
            try:
                self._stdout.write(line)
                self._stdout.flush()
            except (BrokenPipeError, ValueError, OSError) as err:  # ValueError: write to a closed file
                if not self._stopping.is_set():
                    log.warning("client went away (%s); stopping", err)
                self._stop()
                return False
        return True

    def _send_error(self, job_id: str | None, item: str | None, exc: BaseException, *, with_traceback: bool) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if with_traceback else ""
        self.send(protocol.error(job_id, item, type(exc).__name__, str(exc) or type(exc).__name__, tb))

    # --- stdin -------------------------------------------------------------------------------

    def _stop(self) -> None:
        self._stopping.set()
        self._jobs.put(_STOP)

    def _is_cancelled(self, job_id: str) -> bool:
        if self._stopping.is_set():
            return True
        with self._cancel_lock:
            return job_id in self._cancelled

    def _lines(self):
        """Yield stdin's lines, each at most :data:`MAX_LINE_BYTES`; an over-long line yields None instead.

        With ``readline`` (a real stdin) an over-long line is never held whole: it is read on in chunks
        until its newline and dropped. An iterable without ``readline`` (a test's pipe) is checked per line.
        """
        readline = getattr(self._stdin, "readline", None)
        if readline is None:
            for raw in self._stdin:
                yield None if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES else raw
            return
        while True:
            raw = readline(MAX_LINE_BYTES + 2)  # room for the line's "\r\n"
            if not raw:
                return
            if len(raw.rstrip(b"\r\n")) <= MAX_LINE_BYTES:
                yield raw
                continue
            while not raw.endswith(b"\n"):  # skip the rest of the line
                raw = readline(_DISCARD_CHUNK)
                if not raw:
                    break
            yield None

    def _read_loop(self) -> None:
        try:
            for raw in self._lines():
                if raw is None:
                    log.warning("a request line longer than %d bytes was skipped", MAX_LINE_BYTES)
                    self._send_error(
                        None,
                        None,
                        ProtocolError(f"line is longer than {MAX_LINE_BYTES} bytes; it was skipped"),
                        with_traceback=False,
                    )
                    continue
                if not raw.strip():
                    continue
                try:
                    self._handle_line(raw)
                except Exception as err:  # noqa: BLE001 -- one bad line must never end the reader (and the worker)
                    log.exception("handling a request line failed")
                    self._send_error(None, None, err, with_traceback=True)
                if self._stopping.is_set():
                    return
            log.info("stdin closed; stopping")
        except OSError as err:
            log.warning("reading stdin failed (%s); stopping", err)
        finally:
            self._stop()

    def _enqueue(self, request: UpscaleRequest | TrainRequest) -> None:
        with self._cancel_lock:
            self._pending[request.id] = self._pending.get(request.id, 0) + 1
        self._jobs.put(request)

    def _finished(self, job_id: str) -> None:
        """Forget ``job_id`` (ran, failed or cancelled): a later job with that id starts uncancelled."""
        with self._cancel_lock:
            left = self._pending.get(job_id, 0) - 1
            if left > 0:
                self._pending[job_id] = left
            else:
                self._pending.pop(job_id, None)
                self._cancelled.discard(job_id)

    def _handle_line(self, raw: bytes) -> None:
        try:
            message = protocol.decode(raw)
        except ProtocolError as err:
            self._send_error(None, None, err, with_traceback=False)
            return
        kind = message["type"]
        msg_id = None if message.get("id") is None else str(message["id"])
        if kind == "upscale":
            try:
                request = protocol.parse_upscale(message)
            except ProtocolError as err:
                self._send_error(msg_id, None, err, with_traceback=False)
                if msg_id is not None:  # the client waits for the job's end
                    items = message.get("items")
                    self.send(protocol.done(msg_id, 0, len(items) if isinstance(items, list) else 0, False))
                return
            self._enqueue(request)
        elif kind == "train":
            try:
                train_request = protocol.parse_train(message)
            except ProtocolError as err:
                self._send_error(msg_id, None, err, with_traceback=False)
                if msg_id is not None:
                    self.send(protocol.done(msg_id, 0, 1, False))
                return
            self._enqueue(train_request)
        elif kind == "cancel":
            if msg_id is None:
                self._send_error(
                    None, None, ProtocolError("a cancel message needs the 'id' of the job"), with_traceback=False
                )
                return
            # Only a queued or running job is marked: a cancel for any other id (a job that just ended, a
            # typo) is logged and dropped, never kept to cancel a later job that reuses the id. No error
            # event: a cancel that crosses the job's ``done`` is a normal race, not a client mistake.
            with self._cancel_lock:
                known = msg_id in self._pending
                if known:
                    self._cancelled.add(msg_id)
            if known:
                log.info("job %s: cancel requested", msg_id)
            else:
                log.info("job %s: cancel ignored: no such job is queued or running", msg_id)
        elif kind == "ping":
            self.send({"type": "pong", "id": msg_id})
        elif kind == "models":
            self._send_models(msg_id)
        elif kind == "info":
            self._send_info(msg_id)
        elif kind == "shutdown":
            log.info("shutdown requested")
            self._stop()
        else:
            types = ", ".join(protocol.REQUEST_TYPES)
            self._send_error(
                msg_id,
                None,
                ProtocolError(f"unknown message type {kind!r} (this worker knows {types})"),
                with_traceback=False,
            )

    def _send_models(self, msg_id: str | None) -> None:
        from texup.weights.registry import list_models

        try:
            models = list_models()
        except (TexupError, OSError, ValueError) as err:
            self._send_error(msg_id, None, err, with_traceback=True)
            return
        self.send({"type": "models", "id": msg_id, "models": models})

    def _send_info(self, msg_id: str | None) -> None:
        try:
            details = machine_info(device=self._device, precision=self._precision)
        except (TexupError, OSError, ValueError, RuntimeError) as err:
            self._send_error(msg_id, None, err, with_traceback=True)
            return
        self.send(protocol.info(msg_id, **details))

    # --- jobs --------------------------------------------------------------------------------

    def serve(self) -> int:
        """Read stdin until ``shutdown`` or end of input, running jobs in order; return the exit code (0)."""
        reader = threading.Thread(target=self._read_loop, name="texup-worker-stdin", daemon=True)
        reader.start()
        while True:
            job = self._jobs.get()
            if job is _STOP or self._stopping.is_set():
                break
            if isinstance(job, TrainRequest):
                self.run_train(job)
            else:
                assert isinstance(job, UpscaleRequest)
                self.run_job(job)
            release_freed_memory()  # between jobs, Blender gets back what the job's tiles used
        return 0

    def _upscaler(self, request: UpscaleRequest) -> Any:
        if self._get_upscaler is None:
            from texup.api import get_upscaler
        else:
            get_upscaler = self._get_upscaler
        from texup.weights.registry import DEFAULT_MODEL

        opts = request.options
        device = self._device if opts.device == "auto" else opts.device
        precision = self._precision if opts.precision == "auto" else opts.precision
        choice = EngineChoice(engine=opts.engine, device=device, precision=precision, layout=opts.layout)
        kwargs: dict[str, Any] = {"choice": choice}
        if self._get_upscaler is None:  # the first use of a model may measure the engines: say so
            kwargs["status"] = lambda text: self.send(protocol.message(request.id, text))
        return get_upscaler(opts.model or DEFAULT_MODEL, **kwargs)

    def run_job(self, request: UpscaleRequest) -> None:
        """Upscale every item of ``request``; a failed item does not stop the others. Ends with ``done``."""

        job_id = request.id
        count = len(request.items)
        ok = failed = 0
        cancelled = self._is_cancelled(job_id)
        upscaler = None
        if not cancelled and count:
            try:
                upscaler = self._upscaler(request)
            except (TexupError, OSError, ValueError, RuntimeError) as err:
                log.error("job %s: cannot load the model: %s", job_id, err)
                # texup's own errors, bad values and file-system errors (they name the file) say what is wrong in one
                # line; anything else keeps its traceback
                self._send_error(
                    job_id, None, err, with_traceback=not isinstance(err, (TexupError, ValueError, OSError))
                )
                failed = count
        opts = request.options
        outputs = _Outputs(
            opts.model or _default_model(),
            engine=_engine_label(upscaler),
            warn=lambda line: log.warning("job %s: %s", job_id, line),
        )
        try:
            ok, failed, cancelled = self._run_items(job_id, request, upscaler, outputs, ok, failed, cancelled)
        finally:
            outputs.close()
        self._finished(job_id)
        self.send(protocol.done(job_id, ok, failed, cancelled))

    def _run_items(
        self,
        job_id: str,
        request: UpscaleRequest,
        upscaler: Any,
        outputs: _Outputs,
        ok: int,
        failed: int,
        cancelled: bool,
    ) -> tuple[int, int, bool]:
        from texup.imageio import chosen_dds_format
        from texup.inference.pipeline import Cancelled, options_from

        opts = request.options
        count = len(request.items)
        pending = deque(enumerate(request.items))
        held: deque[tuple[int, protocol.JobItem]] = deque()  # outputs another run sharing the folder is making
        while pending or held:
            if upscaler is None or cancelled:
                break
            if self._is_cancelled(job_id):
                cancelled = True
                break
            if not pending:  # only outputs other runs hold are left: ask again a little later
                time.sleep(CLAIM_POLL_S)
                pending, held = held, pending
                continue
            index, item = pending.popleft()
            try:
                options = options_from(  # the job's options, the item's role, TEXUP_DDS_FORMAT as the CLI reads it
                    asdict(opts), role=item.role, dds_format=chosen_dds_format()
                )
                if not self._run_item(job_id, upscaler, options, item, index, count, outputs):
                    held.append((index, item))
                    continue
            except Cancelled:
                cancelled = True
                break
            except (TexupError, ValueError) as err:  # a bad file or a value that does not fit it: one line
                log.error("job %s: %s", job_id, err)
                self._send_error(job_id, item.key, err, with_traceback=False)
                failed += 1
            except Exception as err:  # noqa: BLE001 -- reported to the client with its traceback; the job goes on
                log.exception("job %s: item %s failed", job_id, item.key)
                self._send_error(job_id, item.key, err, with_traceback=True)
                failed += 1
            else:
                ok += 1
        return ok, failed, cancelled

    def run_train(self, request: TrainRequest) -> None:
        """Fine-tune as ``request`` says (:func:`texup.training.train`); ends with ``done``.

        ``progress`` goes out at most every :data:`PROGRESS_INTERVAL_S` (and for the last step); a
        ``cancel`` stops the run after the current step, which still exports the model (``done`` says
        ``cancelled``). Settings that cannot work and unreadable data are ``error`` events, not crashes.
        """
        job_id = request.id
        ok = failed = 0
        cancelled = self._is_cancelled(job_id)
        if not cancelled:
            try:
                outcome = self._train(request)
            except (TexupError, OSError, ValueError, RuntimeError) as err:
                log.error("train %s: %s", job_id, err)
                # A FileError or an OSError names the file and the reason (a missing data folder, a full disk): the
                # traceback adds nothing for the user. A RuntimeError (torch) keeps it.
                self._send_error(
                    job_id, None, err, with_traceback=not isinstance(err, (FileError, ValueError, OSError))
                )
                failed = 1
            except Exception as err:  # noqa: BLE001 -- reported with its traceback; the worker serves on
                log.exception("train %s failed", job_id)
                self._send_error(job_id, None, err, with_traceback=True)
                failed = 1
            else:
                cancelled = outcome
                ok = 1
        self._finished(job_id)
        self.send(protocol.done(job_id, ok, failed, cancelled))

    def _train(self, request: TrainRequest) -> bool:
        """Run the training of ``request``, send its ``result``; return whether it was cancelled."""
        from texup.training.config import config_from_dict, load_config, with_overrides
        from texup.training.trainer import TrainEvent, train

        job_id = request.id
        if request.config_file is not None:
            base = load_config(request.config_file)
        else:
            base = config_from_dict(dict(request.config or {}))
        changes: dict[str, Any] = {
            "data.root": request.data_dir,
            "out_dir": request.out_dir,
            "steps": request.steps,
            "stage": request.stage,
        }
        if request.pretrained is not None:
            changes["generator.pretrained"] = request.pretrained
        device = self._device if request.device == "auto" else request.device
        precision = self._precision if request.precision == "auto" else request.precision
        if device != "auto":
            changes["device"] = device
        if precision != "auto":
            changes["precision"] = precision
        config = with_overrides(base, **changes)
        started = time.monotonic()
        first_step_at: float | None = None
        first_step = 0
        last_sent = 0.0

        def on_event(event: TrainEvent) -> None:
            nonlocal first_step_at, first_step, last_sent
            if event.kind == "message":
                log.info("train %s: %s", job_id, event.message)
                self.send(protocol.message(job_id, event.message))
                return
            if event.kind != "step":
                return
            now = time.monotonic()
            if first_step_at is None:  # the first step includes warm-up: time the rest from here
                first_step_at, first_step = now, event.step
            eta = None
            if event.step > first_step:
                eta = (now - first_step_at) / (event.step - first_step) * (event.total - event.step)
            if event.step in (1, event.total) or now - last_sent >= PROGRESS_INTERVAL_S:
                last_sent = now
                loss = event.values.get("loss_g", event.values.get("pixel"))
                self.send(protocol.train_progress(job_id, event.step, event.total, loss, eta))

        log.info(
            "train %s: %s -> %s (%s, %d steps)", job_id, request.data_dir, request.out_dir, request.stage, request.steps
        )
        outcome = train(config, progress=on_event, cancel=lambda: self._is_cancelled(job_id))
        if outcome.model_path is not None:
            self.send(
                protocol.train_result(
                    job_id,
                    str(outcome.model_path),
                    outcome.steps,
                    time.monotonic() - started,
                    outcome.initial_metrics.get("psnr"),
                    outcome.final_metrics.get("psnr"),
                )
            )
        return outcome.cancelled

    def _run_item(
        self,
        job_id: str,
        upscaler: Any,
        options: Any,
        item: protocol.JobItem,
        index: int,
        count: int,
        outputs: _Outputs,
    ) -> bool:
        """Make one item's output (or answer that it is up to date); False, with nothing done, while another run
        sharing the output folder holds it (:func:`texup.library.claim_output`): the caller asks again later."""
        from texup.imageio import probe_image
        from texup.library import REFUSED, UP_TO_DATE, Planned, WorkItem, judge, output_size_problem
        from texup.outputs import ManifestError

        for path in (item.src, item.dst):
            if not os.path.isabs(path) or ".." in Path(path).parts:
                raise FileError(path, "the worker needs an absolute path without '..' components")
        src, dst = Path(item.src), Path(item.dst)
        if not src.is_file():
            raise ImageReadError(src, "no such file" if not src.exists() else "not a file")
        if dst.exists() and src.resolve() == dst.resolve():
            raise FileError(dst, "the output would overwrite the input")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FileError(dst.parent, f"cannot create the output folder: {err.strerror or err}") from err
        # The manifest of the output's folder decides, as for `texup upscale`: an unchanged earlier output of the
        # same source, model, version and options is up to date; texup's own output is redone in place; a file
        # texup did not write is replaced only for an item with "overwrite": true.
        record, settings = outputs.folder(dst.parent, options, item.overwrite)
        verdict = judge(src, dst, settings, record)
        if verdict.refused is not None:
            raise FileError(
                dst,
                "the output exists and is not an unchanged earlier texup output; the worker replaces such a file "
                'only for an item with "overwrite": true',
            )
        scale = getattr(upscaler, "scale", None)  # a stand-in engine (tests, custom factories) may not say
        problem = None
        if verdict.reason != UP_TO_DATE and isinstance(scale, int):
            problem = output_size_problem(src, dst, options, scale)
        if problem is not None:  # refused before upscaling: the writer would refuse it only after the whole upscale
            raise FileError(src, problem)
        if verdict.reason == UP_TO_DATE:
            if verdict.refresh is not None:
                record.put(str(record.key(dst)), verdict.refresh)
            info = probe_image(dst)
            self.send(protocol.result(job_id, item.key, str(dst), info.width, info.height, 0.0, reason=UP_TO_DATE))
            return True
        # Claimed first, as texup upscale claims its outputs, so runs sharing the folder split the work. A run that
        # claims keeps a journal there, so claims start once the folder has texup's state: a job cancelled inside
        # its first tile in a new folder still leaves nothing behind.
        if outputs.claimant.active and record.state.is_dir() and not record.state.is_symlink():
            try:
                record.open_journal()
            except ManifestError as err:
                raise FileError(dst, f"{err}; nothing was upscaled") from None
        got = outputs.claimant.claim(
            record, Planned(WorkItem(src, Path()), dst, verdict.reason, verdict.source), settings
        )
        if got.held:
            return False
        if got.outcome == REFUSED:
            raise FileError(dst, str(got.refused))
        if got.planned is None:
            info = probe_image(dst)  # made by another run meanwhile
            self.send(protocol.result(job_id, item.key, str(dst), info.width, info.height, 0.0, reason=UP_TO_DATE))
            return True
        verdict = replace(verdict, reason=got.planned.reason, source=got.planned.source or verdict.source)
        try:
            self._make(job_id, upscaler, options, item, index, count, record, settings, verdict, outputs)
        except BaseException:
            key = record.key(dst)
            if key is not None:  # another run may try it
                record.release(key)
            raise
        return True

    def _make(
        self,
        job_id: str,
        upscaler: Any,
        options: Any,
        item: protocol.JobItem,
        index: int,
        count: int,
        record: Any,
        settings: Any,
        verdict: Any,
        outputs: _Outputs,
    ) -> None:
        """Upscale one claimed item into its output, journalled and recorded; send its ``result``."""
        from texup.imageio import format_for_path, probe_image
        from texup.library import commit_output, entry_for

        src, dst = Path(item.src), Path(item.dst)
        started = time.monotonic()
        last_sent = 0.0

        def on_tiles(done_tiles: float, total_tiles: int) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if done_tiles in (0, total_tiles) or now - last_sent >= PROGRESS_INTERVAL_S:
                last_sent = now
                whole = int(done_tiles)
                within = done_tiles - whole if done_tiles != whole else None
                self.send(protocol.progress(job_id, item.key, index, count, whole, total_tiles, within))

        log.info("job %s: %s -> %s (%s)", job_id, src, dst, verdict.reason)
        source = verdict.source or _source_state(src)
        entry = entry_for(settings, source, **outputs.extra, **({"origin": item.origin} if item.origin else {}))

        def fill(tmp: Path) -> None:
            upscaler.upscale_file(
                src,
                tmp,
                options,
                progress=on_tiles,
                cancel=lambda: self._is_cancelled(job_id),
                format=format_for_path(dst),
            )
            # The journal opens with the first finished output (its line is written as the rename comes): a job
            # cancelled or failed before that leaves no trace in the folder.
            record.open_journal()

        commit_output(record, dst, entry, fill)
        record.add(dst, **entry)
        info = probe_image(dst)
        self.send(
            protocol.result(
                job_id, item.key, str(dst), info.width, info.height, time.monotonic() - started, reason=verdict.reason
            )
        )


def _source_state(src: Path) -> dict[str, Any]:
    from texup.library import source_state

    try:
        return source_state(src)
    except OSError as err:
        raise ImageReadError(src, f"cannot read: {err.strerror or err}") from err


def _default_model() -> str:
    from texup.weights.registry import DEFAULT_MODEL

    return DEFAULT_MODEL


def _engine_label(upscaler: Any) -> str | None:
    engine = getattr(upscaler, "engine", None)
    if engine is None:
        return None
    return f"{engine.name} {upscaler.device} {upscaler.precision}"


class _Outputs:
    """The manifests (``.texup/outputs.json``) of the folders one job writes into, each opened once with a journal
    for the job's life, and what every entry records besides the source: the model's identity, its reference
    and files (so the add-on can tell by ``stat`` that an output is current without starting a worker), texup's
    version and the engine."""

    def __init__(self, model: str, *, engine: str | None, warn: Callable[[str], None] = log.warning) -> None:
        from texup.library import Claimant
        from texup.weights.ref import ModelRef

        self.model = model
        self.ref = ModelRef.of(model)
        self.extra: dict[str, Any] = {"model_ref": self.ref.manifest_ref()}
        if engine is not None:
            self.extra["engine"] = engine
        self._records: dict[Path, Any] = {}
        self._identity: str | None = None
        #: The job's claims (a folder whose lock cannot be taken: ``warn``, then outputs are made without claims).
        self.claimant = Claimant(warn)

    def folder(self, folder: Path, options: Any, overwrite: bool) -> tuple[Any, Any]:
        """The record of ``folder`` (opened and journalled on first use) and the Settings an item's entry is
        compared with."""
        import texup
        from texup.library import Settings, options_of
        from texup.outputs import OutputRecord

        record = self._records.get(folder)
        if record is None:
            record = OutputRecord(folder)
            self._records[folder] = record
        if self._identity is None:
            try:
                self._identity = self.ref.identity(record.file_hash)
                self.extra["model_files"] = self.ref.files_state()
            except OSError as err:
                raise FileError(self.model, f"cannot read the model's weights: {err.strerror or err}") from err
        settings = Settings(
            out_dir=folder,
            suffix="",
            fmt=None,
            model=self._identity,
            texup=texup.__version__,
            options=options_of(options),
            overwrite=overwrite,
        )
        return record, settings

    def close(self) -> None:
        for record in self._records.values():
            if not record.changed:
                continue  # nothing written or refreshed here: the folder stays as it was
            try:
                record.close()
            except OSError as err:  # the outputs are written; only their record could not be saved
                log.error("cannot save the output manifest in %s: %s", record.root, err)
        self._records.clear()


def machine_info(*, device: str = "auto", precision: str = "auto", model: str | None = None) -> dict[str, Any]:
    """The fields of an ``info`` event (:func:`texup.worker.protocol.info`) for this process and machine.

    Never imports torch when it is not installed; the auto pick is read from the engine measurements
    recorded for ``model`` (default: the default model) with this worker's default ``device`` and
    ``precision``, else the first candidate (what auto would try first; ``measured`` false).
    """
    import texup
    from texup.engines.select import cached_choice, candidates, devices_here, torch_available
    from texup.weights.registry import DEFAULT_MODEL

    found = candidates()
    model = model or DEFAULT_MODEL
    torch_version = None
    if torch_available():
        import torch

        torch_version = torch.__version__
    devices = devices_here()
    choice = cached_choice(model, device, precision)
    measured = choice is not None
    if choice is None:
        pool = [c for c in found if device == "auto" or c.device == device]
        choice = pool[0] if pool else None
    return {
        "texup_version": texup.__version__,
        "torch_version": torch_version,
        "python": sys.executable,
        "engines": [c.key for c in found],
        "devices": devices,
        "auto": {"key": None if choice is None else choice.key, "measured": measured, "model": model},
    }


def serve_stdio(*, device: str = "auto", precision: str = "auto") -> int:
    """Run the worker on this process's stdin/stdout; return the exit code.

    File descriptor 1 is duplicated for the protocol and then pointed at stderr, so anything else
    that writes to stdout (``print``, C libraries) lands in the log instead of the protocol stream.
    """
    import texup
    from texup.engines.select import candidates, check_device, torch_available

    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(proto_fd, "w", encoding="utf-8", newline="\n")
    server = WorkerServer(sys.stdin.buffer, out, device=device, precision=precision)
    try:
        picked = check_device(device)
        engines = [c.key for c in candidates()]
    except (ValueError, TexupError) as err:
        log.error("%s", err)
        server._send_error(None, None, err, with_traceback=False)
        return 2
    torch_version = None
    if torch_available():
        import torch

        torch_version = torch.__version__
    if not server.send(
        protocol.hello(
            texup_version=texup.__version__,
            torch_version=torch_version,
            device=picked,
            pid=os.getpid(),
            engines=engines,
        )
    ):
        return 1
    log.info(
        "texup worker %s ready (pid %d, torch %s, device %s, engines %s)",
        texup.__version__,
        os.getpid(),
        torch_version,
        picked,
        ", ".join(engines),
    )
    try:
        return server.serve()
    finally:
        try:
            out.close()
        except OSError as err:  # the client may already have closed its end
            log.debug("closing the protocol stream: %s", err)
