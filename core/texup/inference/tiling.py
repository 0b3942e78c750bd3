"""Tile grid, blend weights, wrap-around indexing and seamless detection (pure numpy, no torch).

Vocabulary (all coordinates are input pixels, half-open ``[start, stop)``):

* **core** — the part of the image a tile is responsible for. Cores partition the image; their sizes along
  an axis differ by at most one pixel (``ceil(n / tile)`` tiles of ``tile`` pixels or slightly fewer).
* **context** — what the model sees: the core grown by ``overlap`` pixels on every side. Without wrap the
  context is clipped to the image (at the image border the model sees the border, exactly as when the
  whole image is processed at once). With wrap the context is *not* clipped: coordinates outside the
  image are taken modulo the image size, so a tileable texture is processed as the infinite periodic
  plane it stands for.
* **blend region** — where a tile's output is written: the core grown by ``r`` pixels on each side that
  it shares with a neighbouring tile. Around a boundary between two cores, the two tiles cross-fade over
  ``2 r`` pixels with a raised-cosine ramp. ``r`` never exceeds the overlap (so only pixels the model saw
  with context are used) nor half the smallest core (so the two ramps of a tile never meet). The part of
  the context beyond the blend region is discarded: it is where the model's zero padding is felt.

Exactness: ramp values are multiples of 2**-10 and the two ramps at a boundary are ``v`` and ``1 - v``,
so every 2-D weight (a product of two such values) is a multiple of 2**-20 and the weights of all tiles
add up to exactly 1.0 at every output pixel, in float32. An output canvas can therefore accumulate
``weight * tile_output`` directly, with no separate weight-sum buffer and no final division.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Ramp values are rounded to multiples of 1 / _RAMP_LEVELS (see the module docstring).
_RAMP_LEVELS = 1024


@dataclass(frozen=True)
class Tile:
    """One tile of a plan, in input pixels. Rows first (y), then columns (x); all ranges half-open.

    ``y0:y1, x0:x1``: the core, inside the image. ``cy0:cy1, cx0:cx1``: the context given to the model;
    inside the image unless the plan wraps, in which case indices are taken modulo the image size.
    ``by0:by1, bx0:bx1``: the blend region (core plus ramps), inside the context; with wrap it may
    extend beyond the image and is then taken modulo the image size too.
    """

    y0: int
    x0: int
    y1: int
    x1: int
    cy0: int
    cx0: int
    cy1: int
    cx1: int
    by0: int
    bx0: int
    by1: int
    bx1: int


@dataclass(frozen=True)
class _Span:
    start: int
    stop: int
    ctx_start: int
    ctx_stop: int
    blend_start: int
    blend_stop: int


def _plan_axis(n: int, tile: int, overlap: int, blend: int, wrap: bool) -> list[_Span]:
    count = -(-n // tile)
    base, extra = divmod(n, count)
    sizes = [base + (1 if i < extra else 0) for i in range(count)]
    # Ramps at a boundary must stay inside both tiles' context and the two ramps of one tile must not meet.
    r = min(blend, overlap, min(sizes) // 2) if count > 1 else 0
    spans: list[_Span] = []
    start = 0
    for i, size in enumerate(sizes):
        stop = start + size
        if wrap:
            ctx = (start - overlap, stop + overlap)
            # With one tile there is no neighbour to fade into: its own wrapped context makes the seam continuous.
            blend_range = (start - r, stop + r)
        else:
            ctx = (max(0, start - overlap), min(n, stop + overlap))
            blend_range = (start - r if i > 0 else 0, stop + r if i < count - 1 else n)
        spans.append(_Span(start, stop, *ctx, *blend_range))
        start = stop
    return spans


def plan_tiles(height: int, width: int, tile: int, overlap: int, *, wrap: bool, blend: int | None = None) -> list[Tile]:
    """Cover a ``height`` x ``width`` image with tiles whose cores are at most ``tile`` pixels square.

    Args:
        tile: largest core side in input pixels (the model sees up to ``tile + 2 * overlap``).
        overlap: context pixels added on every side of a core (clipped at the image border unless ``wrap``).
        wrap: treat the image as periodic (seamless textures): context beyond an edge comes from the
            opposite edge, and the last and first tiles of a row or column cross-fade across the wrap seam.
        blend: half-width ``r`` of the cross-fade at each boundary, in input pixels; default
            ``overlap // 2``, which keeps every used output pixel at least ``overlap / 2`` pixels away from
            the edge of the context the model saw. Clamped to the overlap and to half the smallest core.

    Returns tiles in row-major order. Raises ValueError for sizes below 1 or a negative overlap/blend.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height}")
    if tile < 1:
        raise ValueError(f"tile size must be at least 1, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must not be negative, got {overlap}")
    if blend is None:
        blend = overlap // 2
    if blend < 0:
        raise ValueError(f"blend must not be negative, got {blend}")
    rows = _plan_axis(height, tile, overlap, blend, wrap)
    cols = _plan_axis(width, tile, overlap, blend, wrap)
    return [
        Tile(
            ry.start,
            cx.start,
            ry.stop,
            cx.stop,
            ry.ctx_start,
            cx.ctx_start,
            ry.ctx_stop,
            cx.ctx_stop,
            ry.blend_start,
            cx.blend_start,
            ry.blend_stop,
            cx.blend_stop,
        )
        for ry in rows
        for cx in cols
    ]


