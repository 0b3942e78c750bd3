"""High-quality resampling to an exact size, with edge-clamped or wrap-around borders (numpy only).

The model upscales by a fixed integer factor; any other output size is reached by resampling its output.
Separable cubic convolution (Keys, a = -0.5, i.e. Catmull-Rom), antialiased when shrinking: the kernel is
stretched by the shrink factor so every input pixel contributes (like Pillow's and torch's
``antialias=True``). Borders are either clamped (ordinary images) or periodic (seamless textures, so the
result is still exactly tileable) — torch's ``interpolate`` has no periodic mode, hence this module.
"""
from __future__ import annotations

import numpy as np

_A = -0.5  # Keys' parameter: -0.5 is the interpolating cubic with the best approximation order
_RADIUS = 2.0


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    x2 = x * x
    x3 = x2 * x
    near = (_A + 2) * x3 - (_A + 3) * x2 + 1
    far = _A * x3 - 5 * _A * x2 + 8 * _A * x - 4 * _A
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _taps(n_in: int, n_out: int, wrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (n_out, K): output i = sum_k weights[i, k] * input[indices[i, k]]."""
    ratio = n_in / n_out
    stretch = max(1.0, ratio)  # widen the kernel when shrinking (antialiasing)
    radius = _RADIUS * stretch
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * ratio - 0.5
    count = int(np.ceil(2 * radius)) + 1
    first = np.floor(centres - radius).astype(np.int64) + 1
    idx = first[:, None] + np.arange(count)[None, :]
    weights = _cubic((idx - centres[:, None]) / stretch)
    weights /= weights.sum(axis=1, keepdims=True)
    idx = idx % n_in if wrap else np.clip(idx, 0, n_in - 1)
    return idx, weights.astype(np.float32)


def _resample_axis0(x: np.ndarray, n_out: int, wrap: bool) -> np.ndarray:
    idx, weights = _taps(x.shape[0], n_out, wrap)
    out = np.zeros((n_out, *x.shape[1:]), np.float32)
    shape = (n_out,) + (1,) * (x.ndim - 1)
    for k in range(idx.shape[1]):
        w = weights[:, k]
        if not np.any(w):
            continue
        out += w.reshape(shape) * x[idx[:, k]]
    return out


def resample(pixels: np.ndarray, height: int, width: int, *, wrap: bool = False) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float image to ``height`` x ``width``; returns float32.

    Antialiased cubic convolution, separable (rows, then columns). ``wrap=True`` treats the image as
    periodic (for seamless textures); otherwise edge pixels are repeated. Values are not clamped: cubic
    kernels overshoot slightly at sharp edges, and the caller clamps to its valid range. An axis whose size
    does not change is copied, not filtered.
    """
    if height < 1 or width < 1:
        raise ValueError(f"output size must be at least 1x1, got {width}x{height}")
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {x.shape}")
    if x.shape[0] != height:
        x = _resample_axis0(x, height, wrap)
    if x.shape[1] != width:
        x = np.swapaxes(_resample_axis0(np.swapaxes(x, 0, 1), width, wrap), 0, 1)
    return np.ascontiguousarray(x)
