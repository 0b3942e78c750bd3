"""Start and talk to the texup worker process from Blender, without ever blocking Blender's UI.

:class:`WorkerClient` spawns ``<python> -m texup worker`` (:meth:`WorkerClient.spawn` returns at once;
:meth:`WorkerClient.check_ready`, called from a timer, picks up the worker's ``hello`` and checks the
protocol version; :meth:`WorkerClient.start` is the blocking pair for scripts), and then exchanges JSON
lines. A reader thread parses the worker's stdout onto a queue, so
:meth:`WorkerClient.poll` (called from a modal operator's timer) returns at once. A second thread
drains stderr (the worker's log) into a bounded tail and, optionally, a log file. When the process ends
without :meth:`WorkerClient.stop`, :meth:`poll` yields a :class:`Crashed` event with the exit code and
the log's tail. Stdlib only: no bpy, no torch, no texup.
"""

from __future__ import annotations

import collections
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from .worker_protocol import (
    PROTOCOL_VERSION,
    Crashed,
    Done,
    Error,
    Event,
    Hello,
    Job,
    ProtocolError,
    TrainJob,
    cancel_message,
    encode,
    info_message,
    models_message,
    parse_event,
    ping_message,
    shutdown_message,
    train_message,
    upscale_message,
)

ENV_PYTHON = "TEXUP_PYTHON"
"""Environment variable naming the Python (with torch and texup) that runs the worker."""

SETTING_HINT = "choose another Python as 'Worker Python' in the texup add-on preferences"
"""The end of every "no usable worker" message: what to change. The headless script replaces it with its
``--worker-python`` flag, so each front end names its own setting."""
STDERR_TAIL_LINES = 200

_NO_TEXUP = re.compile(r"No module named '?texup'?$", re.MULTILINE)


class WorkerStartError(RuntimeError):
    """The worker could not be started; ``str(err)`` says why and what to do, in one or two sentences."""


class WorkerError(RuntimeError):
    """A message could not be sent: the worker is not running (any more)."""


# --- finding the worker's Python ---------------------------------------------------------------


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _python_in_folder(folder: str) -> str | None:
    """The interpreter of a virtual environment / Python installation folder, if there is one."""
    for rel in (
        ("bin", "python3"),
        ("bin", "python"),
        ("Scripts", "python.exe"),
        ("python.exe",),
        ("python3",),
        ("python",),
    ):
        candidate = os.path.join(folder, *rel)
        if _is_executable(candidate):
            return candidate
    return None


