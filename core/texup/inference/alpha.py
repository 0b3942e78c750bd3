"""How a varying alpha channel is upscaled (``UpscaleOptions.alpha``): by the network, or by resampling.

ESRGAN models sharpen whatever they are shown. On an alpha channel that is right for hard edges (cutouts, foliage,
masks: the network keeps them crisp, 3-6 dB closer to the original than cubic resampling) and wrong for everything
soft: a decal's falloff or a blurred matte comes back as a hard cut, a smooth gradient gets banded and a fine
regular pattern (a 4 px checker: a fence, a grate) is flattened to grey, 10-35 dB further from the original than
plain cubic resampling (``scripts/bench_alpha.py``, docs/benchmarks.md section 10). ``"auto"`` keeps each where it
is better, without a ground truth:

1. Before the network: an alpha whose sharp transitions (a change of at least :data:`MIN_JUMP` that completes
   within two pixels) are fewer than :data:`HARD_EDGE_SHARE` of all its transitions has no hard edge for the
   network to keep. It is resampled (:func:`resample_rows`) and the network is not run for it: a model pass saved.
2. After the network: its alpha, downscaled back to the source size, must reproduce the source alpha about as
   well as resampling's own round trip does (within :data:`CONSISTENCY_MARGIN` times its error, :class:`SourceCheck`).
   An output that does not (the network moved or invented edges, or flattened a pattern) is replaced by resampling.

``"model"`` is the network always (texup before this choice existed, and Real-ESRGAN's default); ``"resample"`` is
always the cubic resampler of :mod:`texup.inference.resample` (with wrap-around for seamless textures).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from texup.inference.resample import RowResampler

#: A transition: adjacent pixels' changes summing to at least this over two steps (alpha in 0..1).
MIN_JUMP = 0.25
#: A transition is sharp when its two steps hold at least this share of the change over the four steps around them.
CONCENTRATION = 0.9
#: Below this share of sharp transitions an alpha has no hard edge worth the network (measured: hard masks 0.2-1.0,
#: soft edges and gradients 0-0.06; scripts/bench_alpha.py prints it per case).
HARD_EDGE_SHARE = 0.12
#: The network's alpha is kept when its round trip to the source size is within this factor of resampling's.
#: Measured: where the network is closer to the original the factor is 0.74-1.06, where resampling is, 1.5-140.
CONSISTENCY_MARGIN = 1.25
#: Round-trip errors below this are both exact to 8 bits: the comparison is not decided by noise.
ERROR_FLOOR = 0.5 / 255
#: Rows per block when scanning or resampling an alpha (bounds the float temporaries).
_ROWS = 256


def hard_edge_share(alpha: np.ndarray) -> float:
    """The share of an (H, W) alpha's transitions (rows and columns) that are sharp; 0.0 when it has none.

    A transition at a pair of adjacent steps ``d[i], d[i+1]`` (absolute differences between neighbouring pixels)
    is one whose sum reaches :data:`MIN_JUMP`; it is sharp when that sum is at least :data:`CONCENTRATION` of the
    sum over ``d[i-1] .. d[i+2]``. An area-sampled hard edge completes within two steps wherever it falls between
    pixel centres; a soft edge of the same height spreads over three or more.
    """
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) alpha, got shape {a.shape}")
    sharp = total = 0
    for arr in (a, a.T):
        if arr.shape[1] < 3:
            continue
        for r0 in range(0, arr.shape[0], _ROWS):
            d = np.abs(np.diff(arr[r0 : r0 + _ROWS], axis=1))
            pair = d[:, :-1] + d[:, 1:]
            outer = np.zeros_like(pair)
            outer[:, 1:] += d[:, :-2]
            outer[:, :-1] += d[:, 2:]
            big = pair >= MIN_JUMP
            total += int(np.count_nonzero(big))
            sharp += int(np.count_nonzero(big & (pair >= CONCENTRATION * (pair + outer))))
    return sharp / total if total else 0.0


def wants_model(alpha: np.ndarray) -> bool:
    """Whether ``"auto"`` runs the network on this (H, W) alpha at all (step 1 of the module's rule)."""
    return hard_edge_share(alpha) >= HARD_EDGE_SHARE


def resample_rows(
    alpha: np.ndarray, out_h: int, out_w: int, wrap: bool, sink: Callable[[np.ndarray, int], None]
) -> None:
    """Cubic-resample an (H, W) float alpha to ``out_h`` x ``out_w``, clipped to 0..1, as ``sink(rows, row0)``
    blocks of (n, out_w) float32 rows (each output row once; memory: a few rows, not the output)."""

    def clipped(block: np.ndarray, row0: int) -> None:
        sink(np.clip(block, 0.0, 1.0, out=block), row0)

    resampler = RowResampler(alpha.shape[0], out_h, out_w, clipped, wrap=wrap)
    for r0 in range(0, alpha.shape[0], _ROWS):
        resampler(alpha[r0 : r0 + _ROWS], r0)
    resampler.finish()


class SourceCheck:
    """A sink for output alpha rows, (n, out_w) float in 0..1 in any order: downscales them back to the source's
    (H, W) as they come, so :meth:`error` can compare the result with the source (the round trip of step 2)."""

    def __init__(self, height: int, width: int, out_h: int, wrap: bool) -> None:
        self.back = np.empty((height, width), np.float32)
        self._resampler = RowResampler(out_h, height, width, self._keep, wrap=wrap)

    def _keep(self, block: np.ndarray, row0: int) -> None:
        self.back[row0 : row0 + block.shape[0]] = block

    def __call__(self, block: np.ndarray, row0: int) -> None:
        self._resampler(block, row0)

    def error(self, alpha: np.ndarray) -> float:
        """Root mean square difference between the downscaled output and the source ``alpha`` (0..1)."""
        self._resampler.finish()
        return float(np.sqrt(np.mean((self.back - alpha) ** 2, dtype=np.float64)))


def resampled_error(alpha: np.ndarray, out_h: int, out_w: int, wrap: bool) -> float:
    """The round-trip error of resampling itself: :func:`resample_rows` to the output size, back, against ``alpha``."""
    check = SourceCheck(alpha.shape[0], alpha.shape[1], out_h, wrap)
    resample_rows(alpha, out_h, out_w, wrap, check)
    return check.error(alpha)


def keeps_model(model_error: float, resampling_error: float) -> bool:
    """Step 2's verdict: the network's alpha stays when its round trip is within :data:`CONSISTENCY_MARGIN` of
    resampling's (both floored at :data:`ERROR_FLOOR`)."""
    return max(model_error, ERROR_FLOOR) <= CONSISTENCY_MARGIN * max(resampling_error, ERROR_FLOOR)
