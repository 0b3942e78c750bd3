"""texup's ``.safetensors`` format, the parts that need no torch: its version and reproducible bytes.

The metadata keys are documented in :mod:`texup.weights.model`; :func:`texup.weights.save_model` (torch) and
:func:`texup.weights.arrays.save_array_model` (numpy) both write them.
"""

from __future__ import annotations

import json

FORMAT_VERSION = "1"


def sorted_header(raw: bytes) -> bytes:
    """``raw`` (a .safetensors file's bytes) with the header's keys in sorted order.

    safetensors writes its JSON header from a hash map whose order changes from one process to the next, so the
    same model saved twice gave two different files (and SHA-256s: the output manifest's model identity). The data
    block is already in a fixed order; the header is re-serialised sorted (same compact JSON, padded with spaces
    to 8 bytes as the format wants), so equal models give equal files."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]
