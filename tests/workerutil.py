"""Helpers for tests that drive a worker (real or fake) through the add-on's WorkerClient."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def collect(client: Any, until: Callable[[Any], bool], timeout: float = 20.0) -> list:
    """Poll ``client`` until ``until(event)`` is true for some event; return every event seen (that one last)."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll(timeout=0.2):
            seen.append(event)
            if until(event):
                return seen
    raise AssertionError(f"timed out; events so far: {seen}")
