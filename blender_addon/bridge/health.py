"""Is the worker really there? Start it, read its hello, ask for ``info``, stop it (stdlib only).

:func:`check_worker` is the one honest answer to "does this Python run texup?": a path string that
exists proves nothing, so the check spawns ``<python> -m texup worker`` exactly as an upscale would
(with the launch's extra environment), waits for the hello (protocol version checked by the client),
asks for the ``info`` event (versions, engines, devices with names, what auto picks) and stops it.
Every failure becomes ``HealthReport.ok`` False with a one-line ``error``; nothing raises.

:class:`HealthCheck` runs that on a background thread for the add-on: the UI starts it, reads
``running`` and ``result`` when it draws, and never waits. :func:`status_lines` turns the state into
the one or two lines the preferences and the panel show (icon names are Blender's; no bpy here).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .client import WorkerClient, WorkerError, WorkerStartError
from .text_fit import wrap_lines
from .worker_protocol import Crashed, DeviceInfo, Error, Info

DEFAULT_TIMEOUT = 90.0
"""Seconds a check waits for the hello and the info together (importing torch and probing CUDA/Vulkan
can take a while on a cold start)."""


@dataclass(frozen=True)
class HealthReport:
    """What one check found. ``ok`` only when a worker said hello in this add-on's protocol and answered.

    ``python``/``source``/``description``: the launch that was checked (``python`` empty when none could
    be resolved). ``torch`` is ``None`` without PyTorch. ``auto``: the candidate key auto uses
    (``engine/device/precision``), ``auto_measured`` whether it was timed here. ``error``: one line, set
    when ``ok`` is False (or a note, e.g. an older texup that cannot describe its devices). ``seconds``:
    how long the check took.
    """

    ok: bool
    python: str = ""
    source: str = ""
    description: str = ""
    texup: str | None = None
    torch: str | None = None
    engines: tuple[str, ...] = ()
    devices: tuple[DeviceInfo, ...] = ()
    auto: str | None = None
    auto_measured: bool = False
    error: str = ""
    seconds: float = 0.0
    checked_at: float = field(default_factory=time.time)

    def device(self, key: str) -> DeviceInfo | None:
        """The device called ``key`` ("cpu", "vulkan:0", ...), if the worker has it."""
        return next((d for d in self.devices if d.key == key), None)

    @property
    def auto_device(self) -> DeviceInfo | None:
        """The device of the auto pick."""
        if not self.auto:
            return None
        parts = self.auto.split("/")
        return self.device(parts[1]) if len(parts) > 1 else None


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (whitespace collapsed), cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _clean_torch(value: str | None) -> str | None:
    """The hello's torch field as the add-on parses it ("None"/"?" when the worker had none)."""
    return None if value in (None, "", "None", "?") else value


def check_worker(
    launch: Any, timeout: float = DEFAULT_TIMEOUT, *, environ: Mapping[str, str] | None = None
) -> HealthReport:
    """Start the worker ``launch`` describes (``python``, ``env``, ``source``, ``description``: a
    :class:`bridge.bundle.WorkerLaunch`), read its hello and ``info``, stop it; never raises.

    ``environ`` (default this process's) is the environment the launch's ``env`` is added to.
    Waits at most ``timeout`` seconds in all. A missing path, a Python without texup, a worker of
    another protocol version, one that crashes or stays silent: ``ok`` False, ``error`` one line.
    """
    started = time.monotonic()
    deadline = started + timeout
    python = str(getattr(launch, "python", "") or "")
    env = {**(os.environ if environ is None else environ), **dict(getattr(launch, "env", None) or {})}
    base = HealthReport(
        ok=False,
        python=python,
        source=str(getattr(launch, "source", "") or ""),
        description=str(getattr(launch, "description", "") or ""),
    )

    def failed(reason: str) -> HealthReport:
        return replace(base, error=one_line(reason), seconds=time.monotonic() - started)

    client = WorkerClient(python, env=env)
    try:
        client.spawn(timeout=timeout)
        hello = None
        while hello is None:
            hello = client.check_ready(wait=0.1)
        request_id = client.request_info()
        while time.monotonic() < deadline:
            for event in client.poll(timeout=0.2):
                if isinstance(event, Info) and event.id == request_id:
                    return replace(
                        base,
                        ok=True,
                        texup=event.texup,
                        torch=event.torch,
                        engines=event.engines,
                        devices=event.devices,
                        auto=event.auto,
                        auto_measured=event.auto_measured,
                        seconds=time.monotonic() - started,
                    )
                if isinstance(event, Error) and event.id == request_id:
                    if "unknown message type" in event.message:
                        # A working texup from before the info request: it runs, it just cannot say more.
                        return replace(
                            base,
                            ok=True,
                            texup=hello.texup,
                            torch=_clean_torch(hello.torch),
                            error=f"texup {hello.texup} cannot list its devices (older than this add-on)",
                            seconds=time.monotonic() - started,
                        )
                    return failed(f"the worker at {python} could not describe itself: {event.message}")
                if isinstance(event, Crashed):
                    return failed(event.message)
        return failed(f"the worker at {python} said hello but did not answer within {timeout:g} s")
    except (WorkerStartError, WorkerError) as err:
        return failed(str(err))
    except OSError as err:  # a pipe that broke under us: the worker is gone
        return failed(f"the worker at {python} failed: {err}")
    finally:
        client.stop(timeout=2.0)


