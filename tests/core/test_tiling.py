"""Tile planner, blend weights and seamless detection (texup.inference.tiling; numpy only)."""

from __future__ import annotations

import numpy as np
import pytest
from realdata import real_image

from texup.inference.tiling import (
    Tile,
    add_wrapped,
    blend_weights,
    is_tileable,
    plan_tiles,
    ramp,
    take_wrapped,
    weight_map,
    wrap_segments,
)

SIZES = [(1, 1), (1, 7), (37, 53), (64, 64), (65, 31), (100, 3), (256, 300)]


def _weight_sum(height: int, width: int, tiles: list[Tile], scale: int) -> np.ndarray:
    canvas = np.zeros((height * scale, width * scale), np.float32)
    for t in tiles:
        add_wrapped(canvas, weight_map(t, scale), t.by0 * scale, t.bx0 * scale)
    return canvas


def _coverage(height: int, width: int, tiles: list[Tile]) -> np.ndarray:
    count = np.zeros((height, width), np.int32)
    for t in tiles:
        count[t.y0 : t.y1, t.x0 : t.x1] += 1
    return count


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("tile,overlap", [(16, 8), (32, 16), (7, 3), (500, 16), (1, 0), (5, 0)])
def test_cores_partition_the_image_and_weights_sum_to_exactly_one(height, width, tile, overlap, wrap):
    tiles = plan_tiles(height, width, tile, overlap, wrap=wrap)
    assert np.array_equal(_coverage(height, width, tiles), np.ones((height, width), np.int32))
    for scale in (1, 4):
        total = _weight_sum(height, width, tiles, scale)
        assert np.array_equal(total, np.ones_like(total)), (np.min(total), np.max(total))
    for t in tiles:
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        # The blend region lies inside the context the model saw, and the context inside overlap of the core.
        assert t.cy0 <= t.by0 <= t.y0 < t.y1 <= t.by1 <= t.cy1
        assert t.cx0 <= t.bx0 <= t.x0 < t.x1 <= t.bx1 <= t.cx1
        assert t.y0 - t.cy0 <= overlap and t.cx1 - t.x1 <= overlap
        if not wrap:
            assert 0 <= t.cy0 and t.cy1 <= height and 0 <= t.cx0 and t.cx1 <= width


def test_tile_larger_than_image_is_one_tile_with_full_weight():
    (t,) = plan_tiles(37, 53, 256, 16, wrap=False)
    assert (t.y0, t.x0, t.y1, t.x1) == (0, 0, 37, 53)
    assert (t.cy0, t.cx0, t.cy1, t.cx1) == (0, 0, 37, 53)
    assert np.array_equal(weight_map(t, 4), np.ones((148, 212), np.float32))


def test_wrap_single_tile_takes_context_from_the_opposite_edges():
    (t,) = plan_tiles(37, 53, 256, 16, wrap=True)
    assert (t.cy0, t.cx0, t.cy1, t.cx1) == (-16, -16, 53, 69)
    image = np.arange(37 * 53, dtype=np.int64).reshape(37, 53)
    ctx = take_wrapped(image, t.cy0, t.cy1, t.cx0, t.cx1)
    assert ctx.shape == (69, 85)
    assert np.array_equal(ctx[16:53, 16:69], image)
    assert np.array_equal(ctx[:16, 16:69], image[-16:])  # above the top edge: the bottom rows
    assert np.array_equal(ctx[16:53, -16:], image[:, :16])  # right of the right edge: the left columns
    assert ctx[0, 0] == image[-16, -16]


def test_wrap_context_of_an_image_smaller_than_the_overlap_repeats_it():
    image = np.arange(3 * 2, dtype=np.int64).reshape(3, 2)
    (t,) = plan_tiles(3, 2, 64, 5, wrap=True)
    ctx = take_wrapped(image, t.cy0, t.cy1, t.cx0, t.cx1)
    assert ctx.shape == (13, 12)
    assert np.array_equal(ctx, np.tile(image, (10, 10))[15 - 5 : 15 - 5 + 13, 10 - 5 : 10 - 5 + 12])


