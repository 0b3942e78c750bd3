"""The Detail dial without texup (stdlib only): which models have a partner, and the blend reference a run sends.

A model's partner is the PSNR-oriented network at the smooth end of its dial (ESRGAN's network interpolation,
texup.weights.blend): Detail 1 is the model itself, 0 its partner, anything between the worker's blend
``blend:PARTNER,MODEL@DETAIL``. Partners come from texup's registry (mirrored in :data:`PARTNERS`; a test compares)
or from a texup ``.safetensors`` whose provenance names one (``texup train --stage gan`` from a PSNR-stage model keeps
it beside its result): the file's header is read here, a few kilobytes, and remembered by size and mtime.
"""

from __future__ import annotations

import json
import os
import struct

#: texup's registry: a model's published PSNR partner (texup.weights.registry.ModelInfo.partner).
PARTNERS: dict[str, str] = {
    "realesrgan-x4plus": "realesrnet-x4plus",
    "realesr-general-x4v3": "realesr-general-wdn-x4v3",
}

BLEND_PREFIX = "blend:"
_MAX_HEADER = 16 * 1024 * 1024
_headers: dict[tuple[str, int, int], dict] = {}


def _provenance(path: str) -> dict:
    """The ``texup.provenance`` object of a .safetensors file's header ({} when unreadable or absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _headers:
        value: dict = {}
        try:
            with open(path, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                if 0 < size <= _MAX_HEADER:
                    header = json.loads(handle.read(size))
                    found = json.loads((header.get("__metadata__") or {}).get("texup.provenance", "{}"))
                    value = found if isinstance(found, dict) else {}
        except (OSError, ValueError, struct.error, AttributeError):
            value = {}
        _headers.clear()  # one model at a time is drawn: keep only the latest
        _headers[key] = value
    return _headers[key]


def partner_of(model: str) -> tuple[str | None, str]:
    """``(partner, "")`` for a model with a partner, else ``(None, why not)`` in a few words."""
    if os.path.isfile(model):
        name = os.path.basename(model)
        if not model.lower().endswith(".safetensors"):
            return None, f"{name} names no partner"
        entry = _provenance(model).get("partner")
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            return None, f"{name} names no partner model"
        partner = os.path.join(os.path.dirname(os.path.abspath(model)), entry["file"])
        if not os.path.isfile(partner):
            return None, f"its partner {entry['file']} is missing"
        return partner, ""
    if model in PARTNERS:
        return PARTNERS[model], ""
    if model.startswith(BLEND_PREFIX):
        return None, "already a blend"
    return None, f"{model} has no partner model"


def alpha_text(alpha: float) -> str:
    """Alpha as texup writes it in a blend reference (a slider's float32 rounded to 3 places)."""
    text = repr(round(float(alpha), 3))
    return text[:-2] if text.endswith(".0") else text


def dialled(model: str, detail: float) -> str:
    """The reference a run sends for ``model`` at ``detail``: the model itself at 1 or without a partner, else the
    blend of its partner (0) and the model (1)."""
    partner, _why = partner_of(model)
    if partner is None or round(float(detail), 3) >= 1.0:
        return model
    return f"{BLEND_PREFIX}{partner},{model}@{alpha_text(max(0.0, float(detail)))}"
