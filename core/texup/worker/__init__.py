"""``texup worker``: a long-lived process that upscales jobs sent as JSON lines (see :mod:`.protocol`).

The Blender add-on starts it with ``python -m texup worker`` in the Python environment that has torch,
so Blender itself never imports torch.
"""

from __future__ import annotations

from texup.worker.protocol import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "ProtocolError"]