def test_wrap_plan_crossfades_across_the_seam():
    tiles = plan_tiles(64, 64, 32, 8, wrap=True)
    first = tiles[0]
    assert first.by0 < 0 and first.bx0 < 0  # ramps into the last tile across the wrap seam
    total = _weight_sum(64, 64, tiles, 2)
    assert np.array_equal(total, np.ones_like(total))
    # Near the seam the first tile's weight at output row 0 is below 1: it is really blending.
    wy, _ = blend_weights(first, 2)
    assert 0 < wy[-first.by0 * 2] < 1


def test_balanced_cores_and_requested_blend_width():
    tiles = plan_tiles(100, 10, 48, 16, wrap=False)
    assert [(t.y0, t.y1) for t in tiles] == [(0, 34), (34, 67), (67, 100)]
    assert tiles[1].by0 == 34 - 8 and tiles[1].by1 == 67 + 8  # default blend = overlap // 2
    wide = plan_tiles(100, 10, 48, 16, wrap=False, blend=16)
    assert wide[1].by0 == 34 - 16
    narrow_cores = plan_tiles(9, 9, 3, 16, wrap=False, blend=16)
    assert all(t.y0 - t.by0 <= 1 for t in narrow_cores)  # clamped to half the smallest core


def test_ramp_is_smooth_monotonic_and_complementary():
    for n in (1, 2, 16, 64, 257):
        up = ramp(n)
        assert up.dtype == np.float32 and up.shape == (n,)
        assert np.all(np.diff(up) >= 0)
        assert np.all((up >= 0) & (up <= 1))
        assert np.array_equal(up + (1 - up), np.ones(n, np.float32))
        assert np.array_equal(up * 1024, np.round(up * 1024))
    up = ramp(64)
    assert np.max(np.abs(up + up[::-1] - 1)) <= 1 / 1024  # symmetric about the middle
    assert np.max(np.diff(up)) < 0.05  # no step


@pytest.mark.parametrize(
    "bad", [dict(height=0, width=5), dict(height=5, width=5, tile=0), dict(height=5, width=5, overlap=-1)]
)
def test_plan_rejects_bad_arguments(bad):
    args = dict(height=5, width=5, tile=4, overlap=2) | bad
    with pytest.raises(ValueError):
        plan_tiles(args["height"], args["width"], args["tile"], args["overlap"], wrap=False)


def test_wrap_segments_and_add_wrapped():
    assert wrap_segments(-3, 5, 10) == [(7, 10, 0), (0, 5, 3)]
    assert wrap_segments(8, 12, 10) == [(8, 10, 0), (0, 2, 2)]
    with pytest.raises(ValueError):
        wrap_segments(0, 11, 10)
    canvas = np.zeros((4, 5))
    add_wrapped(canvas, np.ones((2, 3)), -1, 4)
    expected = np.zeros((4, 5))
    expected[[3, 3, 3, 0, 0, 0], [4, 0, 1, 4, 0, 1]] = 1
    assert np.array_equal(canvas, expected)


# --- seamless detection on real images ---------------------------------------------------------------------


def _mirror_2x2(a: np.ndarray) -> np.ndarray:
    top = np.concatenate([a, a[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "astronaut.png", "gravel.png", "grass.png", "brick.png"])
def test_real_photos_and_textures_are_not_tileable(name):
    assert not is_tileable(real_image(name))


@pytest.mark.parametrize("name", ["gravel.png", "brick.png", "coffee.png"])
def test_periodic_textures_made_from_real_images_are_tileable(name):
    periodic = _mirror_2x2(real_image(name))
    assert is_tileable(periodic)
    # One period cropped at an arbitrary offset: the seam now runs through ordinary content.
    h, w = periodic.shape[:2]
    crop = np.tile(periodic, (2, 2, 1))[101 : 101 + h, 203 : 203 + w]
    assert is_tileable(crop)
    assert is_tileable(crop.astype(np.float32) / 255)
    assert is_tileable((crop.astype(np.uint16) * 257)[:, :, 0])


def test_one_seamless_axis_is_not_enough():
    a = real_image("grass.png")
    half_mirrored = np.concatenate([a, a[::-1]], axis=0)  # tileable vertically only
    assert not is_tileable(half_mirrored)
    assert not is_tileable(half_mirrored.transpose(1, 0, 2))


def test_tiny_and_flat_images():
    assert not is_tileable(np.zeros((1, 1, 3), np.uint8))  # too small to judge
    assert is_tileable(np.full((32, 32, 4), 77, np.uint8))  # flat colour tiles without seams
