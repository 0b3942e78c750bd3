"""How a varying alpha is upscaled (texup.inference.alpha, ``UpscaleOptions.alpha``): the network where the alpha has
hard edges it keeps, cubic resampling for soft edges and gradients (no model pass for them) and wherever the
network's alpha does not downscale back to the source. Stand-in networks (torch modules) make each branch certain;
scripts/bench_alpha.py measures the rule against the truth with the real models (tests/test_benchmarks.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.filters import gaussian

from texup.imageio import from_float32
from texup.inference import alpha as alpha_rule
from texup.inference.pipeline import UpscaleOptions, Upscaler
from texup.inference.resample import resample


class Nearest(torch.nn.Module):
    """Nearest x4, counting its calls (one per tile)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.interpolate(x, scale_factor=4, mode="nearest") + self.anchor


class Inverting(Nearest):
    """A network that ruins what it is shown (1 - x): its alpha cannot downscale back to the source."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - super().forward(x)


def _upscaler(module: torch.nn.Module) -> Upscaler:
    model = SimpleNamespace(module=module, scale=4, input_multiple=1, name="stand-in", hparams={}, arch="x")
    return Upscaler(model, device="cpu", precision="fp32")


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian(a.astype(np.float64), sigma=sigma, mode="reflect", preserve_range=True)


def _area(a: np.ndarray, f: int = 4) -> np.ndarray:
    h, w = a.shape[0] // f, a.shape[1] // f
    return a[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3))


def _hard_mask(h: int = 37, w: int = 29) -> np.ndarray:
    """An odd-sized alpha as a texture holds a hard cutout: a disc and a bar, area-sampled from 4x (0..1)."""
    yy, xx = np.mgrid[0 : 4 * h, 0 : 4 * w]
    disc = np.hypot(yy - 2.1 * h, xx - 1.7 * w) < 1.3 * min(h, w)
    bar = (abs(yy - 0.6 * h) < 0.3 * h) & (xx > 2.6 * w)
    return _area((disc | bar).astype(np.float64))


def _soft(mask_hr_sigma: float = 12.0, h: int = 37, w: int = 29) -> np.ndarray:
    """The same shapes with a soft falloff (a decal's edge): blurred at 4x before the area downscale."""
    yy, xx = np.mgrid[0 : 4 * h, 0 : 4 * w]
    disc = np.hypot(yy - 2.1 * h, xx - 1.7 * w) < 1.3 * min(h, w)
    bar = (abs(yy - 0.6 * h) < 0.3 * h) & (xx > 2.6 * w)
    return _area(_blur((disc | bar).astype(np.float64), mask_hr_sigma))


def _rgba(alpha01: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    colour = np.full((*alpha01.shape, 3), 0.5, np.float32)
    return from_float32(np.concatenate([colour, alpha01[..., None].astype(np.float32)], axis=2), dtype)


# --- the rule on its own -----------------------------------------------------------------------------------------


def test_hard_edges_are_told_from_soft_edges_and_gradients():
    assert alpha_rule.hard_edge_share(_hard_mask()) >= alpha_rule.HARD_EDGE_SHARE
    for sigma in (8.0, 12.0, 24.0):  # 2, 3 and 6 source pixels of falloff
        assert alpha_rule.hard_edge_share(_soft(sigma)) < alpha_rule.HARD_EDGE_SHARE, sigma
    ramp = np.tile(np.linspace(0, 1, 40), (30, 1))
    assert alpha_rule.hard_edge_share(ramp) == 0.0  # no transition at all
    assert alpha_rule.hard_edge_share(np.zeros((5, 5))) == 0.0
    assert alpha_rule.hard_edge_share(np.array([[0.0, 1.0]])) == 0.0  # too small to judge: no transitions
    with pytest.raises(ValueError, match="expected an"):
        alpha_rule.hard_edge_share(np.zeros((4, 4, 1)))


def test_the_round_trip_verdict():
    assert alpha_rule.keeps_model(0.010, 0.010)
    assert alpha_rule.keeps_model(0.012, 0.010)  # within the margin
    assert not alpha_rule.keeps_model(0.02, 0.010)
    assert alpha_rule.keeps_model(0.0005, 0.00001)  # both exact to 8 bits: noise does not decide
    alpha = _hard_mask()
    assert alpha_rule.resampled_error(alpha, 148, 116, False) < 0.05


# --- the pipeline ------------------------------------------------------------------------------------------------


def test_auto_resamples_a_soft_alpha_without_a_model_pass():
    up = _upscaler(Nearest())
    alpha = _soft()
    out = up.upscale_array(_rgba(alpha), UpscaleOptions(seamless="off", color_fix="off"))
    assert up.last_alpha == "resample"
    assert up.engine.module.calls == 1  # the colour only
    source = _rgba(alpha)[..., 3] / 255.0
    expected = from_float32(np.clip(resample(source.astype(np.float32), 148, 116), 0, 1), "uint8")
    assert np.array_equal(out[..., 3], expected)
    assert out.shape == (148, 116, 4) and out.dtype == np.uint8


def test_auto_keeps_the_networks_alpha_where_it_has_hard_edges_and_matches_the_source():
    up = _upscaler(Nearest())
    rgba = _rgba(_hard_mask())
    out = up.upscale_array(rgba, UpscaleOptions(seamless="off", color_fix="off"))
    assert up.last_alpha == "model"
    assert up.engine.module.calls == 2  # colour, then alpha
    assert np.array_equal(out[..., 3], rgba[..., 3].repeat(4, axis=0).repeat(4, axis=1))


def test_auto_replaces_a_network_alpha_that_does_not_match_the_source():
    up = _upscaler(Inverting())
    alpha = _hard_mask()
    out = up.upscale_array(_rgba(alpha), UpscaleOptions(seamless="off", color_fix="off"))
    assert up.last_alpha == "resample (the network's alpha did not match the source)"
    source = _rgba(alpha)[..., 3] / 255.0
    expected = from_float32(np.clip(resample(source.astype(np.float32), 148, 116), 0, 1), "uint8")
    assert np.array_equal(out[..., 3], expected)


@pytest.mark.parametrize("mode, calls, took", [("model", 2, "model"), ("resample", 1, "resample")])
def test_model_and_resample_are_what_they_say_on_either_alpha(mode, calls, took):
    for alpha in (_soft(), _hard_mask()):
        up = _upscaler(Inverting())
        out = up.upscale_array(_rgba(alpha), UpscaleOptions(alpha=mode, seamless="off", color_fix="off"))
        assert (up.engine.module.calls, up.last_alpha) == (calls, took)
        source = _rgba(alpha)[..., 3]
        if mode == "model":  # the inverting network's alpha is kept, however wrong
            assert np.array_equal(out[..., 3], 255 - source.repeat(4, axis=0).repeat(4, axis=1))


def test_sixteen_bit_gray_alpha_other_sizes_and_seamless_wrap():
    alpha = _soft(8.0, 30, 22)
    # LA, 16 bit, exact output size (a resampled size, not the model's x4): the alpha is resampled once to it
    la = from_float32(np.stack([np.full(alpha.shape, 0.25, np.float32), alpha.astype(np.float32)], axis=2), "uint16")
    up = _upscaler(Nearest())
    out = up.upscale_array(la, UpscaleOptions(target_size=(50, 71), seamless="off", color_fix="off"))
    assert out.shape == (71, 50, 2) and out.dtype == np.uint16 and up.last_alpha == "resample"
    expected = from_float32(np.clip(resample((la[..., 1] / 65535.0).astype(np.float32), 71, 50), 0, 1), "uint16")
    assert np.abs(out[..., 1].astype(np.int64) - expected).max() <= 1  # float rounding of 16-bit samples
    # seamless: the resampled alpha wraps around, so it stays tileable
    yy, xx = np.mgrid[0:24, 0:20]
    periodic = 0.5 + 0.4 * np.sin(2 * np.pi * yy / 24) * np.cos(2 * np.pi * xx / 20)
    out = up.upscale_array(_rgba(periodic), UpscaleOptions(seamless="on", color_fix="off"))
    assert up.last_alpha == "resample"
    source = _rgba(periodic)[..., 3] / 255.0
    wrapped = from_float32(np.clip(resample(source.astype(np.float32), 96, 80, wrap=True), 0, 1), "uint8")
    assert np.array_equal(out[..., 3], wrapped)


def test_an_image_without_a_varying_alpha_says_so():
    up = _upscaler(Nearest())
    up.upscale_array(_rgba(_hard_mask()), UpscaleOptions(seamless="off", color_fix="off"))
    assert up.last_alpha == "model"
    up.upscale_array(np.full((9, 7, 3), 100, np.uint8), UpscaleOptions(seamless="off", color_fix="off"))
    assert up.last_alpha is None
    with pytest.raises(ValueError, match="alpha"):
        UpscaleOptions(alpha="bicubic")
