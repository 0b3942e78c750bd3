"""Colour fix: the model's high frequencies on the source's low frequencies (numpy only).

ESRGAN models drift the low-frequency colour of what they upscale (white balance, contrast of large areas:
CIEDE2000 0.8-2.1 on average between the area-downscaled output and the input, scripts/bench_quality.py).
:func:`transfer` puts the source's low frequencies back, per channel, in the pixels' working space (the model's
encoded domain, :mod:`texup.inference.policy`), while keeping what the model added above them:

    low  = area(output -> source size)                        the output as the source sees it
    corr = G_sigma(source - low)                              what drifted, only its low frequencies
    out  = output + cubic_upsample(corr -> output size)       a smooth field added to every pixel

``G_sigma`` is a low-pass at the source's resolution: a Gaussian (``sigma`` in source pixels; 0 = no blur, i.e.
plain back-projection) applied ``order`` times to what it left, so its pass band is flat (:func:`low_pass`). The
transfer is linear, so it is the same as replacing the output's low band by the source's: a Gaussian-pyramid transfer
done once, at the source's size (16x fewer pixels than the output for a x4 model). Borders: with ``wrap`` (a seamless
run) every filter is periodic, so a tileable output stays exactly tileable; else edges are clamped. Values are
float32 throughout (no quantisation: the caller converts to the output's sample type once). The caller keeps alpha
out of it and renormalises normals after (the policy's decode).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from texup.inference.resample import _taps, resample
from texup.options import COLOR_FIX_MODES

#: The transfer's low-pass, ``1 - (1 - G_SIGMA)^ORDER`` (sigma in source pixels): a Gaussian with a flatter pass
#: band. Chosen with scripts/bench_quality.py (docs/benchmarks.md section 10): a plain Gaussian of sigma 1 leaves
#: 0.4-0.45 CIEDE2000 of 4x4-block drift on busy textures, sigma 0.5 takes 5 % of x4plus's sharpness off a brick
#: wall; (0.7, 3) keeps x4plus's drift on every photo and real texture within 0.3 (mean) / 0.8 (95th percentile),
#: and its sharpness within 5 % on all of them but one (the section: also where synthetic textures fall short).
SIGMA = 0.7
ORDER = 3
#: What ``auto`` means per role (scripts/bench_quality.py decides; README "Colour fix"): on for every role, since on
#: every colour, normal-map and data case of the benchmark, with every packaged model, it raised PSNR to the truth
#: and lowered the drift (normal maps are renormalised after; data keeps its source's values).
AUTO: dict[str, bool] = {"color": True, "normal": True, "data": True}
#: Output rows fixed per step of :func:`transfer_rows` (bounds the temporaries).
ROW_BLOCK = 256


def enabled(mode: str, role: str) -> bool:
    """Whether a run with ``color_fix=mode`` fixes a texture of ``role`` ("auto" follows :data:`AUTO`)."""
    if mode not in COLOR_FIX_MODES:
        raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIX_MODES)}, got {mode!r}")
    return mode == "on" or (mode == "auto" and AUTO.get(role, False))


def gaussian_blur(x: np.ndarray, sigma: float, *, wrap: bool) -> np.ndarray:
    """Separable Gaussian of an (H, W) or (H, W, C) float array; periodic (``wrap``) or edge-clamped borders.

    ``sigma`` in pixels; 0 returns a float32 copy. Float32 result.
    """
    out = np.array(x, dtype=np.float32)
    if sigma <= 0:
        return out
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in zip(offsets, kernel):
            idx = np.arange(n) + k
            idx = idx % n if wrap else np.clip(idx, 0, n - 1)
            acc += weight * np.take(out, idx, axis=axis)
        out = acc
    return out


def area_downscale(x: np.ndarray, height: int, width: int, *, wrap: bool = False) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32: block means when H and W are whole multiples of the new size,
    else antialiased cubic resampling (:func:`~texup.inference.resample.resample`, periodic with ``wrap``)."""
    h, w = x.shape[:2]
    if h % height == 0 and w % width == 0:
        fy, fx = h // height, w // width
        blocks = x.reshape(height, fy, width, fx, *x.shape[2:])
        return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    return resample(x, height, width, wrap=wrap)


def low_pass(x: np.ndarray, sigma: float, *, order: int = 1, wrap: bool = False) -> np.ndarray:
    """``1 - (1 - G_sigma)^order`` applied to ``x``: a Gaussian whose pass band is flatter as ``order`` grows."""
    rest = np.array(x, dtype=np.float32)
    total = np.zeros_like(rest)
    for _ in range(order):
        band = gaussian_blur(rest, sigma, wrap=wrap)
        total += band
        rest -= band
    return total


def correction(
    source: np.ndarray, output: np.ndarray, *, sigma: float = SIGMA, order: int = ORDER, wrap: bool = False
) -> np.ndarray:
    """The low-frequency colour drift of ``output`` from ``source``, at the source's size.

    ``source``: (h, w, C) float, ``output``: (H, W, C) float (any larger or equal size); returns (h, w, C) float32
    ``G_sigma(source - area(output))``, which :func:`transfer_rows` upsamples and adds.
    """
    if source.ndim != 3 or output.ndim != 3 or source.shape[2] != output.shape[2]:
        raise ValueError(f"expected (H, W, C) arrays with the same C, got {source.shape} and {output.shape}")
    h, w = source.shape[:2]
    drift = source.astype(np.float32) - area_downscale(output, h, w, wrap=wrap)
    return low_pass(drift, sigma, order=order, wrap=wrap)


def transfer_rows(
    corr: np.ndarray, output: np.ndarray, *, wrap: bool = False, block: int = ROW_BLOCK
) -> Iterator[tuple[np.ndarray, int]]:
    """Add ``corr`` (h, w, C), cubic-upsampled to ``output``'s size, to ``output`` row block by row block.

    Yields ``(rows, row0)``: views of ``output`` (modified in place) holding finished rows ``row0:row0+n``;
    only the (h, W, C) column-upsampled correction and one block are held besides ``output``.
    """
    out_h, out_w = output.shape[:2]
    h = corr.shape[0]
    wide = resample(corr, h, out_w, wrap=wrap)  # columns first, at the source's row count
    idx, weights = _taps(h, out_h, wrap) if h != out_h else (np.arange(out_h)[:, None], np.ones((out_h, 1)))
    for row0 in range(0, out_h, block):
        row1 = min(out_h, row0 + block)
        rows = output[row0:row1]
        for k in range(idx.shape[1]):
            w = weights[row0:row1, k].astype(np.float32)
            rows += w[:, None, None] * wide[idx[row0:row1, k]]
        yield rows, row0


def transfer(
    source: np.ndarray, output: np.ndarray, *, sigma: float = SIGMA, order: int = ORDER, wrap: bool = False
) -> np.ndarray:
    """``output`` with ``source``'s low frequencies (see the module docstring); a new float32 array, not clipped.

    ``source`` (h, w, C) and ``output`` (H, W, C) float, H >= h and W >= w, in the same working space.
    """
    result = np.array(output, dtype=np.float32)
    for _ in transfer_rows(correction(source, result, sigma=sigma, order=order, wrap=wrap), result, wrap=wrap):
        pass
    return result
