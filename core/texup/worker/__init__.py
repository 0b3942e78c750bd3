"""``texup worker``: a long-lived process that upscales and trains jobs sent as JSON lines (see :mod:`.protocol`).

The Blender add-on starts it with ``python -m texup worker`` in a Python that has texup: Blender's own with the
extension's bundled engine (no torch), the PyTorch environment its installer made, or one the user names, so
Blender itself never imports torch, numpy or texup. :mod:`.protocol` is numpy- and torch-free; :mod:`.server`
imports torch only when a job needs the torch engine or training.
"""

from __future__ import annotations

from texup.worker.protocol import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "ProtocolError"]