def ramp(length: int) -> np.ndarray:
    """Rising raised-cosine ramp of ``length`` samples, float32, values in [0, 1], multiples of 2**-10.

    Sample ``k`` is ``0.5 - 0.5 cos(pi (k + 0.5) / length)`` rounded to a multiple of 2**-10. The matching
    falling ramp is ``1 - ramp(length)`` (exact in float32), so the two always add up to exactly 1.
    """
    if length <= 0:
        return np.zeros(0, np.float32)
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    values = 0.5 - 0.5 * np.cos(np.pi * t)
    return (np.round(values * _RAMP_LEVELS) / _RAMP_LEVELS).astype(np.float32)


def _axis_weights(start: int, stop: int, blend_start: int, blend_stop: int, scale: int) -> np.ndarray:
    rise = (start - blend_start) * scale
    fall = (blend_stop - stop) * scale
    length = (blend_stop - blend_start) * scale
    # The rising ramp spans [blend_start, start + r), 2 r pixels; the falling one likewise: they must not meet.
    if rise < 0 or fall < 0 or 2 * (rise + fall) > length:
        raise ValueError(f"blend region {blend_start}:{blend_stop} does not fit the core {start}:{stop}")
    weights = np.ones(length, np.float32)
    if rise:
        weights[: 2 * rise] = ramp(2 * rise)
    if fall:
        weights[length - 2 * fall :] = 1.0 - ramp(2 * fall)
    return weights