def _python_of_script(script: str) -> str | None:
    """The interpreter a console script (``texup``) runs with: its shebang, else the Python beside it."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(1024).decode("utf-8", errors="replace")
    except OSError:
        head = ""
    lines = head.splitlines()
    if lines and lines[0].startswith("#!"):
        shebang = lines[0][2:].strip()
        if shebang.startswith("/bin/sh") and len(lines) > 1:
            # pip's form for long or spaced paths: '''exec' "/path/to/python" "$0" "$@"
            match = re.search(r"exec' \"?([^\"]+?)\"? \"\$0\"", lines[1])
            if match and _is_executable(match.group(1)):
                return match.group(1)
        else:
            parts = shebang.split()
            if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
                found = shutil.which(parts[1])
                if found:
                    return found
            elif parts and _is_executable(parts[0]):
                return parts[0]
    folder = os.path.dirname(os.path.abspath(script))
    beside = _python_in_folder(folder)
    if beside is not None:
        return beside
    return _python_in_folder(os.path.dirname(folder))  # Windows: <env>\Scripts\texup.exe, <env>\python.exe


def find_worker_python(
    preference: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    search_path: bool = True,
) -> str | None:
    """The Python to run the worker with, or ``None`` when none can be found.

    In order: ``preference`` (the add-on's preference: a Python executable, a virtual environment
    folder, or a ``texup`` script; returned even when it does not exist, so that starting the worker
    says what is wrong with the user's own setting), the ``TEXUP_PYTHON`` environment variable, then a
    ``texup`` command on PATH (the interpreter from its shebang, or the Python next to it; skipped when
    ``search_path`` is false).
    """
    environ = os.environ if environ is None else environ
    for value in (preference, environ.get(ENV_PYTHON)):
        if value and value.strip():
            value = value.strip()
            if os.sep not in value and "/" not in value and not os.path.exists(value):
                found = which(value)  # a bare command name such as "python3.11"
                if found:
                    return found
            path = os.path.abspath(os.path.expanduser(value))
            if os.path.isdir(path):
                return _python_in_folder(path) or path
            if os.path.basename(path).lower() in ("texup", "texup.exe") and os.path.isfile(path):
                return _python_of_script(path) or path
            return path
    script = which("texup") if search_path else None
    if script:
        return _python_of_script(script)
    return None


# --- the client --------------------------------------------------------------------------------


class WorkerClient:
    """One worker process and the pipes to it.

    ``python``: the interpreter (with torch and texup) to run; ``args``: what follows it on the
    command line; ``env``: the environment (default: this process's, without ``PYTHONHOME``, which
    belongs to Blender's own Python); ``cwd``: the worker's working folder; ``log_path``: append the
    worker's stderr to this file as well as keeping its last lines in memory.

    Not thread-safe for callers: use it from one thread (Blender's main thread).
    """

    def __init__(
        self,
        python: str,
        *,
        args: Sequence[str] = ("-m", "texup", "worker"),
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str | None = None,
    ) -> None:
        self.python = python
        self.args = tuple(args)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path
        self.hello: Hello | None = None
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._tail_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stderr_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending: set[str] = set()
        self._early: list[Event] = []  # read by check_ready() before/with the hello, handed out by poll()
        self._start_error: str | None = None
        self._start_timeout = 0.0
        self._ready_deadline = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ) if self.env is None else dict(self.env)
        env.pop("PYTHONHOME", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        return env

    def start(self, timeout: float = 60.0) -> Hello:
        """Spawn the worker and wait (up to ``timeout`` seconds) for its ``hello``; return it.

        The blocking form of :meth:`spawn` + :meth:`check_ready`, for scripts and ``blender -b``.
        Raises :class:`WorkerStartError` like those two.
        """
        self.spawn(timeout=timeout)
        while True:
            hello = self.check_ready(wait=0.1)
            if hello is not None:
                return hello

    def spawn(self, timeout: float = 60.0) -> None:
        """Start the worker process and return at once, without waiting for its ``hello``.

        Raises :class:`WorkerStartError` at once when the Python is missing or not executable or cannot
        be run. Then call :meth:`check_ready` (from a timer) until it returns the ``hello``; it raises
        when the worker has not said hello ``timeout`` seconds after this call.
        """
        if self._proc is not None:
            raise WorkerStartError("this worker client was already started; make a new one")
        python = self.python
        if not python or not os.path.exists(python):
            raise WorkerStartError(f"the worker Python {python!r} does not exist: {SETTING_HINT}")
        if os.path.isdir(python) or not os.access(python, os.X_OK):
            raise WorkerStartError(f"the worker Python {python} is not an executable program: {SETTING_HINT}")
        creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        try:
            self._proc = subprocess.Popen(
                [python, *self.args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environment(),
                cwd=self.cwd,
                creationflags=creationflags,
                bufsize=0,
            )
        except OSError as err:
            raise WorkerStartError(f"could not run the worker Python {python}: {err.strerror or err}") from err
        self._start_timeout = timeout
        self._ready_deadline = time.monotonic() + timeout
        self._stderr_thread = threading.Thread(target=self._read_stderr, name="texup-client-stderr", daemon=True)
        stdout_thread = threading.Thread(target=self._read_stdout, name="texup-client-stdout", daemon=True)
        self._threads = [stdout_thread, self._stderr_thread]
        self._stderr_thread.start()
        stdout_thread.start()

    @property
    def start_failed(self) -> bool:
        """True when :meth:`check_ready` raised: this client is done; make a new one."""
        return self._start_error is not None

    @property
    def ready(self) -> bool:
        """True once the worker said hello with this add-on's protocol version (jobs can be submitted)."""
        return self.hello is not None

    def check_ready(self, wait: float = 0.0) -> Hello | None:
        """The worker's ``hello`` once it has arrived, else ``None`` (still starting); never blocks with ``wait`` 0.

        ``wait`` > 0 waits up to that long for the next message. Raises :class:`WorkerStartError` (after
        stopping the process) when the worker exited before saying hello (no texup in that Python, an
        unusable ``--device``, ...), speaks another protocol version, or has not said hello within the
        ``timeout`` given to :meth:`spawn`. Messages that came before the hello are kept for :meth:`poll`.
        """
        if self.hello is not None:
            return self.hello
        if self._proc is None:
            raise WorkerStartError("the texup worker has not been started")
        if self._start_error is not None:
            raise WorkerStartError(self._start_error)
        try:
            first = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
        except queue.Empty:
            first = None
        pending = [first] if first is not None else []
        while True:
            try:
                pending.append(self._events.get_nowait())
            except queue.Empty:
                break
        for index, event in enumerate(pending):
            if isinstance(event, Hello):
                self._early.extend(pending[index + 1 :])  # after the hello: poll() returns them in order
                if event.protocol != PROTOCOL_VERSION:
                    self._fail_start(
                        f"the worker at {self.python} speaks protocol {event.protocol} (texup {event.texup}) but "
                        f"this add-on speaks protocol {PROTOCOL_VERSION}: install matching versions of texup "
                        "and the add-on"
                    )
                self.hello = event
                return event
            if isinstance(event, Crashed):
                reasons = [e.message for e in self._early if isinstance(e, Error) and e.message]
                self._fail_start(self._start_failure(event, reasons), stop=False)
            self._early.append(event)  # e.g. an error about --device: named if it exits, else kept for poll()
        if time.monotonic() >= self._ready_deadline:
            tail = self._tail_suffix()
            self._fail_start(f"the worker ({self.python}) did not get ready within {self._start_timeout:g} s{tail}")
        return None

    def _fail_start(self, message: str, *, stop: bool = True) -> None:
        """Remember why the start failed (later calls say the same), stop the process, raise."""
        self._start_error = message
        if stop:
            self.stop(timeout=1.0)
        else:
            self._stopping.set()
        self._early.clear()
        raise WorkerStartError(message)

    def _start_failure(self, crashed: Crashed, reasons: Sequence[str] = ()) -> str:
        if _NO_TEXUP.search(crashed.stderr_tail):
            return (
                f'the Python at {self.python} has no texup: install it there (`"{self.python}" -m pip install '
                f"PATH/TO/texup`, the source folder) or {SETTING_HINT}"
            )
        said = (": " + "; ".join(reasons)) if reasons else self._tail_suffix(crashed.stderr_tail)
        return f"the worker ({self.python}) exited with code {crashed.returncode} before it was ready{said}"

    def _tail_suffix(self, tail: str | None = None) -> str:
        tail = self.stderr_tail(5) if tail is None else tail
        lines = [line for line in tail.splitlines() if line.strip()][-5:]
        return (": " + " | ".join(line.strip() for line in lines)) if lines else ""

    @property
    def alive(self) -> bool:
        """True while the worker process runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def busy(self) -> bool:
        """True while a submitted job has not reported ``done`` through :meth:`poll`."""
        return bool(self._pending)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the worker to shut down; terminate, then kill it if it has not exited within ``timeout``.

        Safe to call more than once and on a worker that already died. Returns the exit code.
        """
        self._stopping.set()
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                self._write(shutdown_message())
            except WorkerError:
                pass  # the pipe is already closed: terminate below does the rest
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass  # closing a broken pipe: the worker is gone already
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._pending.clear()
        return proc.returncode

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- sending ------------------------------------------------------------------------------

    def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise WorkerError("the texup worker has not been started")
        data = encode(message)
        with self._write_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError) as err:
                raise WorkerError(f"the texup worker is not running (exit code {proc.poll()})") from err

    def submit(self, job: Job) -> str:
        """Send an upscale job; return its id (``job.id`` or a new one). Events about it arrive via :meth:`poll`.

        Raises :class:`ProtocolError` for an invalid job, :class:`WorkerError` when the worker is gone.
        """
        job_id = job.id or uuid.uuid4().hex
        return self._send_job(job_id, upscale_message(job_id, job))

    def submit_train(self, job: TrainJob) -> str:
        """Send a fine-tuning job; return its id (``job.id`` or a new one). Its progress (``item``
        "train"), result (the model file), errors and done arrive via :meth:`poll`.

        Raises :class:`ProtocolError` for an invalid job, :class:`WorkerError` when the worker is gone.
        """
        job_id = job.id or uuid.uuid4().hex
        return self._send_job(job_id, train_message(job_id, job))

    def _send_job(self, job_id: str, message: dict[str, Any]) -> str:
        """Send a job message (already validated by its builder) to a ready, running worker."""
        if not self.ready:
            raise WorkerError("the texup worker is still starting: wait until check_ready() returns its hello")
        if not self.alive:
            raise WorkerError("the texup worker is not running")
        self._write(message)
        self._pending.add(job_id)
        return job_id

    def cancel(self, job_id: str) -> None:
        """Ask the worker to stop ``job_id`` at its next tile; its ``done`` event says ``cancelled``."""
        self._write(cancel_message(job_id))

    def ping(self) -> str:
        request_id = uuid.uuid4().hex
        self._write(ping_message(request_id))
        return request_id

    def request_info(self) -> str:
        """Ask for the worker's versions, engines and devices; an :class:`Info` event with this id answers."""
        request_id = uuid.uuid4().hex
        self._write(info_message(request_id))
        return request_id

    def request_models(self) -> str:
        """Ask for the worker's known models; a :class:`Models` event with this id answers."""
        request_id = uuid.uuid4().hex
        self._write(models_message(request_id))
        return request_id

    # --- receiving ----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Events received since the last call, oldest first.

        With ``timeout`` 0 (the default) this never waits: call it from a timer on Blender's main thread.
        A positive ``timeout`` waits up to that long for the first event (headless scripts, tests).
        """
        events: list[Event] = self._early
        self._early = []
        if events:
            timeout = 0.0
        try:
            events.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass  # nothing (more) to read
        for event in events:
            if isinstance(event, Done):
                self._pending.discard(event.id)
            elif isinstance(event, Crashed):
                self._pending.clear()
        return events

    def stderr_tail(self, lines: int = 20) -> str:
        """The worker's last ``lines`` lines of log output."""
        with self._tail_lock:
            return "\n".join(list(self._stderr_tail)[-lines:])

    # --- threads ------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        stream: IO[bytes] = proc.stdout
        for raw in iter(stream.readline, b""):
            if not raw.strip():
                continue
            try:
                event = parse_event(raw)
            except ProtocolError as err:
                event = Error(id=None, item=None, kind="ProtocolError", message=str(err))
            self._events.put(event)
        stream.close()
        returncode = proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2.0)  # let the stderr reader catch the last words
        if not self._stopping.is_set():
            self._events.put(Crashed(returncode=returncode, stderr_tail=self.stderr_tail(40)))

    def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        log_file: IO[str] | None = None
        if self.log_path:
            try:
                log_file = open(self.log_path, "a", encoding="utf-8")
            except OSError as err:
                with self._tail_lock:
                    self._stderr_tail.append(f"[texup add-on] cannot open the log file {self.log_path}: {err}")
        try:
            for raw in iter(proc.stderr.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._tail_lock:
                    self._stderr_tail.append(line)
                if log_file is not None:
                    log_file.write(line + "\n")
                    log_file.flush()
        finally:
            proc.stderr.close()
            if log_file is not None:
                log_file.close()
