"""High-quality resampling to an exact size, with edge-clamped or wrap-around borders (numpy only).

The model upscales by a fixed integer factor; any other output size is reached by resampling its output.
Separable cubic convolution (Keys, a = -0.5, i.e. Catmull-Rom), antialiased when shrinking: the kernel is
stretched by the shrink factor so every input pixel contributes (like Pillow's and torch's
``antialias=True``). Borders are either clamped (ordinary images) or periodic (seamless textures, so the
result is still exactly tileable) — torch's ``interpolate`` has no periodic mode, hence this module.
"""

from __future__ import annotations

from collections.abc import Callable

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


class RowResampler:
    """:func:`resample` for an image that arrives as blocks of rows; output rows go to ``sink`` when they can.

    Each arriving block is resampled along its rows at once (columns first); an output row is computed as
    soon as every input row its kernel needs has arrived, and an input row is dropped as soon as every output
    row that needs it is done. Rows may arrive in any order (the tiled pipeline sends the rows beside a
    wrap-around seam last); in order, only the few dozen rows one kernel spans are held. ``sink(block, row0)``
    gets (n, width, C) float32 output rows ``row0:row0+n``, each row exactly once. Same values as
    :func:`resample` on the whole image, up to float rounding.
    """

    def __init__(
        self,
        n_in: int,
        height: int,
        width: int,
        sink: Callable[[np.ndarray, int], None],
        *,
        wrap: bool = False,
        block: int = 64,
    ) -> None:
        if height < 1 or width < 1 or n_in < 1:
            raise ValueError(f"sizes must be at least 1, got {n_in} rows in, {width}x{height} out")
        self.n_in, self.height, self.width = n_in, height, width
        self.sink, self.wrap, self.block = sink, wrap, block
        if n_in == height:  # rows pass straight through (columns may still change)
            idx, weights = np.arange(height)[:, None], np.ones((height, 1), np.float32)
        else:
            idx, weights = _taps(n_in, height, wrap)
        # Only taps with a weight; `needs[i]`: the distinct input rows output row i reads (clamped taps repeat).
        self.taps = [(idx[i][weights[i] != 0], weights[i][weights[i] != 0]) for i in range(height)]
        self.needs = [np.unique(t).tolist() for t, _ in self.taps]
        self.missing = np.array([len(rows) for rows in self.needs], np.int64)
        users: list[list[int]] = [[] for _ in range(n_in)]
        for i, rows in enumerate(self.needs):
            for j in rows:
                users[j].append(i)
        self.users = users
        self.remaining = np.array([len(u) for u in users], np.int64)  # not yet emitted outputs per input row
        self.rows: dict[int, np.ndarray] = {}
        self.arrived = np.zeros(n_in, bool)
        self.emitted = 0

    def __call__(self, block: np.ndarray, row0: int) -> None:
        """Feed input rows ``row0:row0+n``."""
        n = block.shape[0]
        if row0 < 0 or row0 + n > self.n_in or self.arrived[row0 : row0 + n].any():
            raise ValueError(f"rows {row0}..{row0 + n - 1} are outside 0..{self.n_in - 1} or arrived twice")
        x = np.asarray(block, dtype=np.float32)
        if x.shape[1] != self.width:
            x = np.swapaxes(_resample_axis0(np.swapaxes(x, 0, 1), self.width, self.wrap), 0, 1)
        ready: list[int] = []
        for k in range(n):
            j = row0 + k
            self.arrived[j] = True
            if self.remaining[j] == 0:
                continue
            self.rows[j] = x[k]
            for i in self.users[j]:
                self.missing[i] -= 1
                if self.missing[i] == 0:
                    ready.append(i)
        ready.sort()
        start = 0
        while start < len(ready):  # runs of consecutive output rows, at most `block` long
            end = start + 1
            while end < len(ready) and end - start < self.block and ready[end] == ready[end - 1] + 1:
                end += 1
            self._emit(ready[start:end])
            start = end
        for j in range(row0, row0 + n):  # rows still waiting: own copies, so the block itself can be freed
            if j in self.rows:
                self.rows[j] = self.rows[j].copy()

    def _emit(self, rows: list[int]) -> None:
        first = self.rows[self.needs[rows[0]][0]]
        out = np.empty((len(rows), *first.shape), np.float32)
        for n, i in enumerate(rows):
            t, w = self.taps[i]
            acc = w[0] * self.rows[int(t[0])]
            for j, wk in zip(t[1:], w[1:]):
                acc += wk * self.rows[int(j)]
            out[n] = acc
        self.emitted += len(rows)
        self.sink(out, rows[0])
        for i in rows:
            for j in self.needs[i]:
                self.remaining[j] -= 1
                if self.remaining[j] == 0:
                    del self.rows[j]

    def finish(self) -> None:
        """Check that every input row arrived and every output row was emitted."""
        if not self.arrived.all() or self.emitted != self.height:
            raise RuntimeError(
                f"resampler got {int(self.arrived.sum())} of {self.n_in} rows, emitted {self.emitted} of {self.height}"
            )
