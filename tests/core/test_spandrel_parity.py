"""Parity with spandrel, an independent implementation of the same generators.

Random state dicts in both naming styles go through texup's whole loading path (canonicalize ->
detect -> strict load) and through spandrel's loader; the outputs must agree to 1e-5.

spandrel 0.4 reads RRDBNet's growth channels as the fixed default 32 and loads SRVGGNetCompact
only with PReLU, so those are the configurations compared here (num_grow_ch != 32 and the other
activations are covered by texup's own tests).
"""

from __future__ import annotations

import pytest
import torch
from spandrel_compat import import_spandrel

from texup.archs import RRDBNet, SRVGGNetCompact
from texup.weights import canonicalize, detect_architecture, instantiate

spandrel = import_spandrel()


def _random_state_dict(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in net.state_dict().items():
        fan_in = value[0].numel() if value.ndim > 1 else 1
        std = (1.0 / fan_in) ** 0.5 if value.ndim > 1 else 0.05
        sd[key] = torch.randn(value.shape, generator=gen) * std
        if key.endswith(".weight") and value.ndim == 1:  # PReLU slopes: around 0.25
            sd[key] = 0.25 + 0.05 * torch.randn(value.shape, generator=gen)
    return sd


def _esrgan_naming(sd: dict[str, torch.Tensor], num_block: int, n_up: int) -> dict[str, torch.Tensor]:
    """Original ESRGAN names, written from ESRGAN's flattened layer list:
    conv_first, trunk, n_up x [upsample, conv, lrelu], conv, lrelu, conv."""
    positions = {"conv_first": 0, "conv_hr": 2 + 3 * n_up, "conv_last": 4 + 3 * n_up}
    positions.update({f"conv_up{u}": 3 * u for u in range(1, n_up + 1)})
    out = {}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        if module.startswith("body."):
            _, i, rdb, conv = module.split(".")
            out[f"model.1.sub.{i}.RDB{rdb[3]}.{conv}.0.{kind}"] = value
        elif module == "conv_body":
            out[f"model.1.sub.{num_block}.{kind}"] = value
        else:
            out[f"model.{positions[module]}.{kind}"] = value
    return out


def _compare(sd: dict[str, torch.Tensor], x: torch.Tensor, expect_arch: str, expect_hparams: dict) -> None:
    canon = canonicalize(sd)
    arch, hparams = detect_architecture(canon)
    assert (arch, hparams) == (expect_arch, expect_hparams)
    ours = instantiate(arch, hparams, canon, source="<random>")
    theirs = spandrel.ModelLoader().load_from_state_dict(dict(sd))
    assert theirs.scale == ours.scale
    model = theirs.model.eval()
    with torch.inference_mode():
        a = ours(x)
        b = model(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# Pixel-unshuffle models (scale 2 and 1) exist only in BasicSR naming.
@pytest.mark.parametrize(
    "naming,scale,num_feat,num_block,seed",
    [
        ("basicsr", 4, 8, 1, 0),
        ("basicsr", 4, 16, 2, 1),
        ("basicsr", 2, 12, 1, 2),
        ("basicsr", 1, 8, 2, 3),
        ("basicsr", 8, 8, 1, 4),
        ("esrgan", 4, 8, 1, 5),
        ("esrgan", 4, 16, 2, 6),
        ("esrgan", 8, 8, 1, 7),
    ],
)
def test_rrdbnet_matches_spandrel(naming: str, scale: int, num_feat: int, num_block: int, seed: int) -> None:
    net = RRDBNet(scale=scale, num_feat=num_feat, num_block=num_block, num_grow_ch=32)
    sd = _random_state_dict(net, seed)
    if naming == "esrgan":
        sd = _esrgan_naming(sd, num_block, n_up=net.num_upsample)
    x = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(seed))
    _compare(sd, x, "RRDBNet", net.hparams)


@pytest.mark.parametrize("upscale,num_feat,num_conv,seed", [(4, 8, 2, 0), (2, 16, 3, 1), (3, 8, 1, 2), (1, 8, 2, 3)])
def test_compact_matches_spandrel(upscale: int, num_feat: int, num_conv: int, seed: int) -> None:
    net = SRVGGNetCompact(num_feat=num_feat, num_conv=num_conv, upscale=upscale, act_type="prelu")
    sd = _random_state_dict(net, seed)
    x = torch.rand(1, 3, 11, 17, generator=torch.Generator().manual_seed(seed))
    _compare(sd, x, "SRVGGNetCompact", net.hparams)


def test_stub_only_when_torchvision_is_broken() -> None:
    """The stub may stand in only for a torchvision that a fresh interpreter cannot import."""
    import subprocess
    import sys

    tv = sys.modules.get("torchvision")
    assert tv is not None
    if getattr(tv, "__texup_stub__", False):
        probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
        assert probe.returncode != 0
