"""The two kinds of training step, each returning one :class:`StepLosses`, and the losses they use.

:func:`psnr_step` (stage 1: L1 only) and :func:`gan_step` (stage 2: ESRGAN's generator update, then the
discriminator's) take the run's :class:`~texup.training.state.TrainState` and one batch. Adversarial losses
(``loss.gan``: ``ragan``, ``ragan-per-node``) and which discriminator each suits:
:class:`~texup.training.config.LossConfig` and :mod:`texup.training.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from texup.training.config import TrainConfig
from texup.training.distributed import global_batch_mean, global_node_mean
from texup.training.losses import (
    FeatureMatchingLoss,
    PerceptualLoss,
    RelativisticGANLoss,
    RelativisticNodeGANLoss,
)
from texup.training.state import TrainState


@dataclass(frozen=True)
class StepLosses:
    """One step's losses: the generator's total and its terms; the GAN stage's terms and the discriminator's loss
    are None in the PSNR stage."""

    loss_g: float
    pixel: float
    content: float | None = None
    adversarial: float | None = None
    loss_d: float | None = None

    def values(self) -> dict[str, float]:
        """The losses this step computed, by name (a ``"step"`` event's values, a log row's loss columns)."""
        named = {
            "loss_g": self.loss_g,
            "pixel": self.pixel,
            "content": self.content,
            "adversarial": self.adversarial,
            "loss_d": self.loss_d,
        }
        return {k: v for k, v in named.items() if v is not None}


StepFunction = Callable[[TrainState, torch.Tensor, torch.Tensor], StepLosses]


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def optimizer_step(
    loss: torch.Tensor,
    module: nn.Module,
    optim: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip: float | None,
) -> None:
    """Backward, optional unscale + clip, step (through the scaler when fp16)."""
    optim.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optim)
    else:
        loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(module.parameters(), clip)
    if scaler is not None:
        scaler.step(optim)
        scaler.update()
    else:
        optim.step()


def psnr_step(ts: TrainState, lr: torch.Tensor, hr: torch.Tensor) -> StepLosses:
    """Stage 1: the generator learns from the L1 pixel loss alone."""
    cfg = ts.run.cfg
    with ts.run.autocast():
        sr = ts.g_train(lr)
        loss = cfg.pixel_weight * ts.pixel(sr.float(), hr)
    optimizer_step(loss, ts.g_train, ts.opt_g, ts.scaler_g, cfg.optim.grad_clip)
    return StepLosses(loss_g=loss.item(), pixel=loss.item())


def gan_step(ts: TrainState, lr: torch.Tensor, hr: torch.Tensor) -> StepLosses:
    """Stage 2: one generator update, then one discriminator update (ESRGAN, relativistic average GAN).

    The discriminator runs once on the real crop and once on the generated one; ``ts.gan`` compares
    the two outputs (one logit each, or ``vgg19-fc4``'s 1,000 nodes each with ``ragan-per-node``).
    Generator update: the discriminator's weights are frozen (``requires_grad`` off) and it is called
    unwrapped (``ts.d``), as its weights learn nothing here. Real logits are detached: the generator cannot
    change them. Discriminator update: the fake image is detached, so no gradient reaches the
    generator, and the generator's graph from the first half is not kept alive.
    """
    assert ts.d_train is not None and ts.d is not None and ts.gan is not None and ts.opt_d is not None
    cfg, clip = ts.run.cfg, ts.run.cfg.optim.grad_clip
    set_requires_grad(ts.d, False)
    with ts.run.autocast():
        sr = ts.g_train(lr).float()
        l_pixel = cfg.pixel_weight * ts.pixel(sr, hr)
        l_content = ts.w_content * ts.content(sr, hr) if ts.content is not None and ts.w_content else sr.new_zeros(())
        real_logits = ts.d(hr).detach()
        fake_logits = ts.d(sr)
        l_adv = cfg.adversarial_weight * ts.gan.generator(real_logits, fake_logits)
        loss_g = l_pixel + l_content + l_adv
    optimizer_step(loss_g, ts.g_train, ts.opt_g, ts.scaler_g, clip)

    set_requires_grad(ts.d, True)
    with ts.run.autocast():
        loss_d = ts.gan.discriminator(ts.d_train(hr), ts.d_train(sr.detach()))
    optimizer_step(loss_d, ts.d_train, ts.opt_d, ts.scaler_d, clip)
    return StepLosses(
        loss_g=loss_g.item(),
        pixel=l_pixel.item(),
        content=l_content.item(),
        adversarial=l_adv.item(),
        loss_d=loss_d.item(),
    )


def build_gan_loss(cfg: TrainConfig) -> RelativisticGANLoss:
    """The adversarial loss ``cfg.gan_loss`` names, with its batch means taken over all ranks."""
    if cfg.gan_loss == "ragan-per-node":
        return RelativisticNodeGANLoss(global_node_mean)
    return RelativisticGANLoss(global_batch_mean)


def build_content_loss(cfg: TrainConfig, disc: nn.Module, say: Callable[[str], None]) -> tuple[nn.Module | None, float]:
    """The perceptual loss on VGG19 conv5_4 when weights are available, else feature matching."""
    from texup.weights.model import load_vgg19_features
    from texup.weights.registry import fetch_vgg19, vgg19_cache_path

    if cfg.perceptual_weight == 0:
        return None, 0.0
    source = cfg.loss.vgg19
    if source == "download":
        path: Path | None = fetch_vgg19()
    elif source is not None:
        path = Path(source)
    else:
        path = vgg19_cache_path() if vgg19_cache_path().is_file() else None
    if path is not None:
        say(f"perceptual loss: VGG19 {cfg.loss.perceptual_layer} from {path}")
        return PerceptualLoss(load_vgg19_features(path, cfg.loss.perceptual_layer)), cfg.perceptual_weight
    say(
        'no VGG19 weights (set loss.vgg19 to a file or to "download"): using discriminator feature '
        "matching instead of the perceptual loss"
    )
    return FeatureMatchingLoss(disc), cfg.loss.feature_matching_weight


__all__ = [
    "StepFunction",
    "StepLosses",
    "build_content_loss",
    "build_gan_loss",
    "gan_step",
    "optimizer_step",
    "psnr_step",
    "set_requires_grad",
]
