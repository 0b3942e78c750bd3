"""Discriminators: shapes, gradients and crop-size rules on tiny widths (fast on CPU)."""

from __future__ import annotations

import pytest
import torch

from texup.archs.discriminator import (
    DISCRIMINATORS,
    UNetDiscriminatorSN,
    VGG19Discriminator,
    VGG19FC4Discriminator,
    VGGStyleDiscriminator,
    build_discriminator,
    crop_requirement,
)
from texup.archs.vgg import VGG19Features, layer_indices

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = {
    "vgg128": {"num_feat": 4},
    "vgg256": {"num_feat": 4},
    "vgg19": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8]},
    "vgg19-fc4": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8, 12]},
    "unet": {"num_feat": 4},
}


def _forward_backward(disc: torch.nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    x = torch.rand(batch, 3, size, size, requires_grad=True)
    logits = disc(x)
    logits.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in disc.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    return logits


@pytest.mark.parametrize("size", [128])
def test_vgg128_forward_backward(size: int) -> None:
    torch.manual_seed(0)
    disc = build_discriminator("vgg128", TINY["vgg128"])
    assert _forward_backward(disc, size).shape == (2, 1)


def test_vgg256_forward_backward() -> None:
    torch.manual_seed(0)
    disc = build_discriminator("vgg256", TINY["vgg256"])
    assert _forward_backward(disc, 256, batch=2).shape == (2, 1)


@pytest.mark.parametrize("size", [32, 48, 96, 128, 200])
def test_vgg19_any_crop_size(size: int) -> None:
    torch.manual_seed(0)
    disc = build_discriminator("vgg19", TINY["vgg19"])
    assert _forward_backward(disc, size).shape == (2, 1)


@pytest.mark.parametrize("size", [32, 33, 47, 97, 224])
def test_vgg19_fc4_any_crop_size_gives_fc_last_outputs(size: int) -> None:
    torch.manual_seed(0)
    disc = build_discriminator("vgg19-fc4", TINY["vgg19-fc4"])
    assert _forward_backward(disc, size).shape == (2, 12)
    _, feats = disc.forward_features(torch.rand(1, 3, size, size))
    sides = [size]
    for _ in range(5):
        sides.append(sides[-1] // 2)  # 2x2 max pooling floors odd sides
    assert [f.shape[-1] for f in feats] == sides[1:]


def test_vgg19_fc4_full_layout_at_224() -> None:
    """The design's numbers: 224x224x3 -> 7x7x512 -> 25,088 -> 4096 -> 4096 -> 1000 -> 1000."""
    torch.manual_seed(0)
    disc = VGG19FC4Discriminator()
    assert disc.hparams == {"num_in_ch": 3, "channels": [64, 128, 256, 512, 512], "fc": [4096, 4096, 1000, 1000]}
    convs = [m for m in disc.features if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in disc.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 16 and all(c.kernel_size == (3, 3) for c in convs)
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    assert not any(
        isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm))
        for m in disc.modules()
    )
    linears = [m for m in disc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (25088, 4096),
        (4096, 4096),
        (4096, 1000),
        (1000, 1000),
    ]
    with torch.no_grad():
        out, feats = disc.forward_features(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all() and out.std() > 0
    assert feats[-1].shape == (1, 512, 7, 7) and feats[-1].flatten(1).shape[1] == 25088
    assert [f.shape[1:] for f in feats[:4]] == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14)]


def test_vgg19_fc_widths_are_checked() -> None:
    with pytest.raises(ValueError, match="4 FC widths"):
        VGG19FC4Discriminator(fc=[16, 16, 8])
    with pytest.raises(ValueError, match="3 FC widths"):
        VGG19Discriminator(fc=[16, 16, 8, 8])


@pytest.mark.parametrize("size", [32, 64, 96, 136])
def test_unet_per_pixel_logits(size: int) -> None:
    torch.manual_seed(0)
    disc = build_discriminator("unet", TINY["unet"])
    assert _forward_backward(disc, size).shape == (2, 1, size, size)


