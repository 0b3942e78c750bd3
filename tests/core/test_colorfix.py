"""The colour fix (texup.inference.colorfix) and its hook in the pipeline: the source's low frequencies, the model's
high frequencies, alpha untouched, seamless kept, no quantisation beyond the output's, normals renormalised."""

from __future__ import annotations

import numpy as np
import pytest
from realdata import real_image

from texup.engines.base import Engine
from texup.inference import colorfix
from texup.inference.pipeline import UpscaleOptions, Upscaler
from texup.inference.resample import resample


def _area(x: np.ndarray, f: int) -> np.ndarray:
    h, w = x.shape[0] // f, x.shape[1] // f
    return x.reshape(h, f, w, f, *x.shape[2:]).mean(axis=(1, 3))


def _block_drift(out: np.ndarray, source: np.ndarray) -> float:
    """Largest difference between 4x4-block means of the area-downscaled output and of the source."""
    f = out.shape[0] // source.shape[0]
    return float(np.abs(_area(_area(out, f), 4) - _area(source, 4)).max())


def _detail(x: np.ndarray, f: int) -> np.ndarray:
    """What lies above the source's resolution: x minus its area-downscaled-and-upsampled self."""
    return x - np.repeat(np.repeat(_area(x, f), f, axis=0), f, axis=1)


@pytest.fixture(scope="module")
def coffee() -> tuple[np.ndarray, np.ndarray]:
    """A real photo (the truth, 192 px) and its x4 area-downscaled source (48 px), float32 in [0, 1]."""
    truth = real_image("coffee.png", crop=(40, 160, 192, 192)).astype(np.float32) / 255
    return truth, _area(truth, 4).astype(np.float32)


def _drifted(truth: np.ndarray) -> np.ndarray:
    """The truth with a model's kind of low-frequency error: a white-balance shift and a smooth contrast ramp."""
    h, w = truth.shape[:2]
    ramp = np.linspace(-0.06, 0.06, w, dtype=np.float32)[None, :, None]
    return np.clip(truth * np.float32(1.08) + np.array([0.04, -0.02, 0.03], np.float32) + ramp, 0, 1)


def test_low_frequencies_are_the_sources_and_high_ones_the_outputs(coffee):
    truth, source = coffee
    output = _drifted(truth)
    assert _block_drift(output, source) > 0.05  # the drift the fix has to take out
    fixed = colorfix.transfer(source, output)
    assert _block_drift(fixed, source) < 0.01
    # The fine detail above the source's resolution is the output's, nearly untouched.
    kept = _detail(fixed, 4) - _detail(output, 4)
    assert np.abs(kept).mean() < 0.1 * np.abs(_detail(output, 4)).mean()
    assert 0.97 < _detail(fixed, 4).std() / _detail(output, 4).std() < 1.03
    # An output with no drift is barely changed.
    assert np.abs(colorfix.transfer(source, truth) - truth).mean() < 0.01


def test_wrap_around_keeps_a_seamless_texture_seamless():
    rng = np.random.default_rng(3)
    source = resample(rng.random((16, 16, 3)).astype(np.float32), 24, 24, wrap=True)  # periodic, smooth
    output = np.clip(resample(source, 96, 96, wrap=True) * 1.1 + rng.normal(0, 0.05, (96, 96, 3)), 0, 1)
    output = output.astype(np.float32)
    fixed = colorfix.transfer(source, output, wrap=True)
    # Shifting the texture by whole source pixels shifts the result exactly: no edge is special.
    shifted = colorfix.transfer(np.roll(source, (5, 7), (0, 1)), np.roll(output, (20, 28), (0, 1)), wrap=True)
    np.testing.assert_allclose(shifted, np.roll(fixed, (20, 28), (0, 1)), atol=2e-6)
    # Without wrap the edges are clamped, and the same shift does not commute.
    clamped = colorfix.transfer(np.roll(source, (5, 7), (0, 1)), np.roll(output, (20, 28), (0, 1)))
    assert np.abs(clamped - np.roll(colorfix.transfer(source, output), (20, 28), (0, 1))).max() > 1e-3


def test_any_output_size_and_auto_per_role():
    source = np.full((10, 12, 3), 0.5, np.float32)
    fixed = colorfix.transfer(source, np.full((25, 29, 3), 0.4, np.float32))  # not a whole multiple
    np.testing.assert_allclose(fixed, 0.5, atol=1e-5)
    assert colorfix.enabled("on", "normal") and not colorfix.enabled("off", "color")
    assert colorfix.enabled("auto", "color") is colorfix.AUTO["color"]
    with pytest.raises(ValueError, match="color_fix"):
        colorfix.enabled("maybe", "color")
    with pytest.raises(ValueError, match="color_fix"):
        UpscaleOptions(color_fix="maybe")


