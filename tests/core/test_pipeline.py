"""Image in, image out (texup.inference.pipeline): tiling, seamless, roles, alpha, sizes, OOM, files.

Most tests use small stand-in networks whose exact output is known (nearest upsampling, a 3x3 blur) so
that plumbing errors show as exact mismatches; the tests marked "real model" run Real-ESRGAN x4plus on
small crops of real photos.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from realdata import real_image

from texup.errors import ImageWriteError
from texup.imageio import read_image, write_image
from texup.inference import policy
from texup.inference.pipeline import (
    Cancelled,
    TileOutOfMemoryError,
    Upscaler,
    count_passes,
    output_size,
)
from texup.inference.pipeline import UpscaleOptions as _Options
from texup.inference.resample import RowResampler, resample


def UpscaleOptions(**kwargs) -> _Options:  # noqa: N802 (stands for the class)
    """Options with the colour fix off and every varying alpha through the model unless given: these tests compare
    the model's own pixels (tiling, seams, passes, policies) with references built by hand; the fix and the alpha
    rule have their own tests (test_colorfix.py, test_alpha.py)."""
    return _Options(**{"color_fix": "off", "alpha": "model", **kwargs})


# --- stand-in networks ------------------------------------------------------------------------------------


class Nearest(torch.nn.Module):
    """Nearest-neighbour x`scale`: every output pixel is an input pixel, so policies can be checked exactly."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[2], x.shape[3]))
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + self.anchor