class HealthCheck:
    """One background check at a time, and the last result, for the add-on's UI (no bpy).

    ``start(resolve)`` runs ``resolve()`` (returns a launch; may raise :class:`WorkerStartError`, e.g. no
    worker found) and :func:`check_worker` on a daemon thread, and returns at once. ``result`` is the
    last finished report (``None``: never checked); ``running`` tells whether one is under way;
    ``generation`` counts finished checks, so a timer can see that a new result arrived. ``forget``
    drops the result (the setting it was for changed), so the UI says "not checked" again.
    """

    def __init__(self, check: Callable[..., HealthReport] = check_worker) -> None:
        self._check = check
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._result: HealthReport | None = None
        self._token = 0
        self.generation = 0
        self.requested = False  # a check was started at least once (the UI's "first time shown")

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    @property
    def result(self) -> HealthReport | None:
        with self._lock:
            return self._result

    def start(self, resolve: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Start a check in the background; False (nothing started) when one is already running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self.requested = True
            self._token += 1
            token = self._token
            thread = threading.Thread(
                target=self._run, args=(resolve, timeout, token), name="texup-health", daemon=True
            )
            self._thread = thread
        thread.start()
        return True

    def wait(self, timeout: float | None = None) -> HealthReport | None:
        """Block until the running check ends (scripts and tests; never from Blender's UI)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.result

    def forget(self) -> None:
        """Drop the last result (and the one a running check would deliver): the UI shows "not checked"."""
        with self._lock:
            self._result = None
            self._token += 1
            self.requested = False
            self.generation += 1

    def _run(self, resolve: Callable[[], Any], timeout: float, token: int) -> None:
        started = time.monotonic()
        try:
            launch = resolve()
        except WorkerStartError as err:
            report = HealthReport(ok=False, error=one_line(str(err)), seconds=time.monotonic() - started)
        else:
            report = self._check(launch, timeout)
        with self._lock:
            if token == self._token:  # not forgotten meanwhile
                self._result = report
            self.generation += 1


# --- what the UI shows -----------------------------------------------------------------------------


def _device_label(device: DeviceInfo) -> str:
    software = ", software" if device.software else ""
    return f"{device.key} {device.name}{software}"


def status_lines(report: HealthReport | None, running: bool = False) -> list[tuple[str, str]]:
    """``(icon, text)`` lines for the worker's state: at most three, each one line.

    ``CHECKMARK`` only for a worker that answered; "not checked" before any check (never a tick).
    """
    if running:
        return [("SORTTIME", "Worker: checking…")]
    if report is None:
        return [("QUESTION", "Worker: not checked")]
    if not report.ok:
        return [("ERROR", f"Worker: {report.error}")]
    torch = f"PyTorch {report.torch}" if report.torch else "no PyTorch"
    lines = [("CHECKMARK", f"Worker: texup {report.texup}, {torch} ({report.seconds:.1f} s)")]
    if report.description or report.python:
        lines.append(("BLANK1", report.description or report.python))
    if report.auto:
        device = report.auto_device
        named = f" on {device.name}" if device is not None else ""
        how = "measured fastest" if report.auto_measured else "first choice until measured"
        lines.append(("INFO", f"Auto: {report.auto}{named} ({how})"))
    elif report.error:
        lines.append(("INFO", report.error))
    elif not report.engines:
        lines.append(("ERROR", "No engine can run in this worker (neither ncnn nor PyTorch imports)"))
    return lines


def _wrap(text: str, width: float, lines: int | None, measure: Callable[[str], float] = len) -> list[str]:
    """``text`` in at most ``lines`` pieces of at most ``width`` (characters, or what ``measure`` says),
    broken at spaces where possible; a cut ends in "…"."""
    return wrap_lines(one_line(text), width, max_lines=lines, measure=measure)


FIX_MARK = "Worker Python"
"""What the fix of every "no usable worker" message names (:data:`client.SETTING_HINT` and the others)."""
DEFAULT_FIX = "set 'Worker Python' in the texup add-on preferences, then Check Again"


def split_fix(error: str) -> tuple[str, str]:
    """``(problem, fix)`` of a worker error: the fix is the clause that names the Worker Python setting
    (from the ``: ``, ``; ``, ``. `` or `` or `` before it to the end), the problem the rest; an error that
    names no fix gets :data:`DEFAULT_FIX`. The fix starts with a capital letter."""
    text = one_line(error)
    mark = text.find(FIX_MARK)
    if mark < 0:
        return text, DEFAULT_FIX[0].upper() + DEFAULT_FIX[1:]
    start, cut = 0, 0
    for separator in (": ", "; ", ". ", " or "):
        found = text.rfind(separator, 0, mark)
        if found >= 0 and found + len(separator) > start:
            start, cut = found + len(separator), found
    problem = text[:cut].rstrip(" .;:,") if start else ""
    fix = text[start:].strip()
    return problem, fix[:1].upper() + fix[1:]


def compact_status_lines(
    report: HealthReport | None,
    running: bool = False,
    width: float = 30,
    *,
    measure: Callable[[str], float] = len,
    problem_lines: int | None = None,
) -> list[tuple[str, str]]:
    """The panel's short form of :func:`status_lines`, each line at most ``width`` (characters, or pixels
    with a pixel ``measure``): what runs and what auto picks. A failed check: "Worker not working:", the
    problem over at most ``problem_lines`` lines (default: what four lines leave beside the fix, at least
    one), then the fix (":func:`split_fix`") whole, over as many lines as it needs -- never cut. Same rule
    as :func:`status_lines`: a tick only after a worker answered."""
    if running or report is None:
        return [
            (icon, piece) for icon, text in status_lines(report, running) for piece in _wrap(text, width, 1, measure)
        ]
    if not report.ok:
        problem, fix = split_fix(report.error)
        fix_lines = _wrap(f"Fix: {fix}", width, None, measure)
        budget = problem_lines if problem_lines is not None else max(1, 4 - len(fix_lines))
        lines = [("ERROR", "Worker not working:")]
        lines += [("BLANK1", piece) for piece in _wrap(problem, width, budget, measure)]
        lines += [("PREFERENCES" if i == 0 else "BLANK1", piece) for i, piece in enumerate(fix_lines)]
        return lines
    lines = [
        ("CHECKMARK", _wrap(f"Worker: texup {report.texup}", width, 1, measure)[0]),
        (
            "BLANK1",
            _wrap(f"PyTorch {report.torch}" if report.torch else "no PyTorch (ncnn engine)", width, 1, measure)[0],
        ),
    ]
    if report.auto:
        engine, _, rest = report.auto.partition("/")
        device_key = rest.split("/")[0] if rest else ""
        device = report.auto_device
        where = "CPU" if device_key == "cpu" else (device.name if device is not None else device_key)
        lines.append(("INFO", _wrap(f"Auto: {engine} on {where}", width, 1, measure)[0]))
    return lines


def upscale_blocked_reason(report: HealthReport | None, running: bool = False) -> str | None:
    """Why Upscale cannot run now (the operator's greyed-out tooltip), or ``None``: only a finished check
    that found no working worker blocks it (not checked yet, or a check under way, does not)."""
    if running or report is None or report.ok:
        return None
    problem, fix = split_fix(report.error)
    return f"The texup worker does not work ({problem or 'see the panel'}). Fix: {fix}"


def device_lines(report: HealthReport | None) -> list[str]:
    """One line per device of a successful check ("cpu AMD EPYC 7B13: ncnn, torch")."""
    if report is None or not report.ok:
        return []
    return [f"{_device_label(d)}: {', '.join(d.engines) or 'no engine'}" for d in report.devices]
