"""The add-on's bpy-free core: the worker protocol and client, output naming and job building.

Nothing in this package imports bpy, torch or texup; it is tested with plain pytest and runs inside
Blender's Python (3.10+).
"""

from __future__ import annotations

from .client import WorkerClient, WorkerError, WorkerStartError, find_worker_python
from .worker_protocol import PROTOCOL_VERSION, Job, JobItem, JobOptions, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Job",
    "JobItem",
    "JobOptions",
    "ProtocolError",
    "WorkerClient",
    "WorkerError",
    "WorkerStartError",
    "find_worker_python",
]