class BlurUp(Nearest):
    """3x3 box blur with zero padding (like a conv layer), then nearest x`scale`: output depends on neighbours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[2], x.shape[3]))
        kernel = torch.full((3, 1, 3, 3), 1 / 9, dtype=x.dtype)
        return F.interpolate(F.conv2d(x, kernel, padding=1, groups=3), scale_factor=self.scale, mode="nearest")


class OutOfMemoryAbove(BlurUp):
    """BlurUp that raises torch.OutOfMemoryError for inputs with more than `limit` pixels."""

    def __init__(self, limit: int, scale: int = 4) -> None:
        super().__init__(scale)
        self.limit = limit
        self.failures = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError(f"fake: {x.shape[2]}x{x.shape[3]} does not fit")
        return super().forward(x)


def _model(module: torch.nn.Module, scale: int = 4) -> SimpleNamespace:
    return SimpleNamespace(module=module, scale=scale, input_multiple=1, name="stand-in", hparams={}, arch="x")


def _upscaler(module: torch.nn.Module, scale: int = 4) -> Upscaler:
    return Upscaler(_model(module, scale), device="cpu", precision="fp32")


def _nearest_up(a: np.ndarray, s: int = 4) -> np.ndarray:
    return a.repeat(s, axis=0).repeat(s, axis=1)


def _untiled_blur(a01: np.ndarray, s: int = 4) -> np.ndarray:
    """What BlurUp gives on the whole image at once (float32 [0, 1] in, float32 out)."""
    return Upscaler(_model(BlurUp(s), s), device="cpu", precision="fp32").engine.run_tile(a01)


def _mirror_2x2(a: np.ndarray) -> np.ndarray:
    top = np.concatenate([a, a[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def _tileable_texture(size: int = 24, offset: tuple[int, int] = (7, 5)) -> np.ndarray:
    """A seamless uint8 RGB texture built from a real one: mirrored 2x2, then one period at an offset."""
    half = real_image("brick.png", (100, 140, size // 2, size // 2))
    periodic = _mirror_2x2(np.repeat(half, 3, axis=2) if half.shape[2] == 1 else half)
    rgb = periodic.copy()
    rgb[..., 1] = np.roll(periodic[..., 1], 3, axis=1)  # decorrelate channels a little, still periodic
    return np.ascontiguousarray(np.roll(rgb, offset, axis=(0, 1)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


# --- shapes, dtypes, channels -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "float32"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_same_channels_and_dtype_at_the_models_scale(channels, dtype):
    rgb = real_image("coffee.png", (120, 200, 37, 53))
    gray = real_image("gravel.png", (10, 10, 37, 53))
    planes = {1: [gray], 2: [gray, rgb[..., :1]], 3: [rgb], 4: [rgb, gray]}[channels]
    u8 = np.concatenate(planes, axis=2)
    pixels = {
        "uint8": u8,
        "uint16": u8.astype(np.uint16) * 257,
        "float16": (u8 / 255).astype(np.float16),
        "float32": (u8 / 255).astype(np.float32),
    }[dtype]
    out = _upscaler(Nearest()).upscale_array(pixels, UpscaleOptions(tile=16, overlap=4, seamless="off"))
    assert out.shape == (148, 212, channels) and out.dtype == pixels.dtype
    expected = _nearest_up(pixels)
    visible = np.ones(expected.shape[:2], bool) if channels in (1, 3) else expected[..., -1] > 0
    tolerance = 0 if dtype.startswith("uint") else 1e-3
    if channels in (2, 4):  # alpha itself is upscaled exactly; colour only matters where alpha > 0
        np.testing.assert_allclose(out[..., -1].astype(np.float64), expected[..., -1], atol=tolerance)
    colour = slice(0, 1) if channels < 3 else slice(0, 3)
    np.testing.assert_allclose(
        out[..., colour][visible].astype(np.float64), expected[..., colour][visible].astype(np.float64), atol=tolerance
    )


def test_two_dimensional_input_gives_two_dimensional_output():
    gray = real_image("grass.png", (0, 0, 20, 30))[:, :, 0]
    out = _upscaler(Nearest()).upscale_array(gray, UpscaleOptions(seamless="off"))
    assert out.shape == (80, 120)
    assert np.array_equal(out, _nearest_up(gray))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4, 3), np.int32), np.zeros((4, 4, 3), np.float64), np.zeros((4,))],
)
def test_unsupported_arrays_are_refused(bad):
    with pytest.raises(ValueError):
        _upscaler(Nearest()).upscale_array(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scale=0),
        dict(scale=float("nan")),
        dict(target_size=(0, 5)),
        dict(tile=0),
        dict(overlap=-1),
        dict(seamless="yes"),
        dict(role="albedo"),
    ],
)
def test_invalid_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        UpscaleOptions(**kwargs)


# --- tiling through the pipeline ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (1, 40), (64, 64)])
@pytest.mark.parametrize("tile,overlap", [(16, 4), (7, 2), (512, 16)])
def test_tiled_equals_untiled_for_a_local_network(size, tile, overlap):
    h, w = size
    image = real_image("astronaut.png", (200, 150, h, w))
    out = _upscaler(BlurUp()).upscale_array(
        image.astype(np.float32) / 255, UpscaleOptions(tile=tile, overlap=overlap, seamless="off")
    )
    np.testing.assert_allclose(out, np.clip(_untiled_blur(image.astype(np.float32) / 255), 0, 1), atol=2e-6)


def test_progress_reports_every_tile_and_cancel_stops():
    image = real_image("coffee.png", (100, 100, 40, 40))
    seen: list[tuple[int, int]] = []
    _upscaler(Nearest()).upscale_array(
        image, UpscaleOptions(tile=16, overlap=4, seamless="off"), progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(i, 9) for i in range(10)]

    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="after 3 of 9"):
        _upscaler(Nearest()).upscale_array(image, UpscaleOptions(tile=16, overlap=4, seamless="off"), cancel=cancel)


def test_out_of_memory_retries_with_smaller_tiles():
    image = real_image("chelsea.png", (60, 80, 50, 70)).astype(np.float32) / 255
    up = _upscaler(OutOfMemoryAbove(limit=40 * 40))
    net = up.engine.module  # the runner works on its own copy of the network
    seen = []
    out = up.upscale_array(
        image, UpscaleOptions(tile=64, overlap=4, seamless="off"), progress=lambda d, t: seen.append((d, t))
    )
    assert net.failures == 1  # the smaller size is remembered: no failure per tile
    assert all(h * w <= 40 * 40 for h, w in net.calls)
    np.testing.assert_allclose(out, np.clip(_untiled_blur(image), 0, 1), atol=2e-6)
    assert seen[-1] == (2, 2)  # progress counts the planned tiles (1 x 2), not the emergency splits


def test_out_of_memory_below_the_minimum_tile_raises():
    image = real_image("chelsea.png", (60, 80, 50, 70))
    with pytest.raises(TileOutOfMemoryError, match="out of memory"):
        _upscaler(OutOfMemoryAbove(limit=10)).upscale_array(image, UpscaleOptions(tile=64, seamless="off"))


# --- output size ----------------------------------------------------------------------------------------------


def test_output_sizes_and_passes():
    assert output_size(37, 53, UpscaleOptions(), 4) == (148, 212)
    assert output_size(37, 53, UpscaleOptions(scale=1.5), 4) == (round(55.5), round(79.5))
    assert output_size(37, 53, UpscaleOptions(scale=2, target_size=(100, 60)), 4) == (60, 100)
    assert count_passes(37, 53, 148, 212, 4) == 1
    assert count_passes(37, 53, 74, 106, 4) == 1
    assert count_passes(37, 53, 296, 424, 4) == 2
    assert count_passes(37, 53, 600, 20, 4) == 3
    assert count_passes(37, 53, 296, 424, 1) == 1


def test_any_scale_resamples_the_model_output_with_antialiasing():
    image = real_image("coffee.png", (100, 200, 37, 53))
    up = _upscaler(Nearest())
    out = up.upscale_array(image, UpscaleOptions(scale=2, seamless="off"))
    assert out.shape == (74, 106, 3)
    # Reference: torch's antialiased bicubic downscale of the x4 output.
    x4 = torch.from_numpy(_nearest_up(image).astype(np.float32) / 255).permute(2, 0, 1)[None]
    ref = F.interpolate(x4, size=(74, 106), mode="bicubic", antialias=True, align_corners=False)
    ref = np.clip(ref[0].permute(1, 2, 0).numpy(), 0, 1)
    assert _psnr(out / 255, ref) > 38
    odd = up.upscale_array(image, UpscaleOptions(target_size=(201, 50), seamless="off"))
    assert odd.shape == (50, 201, 3)


def test_scale_above_the_models_runs_it_twice():
    image = real_image("grass.png", (0, 0, 9, 11))
    up = _upscaler(Nearest(scale=2), 2)
    out = up.upscale_array(image, UpscaleOptions(scale=3, seamless="off"))
    assert out.shape == (27, 33, 1)
    assert up.engine.module.calls == [(9, 11), (18, 22)]


@pytest.mark.parametrize("seamless", ["off", "on"])
def test_other_scales_stream_through_the_resampler_like_the_whole_image(seamless):
    # Several tile rows (and, with wrap, the seam rows that arrive last) through the row resampler must give
    # what resampling the whole x4 result at once gives.
    tex = _tileable_texture(24)
    up = _upscaler(BlurUp())
    for target in ((37, 41), (96, 96), (53, 17)):
        options = dict(target_size=target, seamless=seamless, overlap=3)
        tiled = up.upscale_array(tex, UpscaleOptions(tile=7, **options))
        whole_x4 = up.upscale_array(tex, UpscaleOptions(tile=7, seamless=seamless, overlap=3))
        ref = resample(whole_x4.astype(np.float32), target[1], target[0], wrap=seamless == "on")
        assert tiled.shape == (target[1], target[0], 3)
        assert np.abs(tiled.astype(np.float64) - np.clip(ref, 0, 255)).max() <= 1.0


def test_row_resampler_any_arrival_order_holds_few_rows():
    rng = np.random.default_rng(3)
    x = rng.random((300, 41, 3), dtype=np.float32)
    for wrap in (False, True):
        for height, width in ((150, 20), (97, 41), (611, 83), (1, 1)):
            ref = resample(x, height, width, wrap=wrap)
            got = np.full((height, width, 3), np.nan, np.float32)
            seen = np.zeros(height, np.int64)

            def sink(block, row0):
                got[row0 : row0 + len(block)] = block  # noqa: B023 (rs is fed in this iteration only)
                seen[row0 : row0 + len(block)] += 1  # noqa: B023

            rs = RowResampler(300, height, width, sink, wrap=wrap, block=16)
            blocks = [(a, min(300, a + 7)) for a in range(0, 300, 7)]
            held = 0
            for a, b in blocks[2:-1] + [blocks[-1], blocks[0], blocks[1]]:  # seam rows last, as the pipeline does
                rs(x[a:b], a)
                held = max(held, len(rs.rows))
            rs.finish()
            assert (seen == 1).all()
            np.testing.assert_allclose(got, ref, atol=1e-5)
            if height > 1:  # (a 1-row output's kernel spans every input row)
                assert held <= 40, held  # the first rows wait for the last ones; never the whole image
    rs = RowResampler(10, 5, 4, lambda b, r: None)
    rs(np.zeros((10, 4, 3), np.float32), 0)
    with pytest.raises(ValueError, match="arrived twice"):
        rs(np.zeros((1, 4, 3), np.float32), 3)
    with pytest.raises(RuntimeError, match="got 3 of 10 rows"):
        partial = RowResampler(10, 5, 4, lambda b, r: None)
        partial(np.zeros((3, 4, 3), np.float32), 0)
        partial.finish()


def test_passes_above_the_models_scale_stream_into_each_other():
    # x16 from a x4 model, several tile rows per pass: the second pass reads the first one's rows while they
    # are produced (no canvas of the first pass). Same result as running the two passes one after the other.
    image = real_image("coffee.png", (40, 70, 13, 11)).astype(np.float32) / 255
    up = _upscaler(BlurUp())
    options = dict(tile=5, overlap=2, seamless="off")
    chained = up.upscale_array(image, UpscaleOptions(scale=16, **options))
    once = up.upscale_array(image, UpscaleOptions(**options))
    twice = up.upscale_array(once, UpscaleOptions(**options))
    assert chained.shape == (13 * 16, 11 * 16, 3)
    np.testing.assert_allclose(chained, twice, atol=2e-6)
    # RGBA with a varying alpha and a gray image take the same path.
    rgba = np.concatenate([image, (image[:, :, :1] > 0.4).astype(np.float32)], axis=2)
    assert up.upscale_array(rgba, UpscaleOptions(scale=8, **options)).shape == (104, 88, 4)
    assert up.upscale_array(image[:, :, 0], UpscaleOptions(scale=12, **options)).shape == (156, 132)


def test_row_window_serves_slices_and_holds_a_few_blocks():
    from texup.inference.pipeline import _RowWindow

    full = np.random.default_rng(0).random((100, 9, 3), dtype=np.float32)
    held: list[int] = []

    def rows():
        for r in range(0, 100, 8):
            yield full[r : r + 8].copy(), r

    window = _RowWindow(rows(), 100, 9)
    assert window.shape == (100, 9, 3)
    for y0 in range(0, 90, 10):
        np.testing.assert_array_equal(window[y0 : y0 + 14, 2:7], full[y0 : y0 + 14, 2:7])
        np.testing.assert_array_equal(window[y0 : y0 + 14, 0:9], full[y0 : y0 + 14])  # same tile row
        held.append(sum(b.shape[0] for _, b in window._blocks))
    assert max(held) <= 14 + 2 * 8  # the asked rows plus the partial blocks at either end
    with pytest.raises(RuntimeError, match="dropped"):
        window[5:10, 0:9]


def test_resample_wrap_keeps_a_periodic_image_periodic():
    tex = _tileable_texture(24).astype(np.float32) / 255
    small = resample(tex, 17, 17, wrap=True)
    # A periodic image resampled with wrap is a sampling of the same periodic function: shifting the input by
    # a whole number of output pixels' worth (24 -> 17 has no common shift, so compare via a 3x3 tiling).
    big = resample(np.tile(tex, (3, 3, 1)), 51, 51)
    np.testing.assert_allclose(small, big[17:34, 17:34], atol=1e-5)


# --- seamless ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [512, 10])
def test_seamless_on_equals_the_centre_of_a_3x3_tiling(tile):
    tex = _tileable_texture(24).astype(np.float32) / 255
    out = _upscaler(BlurUp()).upscale_array(tex, UpscaleOptions(tile=tile, overlap=4, seamless="on"))
    reference = np.clip(_untiled_blur(np.tile(tex, (3, 3, 1))), 0, 1)[96:192, 96:192]
    np.testing.assert_allclose(out, reference, atol=2e-6)


def test_seamless_auto_detects_tileable_and_non_tileable_inputs():
    tex = _tileable_texture(24)
    up = _upscaler(BlurUp())
    auto = up.upscale_array(tex, UpscaleOptions(tile=10, overlap=4))
    assert np.array_equal(auto, up.upscale_array(tex, UpscaleOptions(tile=10, overlap=4, seamless="on")))
    photo = real_image("coffee.png", (100, 100, 24, 24))
    auto = up.upscale_array(photo, UpscaleOptions(tile=10, overlap=4))
    assert np.array_equal(auto, up.upscale_array(photo, UpscaleOptions(tile=10, overlap=4, seamless="off")))
    assert not np.array_equal(auto, up.upscale_array(photo, UpscaleOptions(tile=10, overlap=4, seamless="on")))


# --- alpha -------------------------------------------------------------------------------------------------------


def test_constant_alpha_passes_through_and_costs_no_model_run():
    rgb = real_image("coffee.png", (100, 100, 20, 24))
    rgba = np.concatenate([rgb, np.full((20, 24, 1), 200, np.uint8)], axis=2)
    seen = []
    out = _upscaler(Nearest()).upscale_array(
        rgba, UpscaleOptions(tile=16, overlap=4, seamless="off"), progress=lambda d, t: seen.append(t)
    )
    assert np.all(out[..., 3] == 200)
    assert seen[-1] == 4  # colour tiles only
    f16 = np.concatenate([rgb / 255, np.full((20, 24, 1), 0.3)], axis=2).astype(np.float16)
    out16 = _upscaler(Nearest()).upscale_array(f16, UpscaleOptions(seamless="off"))
    assert np.all(out16[..., 3] == np.float16(0.3))


def _cutout() -> np.ndarray:
    """RGBA: a bright, real-textured opaque disc with a soft edge; black colour under alpha == 0."""
    h = w = 40
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - 20, xx - 20)
    alpha = np.clip((13 - radius) / 3, 0, 1)
    texture = real_image("gravel.png", (200, 200, h, w))[..., 0] / 255
    colour = np.stack([0.95 - 0.1 * texture, 0.85 - 0.1 * texture, 0.4 + 0.1 * texture], axis=2)
    colour[alpha == 0] = 0.0
    return np.round(np.concatenate([colour, alpha[..., None]], axis=2) * 255).astype(np.uint8)


def test_no_dark_fringe_around_cutouts():
    rgba = _cutout()
    options = UpscaleOptions(tile=16, overlap=4, seamless="off")
    out = _upscaler(BlurUp()).upscale_array(rgba, options).astype(np.float64) / 255
    visible = out[..., 3] > 0.02
    luma = out[..., :3] @ [0.2126, 0.7152, 0.0722]
    opaque_luma = (rgba[..., :3] / 255 @ [0.2126, 0.7152, 0.0722])[rgba[..., 3] == 255]
    assert luma[visible].min() > opaque_luma.min() - 0.03
    # The same colour upscaled without the alpha policy does darken at the edge: the check can fail.
    naive = _upscaler(BlurUp()).upscale_array(rgba[..., :3], options).astype(np.float64) / 255
    assert (naive @ [0.2126, 0.7152, 0.0722])[visible].min() < opaque_luma.min() - 0.2


def test_bleed_colour_keeps_visible_pixels_and_fills_holes_from_neighbours():
    rgba = _cutout().astype(np.float32) / 255
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    filled = policy.bleed_colour(rgb, alpha)
    assert np.array_equal(filled[alpha > 0], rgb[alpha > 0])
    holes = alpha == 0
    assert np.all(np.isfinite(filled))
    # Every hole takes a colour from the visible palette's range, not black.
    lo, hi = rgb[~holes].min(axis=0), rgb[~holes].max(axis=0)
    assert np.all((filled[holes] >= lo - 1e-6) & (filled[holes] <= hi + 1e-6))
    assert np.array_equal(policy.bleed_colour(rgb, np.ones_like(alpha)), rgb)
    assert np.array_equal(policy.bleed_colour(rgb, np.zeros_like(alpha)), rgb)


# --- roles and colour spaces --------------------------------------------------------------------------------------


def _normal_map(dtype: str) -> np.ndarray:
    height = real_image("gravel.png", (0, 0, 33, 45))[..., 0].astype(np.float64) / 255 * 4
    gy, gx = np.gradient(height)
    n = np.stack([-gx, -gy, np.ones_like(height)], axis=2)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    enc = n * 0.5 + 0.5
    return np.round(enc * 255).astype(np.uint8) if dtype == "uint8" else np.round(enc * 65535).astype(np.uint16)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_normal_role_outputs_unit_vectors_and_keeps_the_convention(dtype):
    normals = _normal_map(dtype)
    peak = 255.0 if dtype == "uint8" else 65535.0
    up = _upscaler(BlurUp())
    out = up.upscale_array(normals, UpscaleOptions(tile=16, overlap=4, role="normal", seamless="off"))
    v = out.astype(np.float64) / peak * 2 - 1
    length = np.linalg.norm(v, axis=2)
    assert np.abs(length - 1).max() < 2 * np.sqrt(3) / peak
    # Same convention as the input (no flipped axis): each component follows the input's, away from the
    # stand-in network's zero-padded border.
    v_in = _nearest_up(normals).astype(np.float64) / peak * 2 - 1
    for c in range(3):
        corr = np.corrcoef(v[8:-8, 8:-8, c].ravel(), v_in[8:-8, 8:-8, c].ravel())[0, 1]
        assert corr > 0.8, (c, corr)
    # Without the normal policy the blur shortens the vectors: the policy is what makes them unit length.
    as_colour = up.upscale_array(normals, UpscaleOptions(tile=16, overlap=4, seamless="off"))
    assert np.abs(np.linalg.norm(as_colour / peak * 2 - 1, axis=2) - 1).max() > 0.02


def test_data_role_passes_values_through_including_out_of_range_floats():
    height = real_image("gravel.png", (0, 0, 70, 20))[..., 0].astype(np.float32) / 255
    data = np.stack([height * 7 - 2, height, 1 - height], axis=2).astype(np.float32)  # first channel in [-2, 5]
    out = _upscaler(Nearest()).upscale_array(data, UpscaleOptions(role="data", seamless="off"))
    assert out.shape == (280, 80, 3)  # more rows than one conversion block
    np.testing.assert_allclose(out, _nearest_up(data), atol=1e-5)


def test_non_finite_float_pixels_do_not_poison_the_output():
    rgb = real_image("coffee.png", (100, 100, 12, 12)).astype(np.float32) / 255
    rgb[3, 4] = np.nan
    rgb[5, 6, 1] = np.inf
    out = _upscaler(BlurUp()).upscale_array(rgb, UpscaleOptions(seamless="off"))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(
        out[40:, :12], np.clip(_untiled_blur(np.nan_to_num(rgb, posinf=1.0)), 0, 1)[40:, :12], atol=1e-6
    )


def test_linear_hdr_colour_round_trips_through_srgb():
    rgb = real_image("coffee.png", (100, 100, 20, 30)).astype(np.float32) / 255
    linear = (rgb**2.2 * 6.0).astype(np.float32)  # HDR: up to 6
    out = _upscaler(Nearest()).upscale_array(linear, UpscaleOptions(seamless="off"), colorspace="linear")
    np.testing.assert_allclose(out, _nearest_up(linear), rtol=1e-4, atol=1e-5)
    assert linear.max() > 3 and out.max() == pytest.approx(linear.max(), rel=1e-4)  # highlights kept
    # The model sees sRGB-encoded values: a linear mid grey 0.214 reaches it as about 0.5.
    seen = []

    class Spy(Nearest):
        def forward(self, x):
            seen.append(float(x.mean()))
            return super().forward(x)

    _upscaler(Spy()).upscale_array(np.full((4, 4, 3), 0.214, np.float32), colorspace="linear")
    assert seen[0] == pytest.approx(0.5, abs=0.01)


# --- files -----------------------------------------------------------------------------------------------------------


def test_upscale_file_keeps_format_and_bit_depth(tmp_path):
    rgb16 = real_image("coffee.png", (100, 100, 21, 19)).astype(np.uint16) * 257
    alpha = (np.linspace(0, 65535, 21 * 19).reshape(21, 19, 1)).astype(np.uint16)
    src = tmp_path / "in.png"
    write_image(src, np.concatenate([rgb16, alpha], axis=2))
    dst = tmp_path / "out" / "up.png"
    dst.parent.mkdir()
    result = _upscaler(Nearest()).upscale_file(src, dst, UpscaleOptions(seamless="off"))
    assert result == dst
    image = read_image(dst)
    assert image.pixels.shape == (84, 76, 4) and image.pixels.dtype == np.uint16
    assert image.info.format == read_image(src).info.format


def test_upscale_file_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / "tex.png"
    write_image(src, real_image("coffee.png", (0, 0, 8, 8)))
    before = src.read_bytes()
    up = _upscaler(Nearest())
    for dst in (src, tmp_path / "sub" / ".." / "tex.png"):
        with pytest.raises(ImageWriteError, match="refusing to overwrite"):
            up.upscale_file(src, dst)
    (tmp_path / "link.png").symlink_to(src)
    with pytest.raises(ImageWriteError):
        up.upscale_file(src, tmp_path / "link.png")
    assert src.read_bytes() == before


# --- real model -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def x4plus():
    from texup.weights import registry

    return registry.load_pretrained("realesrgan-x4plus")


@pytest.fixture(scope="module")
def x4plus_fp32(x4plus):
    return Upscaler(x4plus, device="cpu", precision="fp32")


@pytest.mark.slow  # the real x4plus model
def test_real_model_tiled_matches_untiled(x4plus_fp32):
    crop = real_image("coffee.png", (150, 250, 48, 40))
    untiled = x4plus_fp32.upscale_array(crop, UpscaleOptions(tile=64, seamless="off"))
    tiled = x4plus_fp32.upscale_array(crop, UpscaleOptions(tile=24, overlap=16, seamless="off"))
    assert _psnr(tiled / 255, untiled / 255) > 45
    # Without overlap the seams show: the context is what makes tiling invisible.
    hard = x4plus_fp32.upscale_array(crop, UpscaleOptions(tile=24, overlap=0, seamless="off"))
    assert _psnr(hard / 255, untiled / 255) < _psnr(tiled / 255, untiled / 255) - 3


@pytest.mark.slow  # the real x4plus model
def test_real_model_keeps_a_tileable_texture_tileable(x4plus_fp32):
    tex = _tileable_texture(16)
    out = x4plus_fp32.upscale_array(tex, UpscaleOptions(tile=16, overlap=8, seamless="on")).astype(np.float64)
    # Seam continuity equals interior continuity: the jump across the wrap seam is a typical neighbour jump.
    rows = np.abs(np.diff(out, axis=0)).mean(axis=(1, 2))
    cols = np.abs(np.diff(out, axis=1)).mean(axis=(0, 2))
    seam_row = np.abs(out[0] - out[-1]).mean()
    seam_col = np.abs(out[:, 0] - out[:, -1]).mean()
    assert seam_row <= 1.5 * np.median(rows) and seam_col <= 1.5 * np.median(cols)
    # And it is what the model makes of the infinite periodic plane: the centre of a 3x3 tiling.
    centre = x4plus_fp32.upscale_array(np.tile(tex, (3, 3, 1)), UpscaleOptions(tile=48, seamless="off"))[64:128, 64:128]
    assert _psnr(out / 255, centre / 255) > 40
    off = x4plus_fp32.upscale_array(tex, UpscaleOptions(tile=16, overlap=8, seamless="off")).astype(np.float64)
    assert np.abs(off[0] - off[-1]).mean() > seam_row  # without wrap the seam is worse


@pytest.mark.slow  # the real x4plus model
def test_real_model_bf16_is_close_to_fp32(x4plus, x4plus_fp32):
    crop = real_image("astronaut.png", (100, 200, 24, 24))
    reference = x4plus_fp32.upscale_array(crop, UpscaleOptions(seamless="off"))
    bf16 = Upscaler(x4plus, device="cpu", precision="bf16").upscale_array(crop, UpscaleOptions(seamless="off"))
    assert _psnr(bf16 / 255, reference / 255) >= 40


def test_overlap_larger_than_tile_is_refused():
    assert UpscaleOptions(tile=16, overlap=16).overlap == 16
    assert UpscaleOptions(overlap=200).overlap == 200  # automatic tile: nothing to compare with here
    with pytest.raises(ValueError, match="overlap"):
        UpscaleOptions(tile=16, overlap=200)
