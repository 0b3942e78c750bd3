"""The one warm worker process of this Blender session (no bpy here).

The model stays loaded in the worker between jobs, so the worker is started once, on the first
upscale (spawned without waiting: the operator picks up its hello from its timer), and kept until the add-on is
disabled or Blender exits (``atexit``; the worker also exits
by itself when its stdin closes, i.e. when Blender dies).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping

from .bridge import bundle
from .bridge.bundle import WorkerLaunch
from .bridge.client import WorkerClient, WorkerStartError

_client: WorkerClient | None = None
_launch: WorkerLaunch | None = None
_ADDON_DIR = os.path.dirname(os.path.abspath(__file__))
_user_dir: str | None = None


def configure(user_dir: str | None) -> None:
    """Set the extension's user folder (where the PyTorch environment lives); called on register."""
    global _user_dir
    _user_dir = user_dir


def user_dir() -> str | None:
    """The extension's user folder set by :func:`configure` (``None`` for a legacy add-on or a script)."""
    return _user_dir


def resolve_launch(preference: str | None) -> WorkerLaunch:
    """How to start the worker (:func:`bridge.bundle.resolve_launch` with this add-on's folders).
    Raises :class:`WorkerStartError` with what to do when there is none."""
    return bundle.resolve_launch(preference, addon_dir=_ADDON_DIR, user_dir=_user_dir)


def resolve_python(preference: str | None) -> str:
    """The worker's Python from :func:`resolve_launch`. Raises :class:`WorkerStartError`."""
    return resolve_launch(preference).python


def ensure_worker(
    preference: str | None = None, *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> WorkerClient:
    """The worker client, spawned if there is none or it died; returns at once (never waits for it).

    The client may still be starting: poll :meth:`WorkerClient.check_ready` (from a timer) until it
    returns the hello; it raises :class:`WorkerStartError` (missing texup, version mismatch, no hello
    within ``timeout`` s), after which the next call here starts a new worker. A worker started another
    way than the one now resolved (another Python, the PyTorch environment installed since) is stopped
    and replaced. Raises :class:`WorkerStartError` at once when no worker can be found or it does not exist.
    """
    global _client, _launch
    launch = resolve_launch(preference)
    if (
        _client is not None
        and _client.alive
        and not _client.start_failed
        and _launch is not None
        and os.path.abspath(_launch.python) == os.path.abspath(launch.python)
        and _launch.env == launch.env
    ):
        return _client
    stop_worker()
    client = WorkerClient(launch.python, env={**os.environ, **launch.env, **(env or {})})
    client.spawn(timeout=timeout)
    _client, _launch = client, launch
    return client


def get_client(
    preference: str | None = None, *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> WorkerClient:
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


def current_client() -> WorkerClient | None:
    """The worker client if one was started (alive or not), else ``None``."""
    return _client


def stop_worker() -> None:
    """Stop the worker if one runs (safe to call any time, also more than once)."""
    global _client
    client, _client = _client, None
    if client is not None:
        client.stop(timeout=5.0)


atexit.register(stop_worker)
