"""Losses: values against definitions, gradients, and the relativistic average GAN's behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from texup.archs.discriminator import build_discriminator
from texup.archs.vgg import VGG19Features
from texup.errors import ModelLoadError
from texup.training.losses import (
    FeatureMatchingLoss,
    PerceptualLoss,
    PixelLoss,
    RelativisticGANLoss,
    RelativisticNodeGANLoss,
)
from texup.weights.model import load_vgg19_features

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
    d_expected = (
        sum(_bce(r - fm, 1) for r in real.flatten().tolist()) / 3
        + sum(_bce(f - rm, 0) for f in fake.flatten().tolist()) / 3
    ) / 2
    g_expected = (
        sum(_bce(r - fm, 0) for r in real.flatten().tolist()) / 3
        + sum(_bce(f - rm, 1) for f in fake.flatten().tolist()) / 3
    ) / 2
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


# -- the per-node relativistic loss (vgg19-fc4) ------------------------------------------------------
def test_per_node_ragan_matches_definition() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    real[:, 2] += 5.0  # a node that is high for every image: only its own mean may serve as reference
    fake[:, 2] += 5.0
    n, k = real.shape
    d_expected = g_expected = 0.0
    for j in range(k):
        rm, fm = real[:, j].mean().item(), fake[:, j].mean().item()
        for i in range(n):
            r, f = real[i, j].item(), fake[i, j].item()
            d_expected += (_bce(r - fm, 1) + _bce(f - rm, 0)) / (2 * n * k)
            g_expected += (_bce(r - fm, 0) + _bce(f - rm, 1)) / (2 * n * k)
    gan = RelativisticNodeGANLoss()
    assert gan.discriminator(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert gan.generator(real, fake).item() == pytest.approx(g_expected, rel=1e-6)
    # Not the one-logit loss applied to all outputs at once (that subtracts one mean over every node).
    assert RelativisticGANLoss().discriminator(real, fake).item() != pytest.approx(d_expected, rel=1e-3)
    # The generator's loss is the discriminator's with the real and fake terms swapped.
    assert gan.generator(real, fake).item() == pytest.approx(gan.discriminator(fake, real).item(), rel=1e-6)


def test_per_node_ragan_equals_ragan_on_one_logit() -> None:
    real, fake = torch.randn(5, 1), torch.randn(5, 1)
    for side in ("discriminator", "generator"):
        a = getattr(RelativisticNodeGANLoss(), side)(real, fake)
        b = getattr(RelativisticGANLoss(), side)(real, fake)
        torch.testing.assert_close(a, b)


def test_per_node_ragan_signs_swap_between_real_and_fake_terms() -> None:
    gan = RelativisticNodeGANLoss()
    real = torch.randn(4, 6, requires_grad=True)
    fake = torch.randn(4, 6, requires_grad=True)
    gan.discriminator(real, fake).backward()
    # The discriminator pushes every node's real output up and every fake output down ...
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    real.grad = fake.grad = None
    gan.generator(real, fake).backward()
    # ... the generator the other way round, node by node.
    assert (real.grad > 0).all() and (fake.grad < 0).all()


def test_per_node_ragan_gives_both_networks_gradients() -> None:
    torch.manual_seed(0)
    disc = build_discriminator("vgg19-fc4", {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8, 10]})
    gen = torch.nn.Conv2d(3, 3, 3, padding=1)  # stands in for the generator
    gan = RelativisticNodeGANLoss()
    hr = torch.rand(3, 3, 40, 40)
    sr = gen(torch.rand(3, 3, 40, 40))
    real_out, fake_out = disc(hr), disc(sr)
    assert real_out.shape == fake_out.shape == (3, 10)
    # Generator update: real outputs detached, as the trainer does; only the generator steps.
    gan.generator(real_out.detach(), fake_out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    disc.zero_grad(), gen.zero_grad()
    # Discriminator update: the fake image detached, so no gradient reaches the generator.
    gan.discriminator(disc(hr), disc(sr.detach())).backward()
    assert all(p.grad is None for p in gen.parameters())
    for name, p in disc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_per_node_ragan_uses_the_given_node_mean() -> None:
    calls = []

    def mean(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return t.mean(dim=0, keepdim=True)

    RelativisticNodeGANLoss(mean).generator(torch.randn(4, 7), torch.randn(4, 7))
    assert calls == [(4, 7), (4, 7)]
    from texup.training.distributed import global_node_mean

    x = torch.randn(4, 7)
    torch.testing.assert_close(global_node_mean(x), x.mean(0, keepdim=True))  # one process: the local mean


_TWO_RANKS = """
import os, socket, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from texup.training.losses import RelativisticNodeGANLoss
from texup.training.distributed import global_node_mean

def rank_main(rank, port, real, fake, q):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    half = slice(2 * rank, 2 * rank + 2)
    r, f = real[half].clone().requires_grad_(True), fake[half].clone().requires_grad_(True)
    loss = RelativisticNodeGANLoss(global_node_mean).discriminator(r, f)
    (loss / 2).backward()  # DistributedDataParallel averages over ranks
    q.put((rank, loss.item(), r.grad, f.grad))
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.manual_seed(0)
    real, fake = torch.randn(4, 6), torch.randn(4, 6) + 1
    r, f = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    whole = RelativisticNodeGANLoss().discriminator(r, f)
    whole.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(i, port, real, fake, q)) for i in range(2)]
    for p in procs:
        p.start()
    out = sorted((q.get(timeout=120) for _ in procs), key=lambda t: t[0])
    for p in procs:
        p.join()
    torch.testing.assert_close(torch.tensor(sum(o[1] for o in out) / 2), whole.detach())
    torch.testing.assert_close(torch.cat([o[2] for o in out]), r.grad)
    torch.testing.assert_close(torch.cat([o[3] for o in out]), f.grad)
    print("same")
"""


@pytest.mark.slow  # two Gloo (DDP) ranks
def test_per_node_ragan_over_two_gloo_ranks_matches_one_process(tmp_path) -> None:
    """The per-node mean over ranks makes a batch split over 2 ranks give the whole batch's loss and gradients."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr[-3000:]