class _Drift:
    """An engine that upscales x4 by pixel repetition and drifts the colour: brighter, bluer (no torch)."""

    gain, offset = 0.9, (0.05, 0.0, 0.08)
    name, device, precision, model_name, scale, input_multiple = "drift", "cpu", "fp32", "drift", 4, 1

    def run_tile(self, tile, *, cancel=None, step=None):
        up = np.repeat(np.repeat(tile, 4, axis=0), 4, axis=1)
        return up * np.float32(self.gain) + np.array(self.offset, np.float32)

    def auto_tile(self, *, overlap, out_width):
        return 64

    def describe(self):
        return "drift"

    def free_cached_memory(self):
        pass


class _Tilt(_Drift):
    """Tilts every normal towards +X."""

    gain, offset = 1.0, (0.1, 0.0, 0.0)


def _upscale(pixels: np.ndarray, engine_class: type = _Drift, **options) -> np.ndarray:
    engine = engine_class()
    assert isinstance(engine, Engine)
    return Upscaler(engine).upscale_array(pixels, UpscaleOptions(**{"seamless": "off", **options}))


def test_pipeline_fix_of_a_seamless_run_keeps_the_texture_tileable():
    rng = np.random.default_rng(7)
    tex = resample(rng.random((8, 8, 3)).astype(np.float32), 32, 32, wrap=True)  # periodic
    tex = np.clip(tex + rng.normal(0, 0.05, tex.shape).astype(np.float32), 0, 1)
    shift = (3, 5)
    for seamless, equal in (("on", True), ("off", False)):
        out = _upscale(tex, seamless=seamless, color_fix="on")
        moved = _upscale(np.roll(tex, shift, (0, 1)), seamless=seamless, color_fix="on")
        # A periodic run has no edge: the texture shifted by whole pixels comes out shifted by whole output pixels.
        same = np.allclose(moved, np.roll(out, (4 * shift[0], 4 * shift[1]), (0, 1)), atol=2e-6)
        assert same is equal, seamless


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_pipeline_fix_is_exact_in_the_outputs_own_sample_type(coffee, dtype):
    truth, source = coffee
    scale = {"uint8": 255, "uint16": 65535, "float32": 1}[dtype]
    pixels = (source * scale).round().astype(dtype) if dtype != "float32" else source
    as_float = pixels.astype(np.float32) / np.float32(scale)
    raw = np.repeat(np.repeat(as_float, 4, axis=0), 4, axis=1) * np.float32(0.9) + np.array([0.05, 0, 0.08], np.float32)
    expected = np.clip(colorfix.transfer(as_float, raw), 0, 1)
    fixed = _upscale(pixels, color_fix="on")
    assert fixed.dtype == pixels.dtype
    if dtype == "float32":
        np.testing.assert_array_equal(fixed, expected)  # no quantisation at all
    else:  # one rounding, the output's own: never more than half a step away
        assert np.abs(fixed.astype(np.float64) / scale - expected).max() <= 0.5 / scale + 1e-6
    off = _upscale(pixels, color_fix="off").astype(np.float64) / scale
    assert _block_drift(off, as_float) > 0.03 and _block_drift(fixed.astype(np.float64) / scale, as_float) < 0.01


def test_pipeline_leaves_alpha_alone(coffee):
    _, source = coffee
    h, w = source.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = np.clip((18 - np.hypot(yy - h / 2, xx - w / 2)) / 6, 0, 1).astype(np.float32)
    rgba = np.concatenate([source, alpha[:, :, None]], axis=2)
    on, off = _upscale(rgba, color_fix="on"), _upscale(rgba, color_fix="off")
    np.testing.assert_array_equal(on[:, :, 3], off[:, :, 3])
    assert np.abs(on[:, :, :3] - off[:, :, :3]).max() > 0.03


def test_pipeline_renormalises_normal_maps_after_the_fix():
    rng = np.random.default_rng(5)
    v = rng.normal(0, 0.3, (32, 32, 3)).astype(np.float32)
    v[:, :, 2] = 1.0
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    encoded = (v * 0.5 + 0.5).astype(np.float32)
    on = _upscale(encoded, _Tilt, role="normal", color_fix="on")
    off = _upscale(encoded, _Tilt, role="normal", color_fix="off")
    np.testing.assert_allclose(np.linalg.norm(on * 2 - 1, axis=2), 1.0, atol=1e-5)
    assert np.abs(on - off).max() > 0.01  # the fix did something before the renormalisation
    # The engine tilts every normal towards +X; the fix takes most of the tilt out again.
    tilt_on, tilt_off = (abs(float(x[:, :, 0].mean() - encoded[:, :, 0].mean())) for x in (on, off))
    assert tilt_off > 0.02 and tilt_on < 0.3 * tilt_off
