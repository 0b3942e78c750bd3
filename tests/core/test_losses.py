"""Losses: values against definitions, gradients, and the relativistic average GAN's behaviour."""
from __future__ import annotations

import math

import pytest
import torch

from texup.archs.discriminator import build_discriminator
from texup.archs.vgg import VGG19Features, load_vgg19_features
from texup.errors import ModelLoadError
from texup.training.losses import FeatureMatchingLoss, PerceptualLoss, PixelLoss, RelativisticGANLoss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pixel_loss_is_mean_absolute_error() -> None:
    sr = torch.zeros(2, 3, 5, 7)
    hr = torch.zeros(2, 3, 5, 7)
    hr[0, 0, 0, 0] = 1.0
    assert PixelLoss()(sr, hr).item() == pytest.approx(1.0 / sr.numel())
    assert PixelLoss()(hr, hr).item() == 0.0


def _tiny_vgg() -> VGG19Features:
    torch.manual_seed(0)
    vgg = VGG19Features("conv2_2")
    for p in vgg.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return vgg


def test_perceptual_loss_zero_for_identical_and_grad_only_to_sr() -> None:
    loss = PerceptualLoss(_tiny_vgg())
    hr = torch.rand(2, 3, 24, 24, requires_grad=True)
    sr = torch.rand(2, 3, 24, 24, requires_grad=True)
    assert loss(hr.detach(), hr.detach()).item() == 0.0
    value = loss(sr, hr)
    value.backward()
    assert value.item() > 0 and sr.grad is not None and sr.grad.abs().sum() > 0
    assert hr.grad is None


def test_perceptual_loss_grows_with_distortion() -> None:
    loss = PerceptualLoss(_tiny_vgg())
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(1, 3, 32, 32, generator=g)
    noise = torch.randn(1, 3, 32, 32, generator=g)
    values = [loss((hr + s * noise).clamp(0, 1), hr).item() for s in (0.01, 0.05, 0.2)]
    assert values[0] < values[1] < values[2]


def test_vgg19_loads_torchvision_format_and_refuses_others(tmp_path) -> None:
    from safetensors.torch import save_file

    src = VGG19Features("conv5_4")
    sd = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too: ignored
    good = tmp_path / "vgg19.safetensors"
    save_file(sd, str(good))
    vgg = load_vgg19_features(good)
    assert torch.equal(vgg.state_dict()["features.34.weight"], sd["features.34.weight"])
    del sd["features.34.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ModelLoadError, match="features.34.bias") as info:
        load_vgg19_features(bad)
    assert "bad.safetensors" in str(info.value)


def test_feature_matching_loss() -> None:
    torch.manual_seed(0)
    disc = build_discriminator("vgg19", {"channels": [4, 4, 8, 8, 8], "fc": [8, 8, 8]})
    fm = FeatureMatchingLoss(disc)
    hr = torch.rand(2, 3, 64, 64)
    sr = torch.rand(2, 3, 64, 64, requires_grad=True)
    assert fm(hr, hr).item() == 0.0
    fm(sr, hr).backward()
    assert sr.grad.abs().sum() > 0
    assert not list(fm.parameters()), "the discriminator must not be registered as the loss's parameter"


def _bce(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_ragan_matches_definition() -> None:
    real = torch.tensor([[2.0], [0.5], [1.0]])
    fake = torch.tensor([[-1.0], [0.0], [0.3]])
    rm, fm = real.mean().item(), fake.mean().item()
    d_expected = (sum(_bce(r - fm, 1) for r in real.flatten().tolist()) / 3
                  + sum(_bce(f - rm, 0) for f in fake.flatten().tolist()) / 3) / 2
    g_expected = (sum(_bce(r - fm, 0) for r in real.flatten().tolist()) / 3
                  + sum(_bce(f - rm, 1) for f in fake.flatten().tolist()) / 3) / 2
    gan = RelativisticGANLoss()
    assert gan.discriminator(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert gan.generator(real, fake).item() == pytest.approx(g_expected, rel=1e-6)


def test_ragan_pushes_in_the_right_directions() -> None:
    gan = RelativisticGANLoss()
    real = torch.randn(8, 1, requires_grad=True)
    fake = torch.randn(8, 1, requires_grad=True)
    gan.discriminator(real, fake).backward()
    # The discriminator wants real logits up and fake logits down.
    assert (real.grad.sum() < 0) and (fake.grad.sum() > 0)
    real.grad = fake.grad = None
    gan.generator(real.detach(), fake).backward()
    assert fake.grad.sum() < 0
    # Works on per-pixel logits (U-Net discriminator) too.
    assert gan.generator(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)).ndim == 0


def test_ragan_uses_the_given_batch_mean() -> None:
    calls = []

    def mean(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return t.mean()

    RelativisticGANLoss(mean).generator(torch.randn(4, 1), torch.randn(4, 1))
    assert len(calls) == 2