def blend_weights(tile: Tile, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Separable blend weights of ``tile``'s blend region at ``scale`` x the input resolution.

    Returns ``(wy, wx)``, float32 vectors of lengths ``(by1 - by0) * scale`` and ``(bx1 - bx0) * scale``;
    the tile's weight at output pixel ``(i, j)`` of its blend region is ``wy[i] * wx[j]``
    (see :func:`weight_map`). Over all tiles of one plan these weights add up to exactly 1.0 at every
    output pixel (wrap plans: with output indices taken modulo the output size).
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    wy = _axis_weights(tile.y0, tile.y1, tile.by0, tile.by1, scale)
    wx = _axis_weights(tile.x0, tile.x1, tile.bx0, tile.bx1, scale)
    return wy, wx


def weight_map(tile: Tile, scale: int = 1) -> np.ndarray:
    """The 2-D float32 weight of ``tile`` over its blend region at ``scale``: ``outer(wy, wx)``."""
    wy, wx = blend_weights(tile, scale)
    return np.outer(wy, wx)


def wrap_segments(start: int, stop: int, n: int) -> list[tuple[int, int, int]]:
    """Split the range ``[start, stop)`` (``stop - start <= n``), taken modulo ``n``, into contiguous pieces.

    Returns ``(dst_start, dst_stop, offset)`` triples: positions ``dst_start:dst_stop`` of ``[0, n)``
    receive elements ``offset : offset + (dst_stop - dst_start)`` of the range.
    """
    if stop - start > n:
        raise ValueError(f"range {start}:{stop} is longer than the axis ({n}) it wraps around")
    pieces: list[tuple[int, int, int]] = []
    pos = start
    while pos < stop:
        dst = pos % n
        length = min(stop - pos, n - dst)
        pieces.append((dst, dst + length, pos - start))
        pos += length
    return pieces


def take_wrapped(pixels: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``pixels[y0:y1, x0:x1]`` with both ranges taken modulo the image size (they may wrap several times).

    Works on any array whose first two axes are rows and columns; returns a new contiguous array.
    """
    h, w = pixels.shape[:2]
    if 0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w:
        return np.ascontiguousarray(pixels[y0:y1, x0:x1])
    rows = np.arange(y0, y1) % h
    cols = np.arange(x0, x1) % w
    return pixels[rows[:, None], cols[None, :]]


def add_wrapped(canvas: np.ndarray, values: np.ndarray, y0: int, x0: int) -> None:
    """``canvas[y0:y0+h, x0:x0+w] += values`` with indices taken modulo the canvas size, in place.

    ``values`` must be no larger than the canvas along each axis (a blend region never is).
    """
    h, w = values.shape[:2]
    for dy0, dy1, oy in wrap_segments(y0, y0 + h, canvas.shape[0]):
        for dx0, dx1, ox in wrap_segments(x0, x0 + w, canvas.shape[1]):
            canvas[dy0:dy1, dx0:dx1] += values[oy : oy + dy1 - dy0, ox : ox + dx1 - dx0]


# --- seamless detection -------------------------------------------------------------------------------------

#: An axis is seamless when the jump across its wrap seam is no larger than the largest jump between neighbouring
#: rows inside the image plus this fraction of the way to the typical difference between unrelated rows:
#: seam <= near + T * (far - near), with near = the largest interior jump. Measured (scripts/bench_hdr_seamless.py):
#: periodic textures score <= 0.0, non-tileable photos and their crops >= 0.197.
_SEAM_THRESHOLD = 0.1
#: Axes shorter than this cannot be judged (too few rows for statistics) and do not vote.
_MIN_AXIS = 8
#: "Unrelated rows" are compared at these fractions of the axis; the largest median wins, so a texture whose
#: period divides one of the offsets (rows there repeat exactly) is still compared with unrelated rows.
_FAR_OFFSETS = (1 / 2, 1 / 3, 1 / 5)


#: The unrelated-row statistic looks at no more than this many rows per axis, and every statistic at no more than
#: this many columns (bounded memory and time on 8K textures; evenly spaced samples stay representative).
#: Neighbouring rows are compared over the whole axis, in blocks of _ROW_BLOCK rows: the largest interior jump
#: must not be missed by sampling.
_MAX_PAIRS = 512
_MAX_COLUMNS = 2048
_ROW_BLOCK = 256


def _seam_score(values: np.ndarray) -> float | None:
    """``values``: (n, m, C). How far the wrap seam along axis 0 is from continuous: <= 0 = no worse than the
    largest jump between neighbouring rows inside, 1 = like unrelated rows."""
    n = values.shape[0]
    if n < _MIN_AXIS:
        return None
    if values.shape[1] > _MAX_COLUMNS:  # sample columns before any reshape copies the image
        values = values[:, np.linspace(0, values.shape[1] - 1, _MAX_COLUMNS).round().astype(np.intp)]

    def rows(i: np.ndarray | int | slice) -> np.ndarray:
        picked = values[i]
        return picked.reshape(picked.shape[0] if picked.ndim == values.ndim else 1, -1).astype(np.float64)

    # A truly periodic texture's seam is just one more row boundary of the infinite plane, so it is compared
    # with the *largest* interior jump (a brick texture's mortar edges are few but large, and its seam may fall
    # on one), not with the typical one; a photo's seam joins unrelated rows and stands out even from that.
    near = 0.0
    for r0 in range(0, n - 1, _ROW_BLOCK):
        block = rows(slice(r0, min(n, r0 + _ROW_BLOCK + 1)))
        near = max(near, float(np.abs(np.diff(block, axis=0)).mean(axis=1).max()))
    sample = np.unique(np.linspace(0, n - 1, min(n, _MAX_PAIRS)).round().astype(np.intp))
    far = max(
        float(np.median(np.abs(rows((sample + max(1, round(n * f))) % n) - rows(sample)).mean(axis=1)))
        for f in _FAR_OFFSETS
    )
    seam = float(np.abs(rows(0) - rows(n - 1)).mean())
    spread = far - near
    scale = max(far, near, 1e-12)
    if spread <= 1e-3 * scale:
        # Unrelated rows differ no more than the largest neighbours do (noise, flat colour): judge the seam
        # against both.
        return 0.0 if seam <= scale * 1.05 + 1e-12 else 1.0
    return (seam - near) / spread


def is_tileable(pixels: np.ndarray) -> bool:
    """Whether an (H, W) or (H, W, C) image is seamless: tiling it shows no seam along either axis.

    For each axis the mean absolute jump across the wrap seam (last row vs first row; last column vs
    first column) is compared with the *largest* mean jump between neighbouring rows inside the image
    ("near") and with the median difference between rows a half, a third and a fifth of the image apart
    (unrelated content, "far": the largest of the three). The axis is seamless when the seam jump is at
    most 10% of the way from "near" to "far": on a truly periodic texture the seam is one more row
    boundary of the pattern and never stands out from the interior's largest jump, while a photo's seam
    joins unrelated rows. Every channel, alpha included, counts. Axes shorter than 8 pixels are not
    judged; an image where neither axis can be judged is reported as not tileable (wrap-around is then
    never switched on by ``auto``).

    Works on any dtype (integers and floats are compared as float64, unnormalised: the test is relative).
    Large images are judged on up to 2048 evenly spaced columns per axis; neighbouring rows are compared
    over the whole axis, unrelated rows on up to 512 samples.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {pixels.shape}")
    scores = [s for s in (_seam_score(pixels), _seam_score(pixels.transpose(1, 0, 2))) if s is not None]
    if not scores:
        return False
    return all(math.isfinite(s) and s <= _SEAM_THRESHOLD for s in scores)