@pytest.mark.parametrize(
    ("kind", "size"),
    [("vgg128", 96), ("vgg128", 256), ("vgg256", 128), ("vgg19", 16), ("vgg19-fc4", 31), ("unet", 36)],
)
def test_wrong_crop_sizes_are_refused_with_a_reason(kind: str, size: int) -> None:
    disc = build_discriminator(kind, TINY[kind])
    with pytest.raises(ValueError, match=str(size)):
        disc(torch.rand(1, 3, size, size))


def test_crop_requirement_matches_behaviour() -> None:
    assert crop_requirement("vgg128") == (128, 1)
    assert crop_requirement("vgg256") == (256, 1)
    assert crop_requirement("unet") == (None, 8)
    assert crop_requirement("vgg19") == (None, 1)
    assert crop_requirement("vgg19-fc4") == (None, 1)


def test_vgg_style_has_esrgan_layout_and_names() -> None:
    disc = VGGStyleDiscriminator()  # full width: 64 -> 512 channels
    sd = disc.state_dict()
    assert sd["conv0_0.weight"].shape == (64, 3, 3, 3)
    assert sd["conv0_1.weight"].shape == (64, 64, 4, 4)
    assert sd["conv4_1.weight"].shape == (512, 512, 4, 4)
    assert sd["linear1.weight"].shape == (100, 512 * 4 * 4)
    assert sd["linear2.weight"].shape == (1, 100)
    assert "bn4_1.running_mean" in sd and "conv5_0.weight" not in sd
    assert "conv5_1.weight" in VGGStyleDiscriminator(input_size=256).state_dict()
    with pytest.raises(ValueError):
        VGGStyleDiscriminator(input_size=192)


def test_vgg19_discriminator_full_layout() -> None:
    disc = VGG19Discriminator()
    convs = [m for m in disc.features if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in disc.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 16 and len(pools) == 5
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    linears = [m for m in disc.classifier if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512 * 49, 4096), (4096, 4096), (4096, 1000)]
    assert disc.head.out_features == 1


def test_unet_uses_spectral_norm() -> None:
    disc = UNetDiscriminatorSN(num_feat=4)
    names = dict(disc.named_parameters())
    assert "conv1.weight_orig" in names and "conv0.weight" in names and "conv9.weight" in names


@pytest.mark.parametrize("kind", list(DISCRIMINATORS))
def test_rebuild_from_hparams_and_features(kind: str) -> None:
    torch.manual_seed(1)
    disc = build_discriminator(kind, TINY[kind])
    clone = build_discriminator(kind, disc.hparams)
    clone.load_state_dict(disc.state_dict())
    size = 256 if kind == "vgg256" else 128
    x = torch.rand(2, 3, size, size)
    disc.eval(), clone.eval()
    logits, feats = disc.forward_features(x)
    assert torch.equal(logits, clone(x))
    assert len(feats) >= 3 and all(f.shape[0] == 2 for f in feats)


def test_unknown_kind() -> None:
    with pytest.raises(KeyError, match="vgg128"):
        build_discriminator("patchgan")


def test_vgg19_features_torchvision_names_and_conv5_4() -> None:
    idx = layer_indices()
    assert idx["conv5_4"] == 34 and idx["relu5_4"] == 35 and idx["conv1_1"] == 0 and idx["pool1"] == 4
    vgg = VGG19Features("conv5_4")
    keys = list(vgg.state_dict())
    assert keys[0] == "features.0.weight" and keys[-1] == "features.34.bias"
    assert len([k for k in keys if k.endswith(".weight")]) == 16
    # conv5_4 is taken before its ReLU: negative activations survive.
    out = vgg(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 512, 2, 2) and (out < 0).any()
    assert not any(p.requires_grad for p in vgg.parameters())
