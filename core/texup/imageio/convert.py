"""Sample-type and transfer-curve conversions (numpy only).

The float convention used across texup: integer images map to ``[0, 1]`` float32 (0 -> 0.0,
the type's maximum -> 1.0); float images keep their values, which may lie outside ``[0, 1]``
(HDR EXR, negative values in data maps).
"""

from __future__ import annotations

import numpy as np

from .types import DTYPES, Dtype

_INT_MAX: dict[str, float] = {"uint8": 255.0, "uint16": 65535.0}


def to_float32(pixels: np.ndarray) -> np.ndarray:
    """A new float32 array of the same shape: uint8/uint16 scaled to ``[0, 1]``, floats with values unchanged.

    Raises ``TypeError`` for any other dtype (signed ints, bool, float64 are not image samples here).
    """
    name = pixels.dtype.name
    if name in _INT_MAX:
        out = pixels.astype(np.float32)
        out *= np.float32(1.0 / _INT_MAX[name])
        return out
    if name in ("float16", "float32"):
        return pixels.astype(np.float32, copy=True)
    raise TypeError(f"to_float32 expects uint8, uint16, float16 or float32 samples, got {name}")


def from_float32(arr: np.ndarray, dtype: Dtype) -> np.ndarray:
    """Convert float samples (any float dtype) to ``dtype``, returning a new C-contiguous array.

    For ``"uint8"``/``"uint16"`` values are clipped to ``[0, 1]``, scaled by 255 / 65535 and rounded
    half to even (NaN becomes 0). For ``"float16"``/``"float32"`` values are only cast (values beyond
    float16's range become +-inf, as the cast defines).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown sample type {dtype!r} (expected one of {sorted(DTYPES)})")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"from_float32 expects float samples, got {arr.dtype.name}")
    if dtype in _INT_MAX:
        scaled = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        scaled *= np.float32(_INT_MAX[dtype])
        np.rint(scaled, out=scaled)
        return np.ascontiguousarray(scaled.astype(dtype))
    return np.ascontiguousarray(arr.astype(dtype))


def srgb_to_linear(a: np.ndarray) -> np.ndarray:
    """Decode sRGB-encoded values to linear light (IEC 61966-2-1), as float32 of the same shape.

    Works on any shape and does not treat channels specially: do not pass alpha through it.
    Values above 1 follow the power segment; negative values mirror the curve (``f(-x) == -f(x)``).
    """
    x = np.asarray(a, dtype=np.float32)
    m = np.abs(x)
    out = np.where(
        m <= 0.04045, m / np.float32(12.92), ((m + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4)
    )
    return np.copysign(out, x).astype(np.float32, copy=False)


def linear_to_srgb(a: np.ndarray) -> np.ndarray:
    """Encode linear-light values as sRGB (IEC 61966-2-1), as float32 of the same shape; inverse of
    :func:`srgb_to_linear`."""
    x = np.asarray(a, dtype=np.float32)
    m = np.abs(x)
    out = np.where(
        m <= 0.0031308, m * np.float32(12.92), np.float32(1.055) * m ** np.float32(1.0 / 2.4) - np.float32(0.055)
    )
    return np.copysign(out, x).astype(np.float32, copy=False)
