"""The one warm worker process of this Blender session (no bpy here).

The model stays loaded in the worker between jobs, so the worker is started once, on the first
upscale (spawned without waiting: the operator picks up its hello from its timer), and kept until the add-on is disabled or Blender exits (``atexit``; the worker also exits
by itself when its stdin closes, i.e. when Blender dies).
"""

from __future__ import annotations

import atexit
import os
from typing import Mapping, Optional

from .bridge.client import WorkerClient, WorkerStartError, find_worker_python

_client: Optional[WorkerClient] = None


def resolve_python(preference: Optional[str]) -> str:
    """The worker Python from the preference, ``TEXUP_PYTHON`` or a ``texup`` on PATH.

    Raises :class:`WorkerStartError` with what to do when none is found.
    """
    python = find_worker_python(preference or None)
    if python is None:
        raise WorkerStartError(
            "no Python with texup found: set 'Worker Python' in the texup add-on preferences to the python "
            "of an environment where `pip install texup` was run (or set TEXUP_PYTHON)")
    return python


def ensure_worker(preference: Optional[str] = None, *, env: Optional[Mapping[str, str]] = None,
                  timeout: float = 120.0) -> WorkerClient:
    """The worker client, spawned if there is none or it died; returns at once (never waits for it).

    The client may still be starting: poll :meth:`WorkerClient.check_ready` (from a timer) until it
    returns the hello; it raises :class:`WorkerStartError` (missing texup, version mismatch, no hello
    within ``timeout`` s), after which the next call here starts a new worker. A worker for another
    Python than the one now configured is stopped and replaced. Raises :class:`WorkerStartError` at
    once when no worker Python is configured or it does not exist.
    """
    global _client
    python = resolve_python(preference)
    if (_client is not None and _client.alive and not _client.start_failed
            and os.path.abspath(_client.python) == os.path.abspath(python)):
        return _client
    stop_worker()
    client = WorkerClient(python, env=env)
    client.spawn(timeout=timeout)
    _client = client
    return client


def get_client(preference: Optional[str] = None, *, env: Optional[Mapping[str, str]] = None,
               timeout: float = 120.0) -> WorkerClient:
    """The running worker client, started and waited for (blocking, up to ``timeout`` s) if needed.

    For scripts and background mode; the modal operator uses :func:`ensure_worker` instead.
    """
    client = ensure_worker(preference, env=env, timeout=timeout)
    try:
        while client.check_ready(wait=0.1) is None:
            pass
    except WorkerStartError:
        stop_worker()
        raise
    return client


def current_client() -> Optional[WorkerClient]:
    """The worker client if one was started (alive or not), else ``None``."""
    return _client


def stop_worker() -> None:
    """Stop the worker if one runs (safe to call any time, also more than once)."""
    global _client
    client, _client = _client, None
    if client is not None:
        client.stop(timeout=5.0)


atexit.register(stop_worker)
