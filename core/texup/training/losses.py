"""Training losses.

Content losses share one interface: ``loss(sr, hr) -> scalar tensor``, where ``sr`` is the
generator's output and ``hr`` the ground truth, both (N, 3, H, W) float in [0, 1] (sRGB), and the
result is a mean over the batch (so a batch split across data-parallel ranks averages to the same
value as the whole batch):

* :class:`PixelLoss` — L1 between pixels.
* :class:`PerceptualLoss` — L1 between VGG19 activations (conv5_4 before its ReLU, as ESRGAN).
* :class:`FeatureMatchingLoss` — L1 between the discriminator's intermediate activations; the
  stand-in for the perceptual loss when no VGG19 weights are available.

The adversarial loss is ESRGAN's relativistic average GAN (:class:`RelativisticGANLoss`): the
discriminator is asked whether a real image is *more realistic than the average fake* (and a fake
less realistic than the average real), with binary cross-entropy on the differences.
:class:`RelativisticNodeGANLoss` is the same comparison made output by output, for the ``vgg19-fc4``
discriminator whose 1,000 outputs are compared between the real and the generated crop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

BatchMean = Callable[[torch.Tensor], torch.Tensor]
"""Mean of a logits tensor over the whole (possibly distributed) batch, keeping the autograd graph."""


def local_batch_mean(logits: torch.Tensor) -> torch.Tensor:
    """The mean over this process's batch: the default :data:`BatchMean`."""
    return logits.mean()


def local_node_mean(outputs: torch.Tensor) -> torch.Tensor:
    """Per-output mean over this process's batch, (N, ...) -> (1, ...); :class:`RelativisticNodeGANLoss`'s default."""
    return outputs.mean(dim=0, keepdim=True)


class PixelLoss(nn.Module):
    """L1 distance between ``sr`` and ``hr`` pixels, averaged over every element."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(sr, hr)


class PerceptualLoss(nn.Module):
    """L1 distance between VGG19 features of ``sr`` and ``hr``; ``hr``'s features carry no gradient.

    ``features`` is a frozen extractor such as :class:`texup.archs.vgg.VGG19Features`. Features are
    computed in float32 even under autocast, so the loss does not depend on the precision mode.
    """

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=sr.device.type, enabled=False):
            with torch.no_grad():
                target = self.features(hr.float())
            return F.l1_loss(self.features(sr.float()), target)


@runtime_checkable
class FeatureDiscriminator(Protocol):
    """What :class:`FeatureMatchingLoss` needs: every texup discriminator's ``forward_features``."""

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, the activation after each stage)."""
        ...


class FeatureMatchingLoss(nn.Module):
    """L1 distance between the discriminator's activations for ``sr`` and for ``hr``, averaged over layers.

    ``discriminator`` must provide ``forward_features(x) -> (logits, [activations])`` (every texup
    discriminator does). The real image's activations are computed without gradient: only the
    generator learns from this loss; the discriminator's weights get gradients from the pass through
    ``sr`` but the trainer never steps the discriminator's optimiser on them.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        if not isinstance(discriminator, FeatureDiscriminator):
            raise TypeError(f"{type(discriminator).__name__} has no forward_features(x) for feature matching")
        # Held in a list so the discriminator is not registered as a sub-module of the loss
        # (it is owned, checkpointed and optimised by the trainer).
        self._discriminator: list[FeatureDiscriminator] = [discriminator]

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        disc = self._discriminator[0]
        with torch.no_grad():
            _, real_feats = disc.forward_features(hr)
        _, fake_feats = disc.forward_features(sr)
        terms = [F.l1_loss(f.float(), r.float()) for f, r in zip(fake_feats, real_feats)]
        return torch.stack(terms).mean()


class RelativisticGANLoss(nn.Module):
    """Relativistic average GAN losses (ESRGAN), on raw logits of any shape (N, ...).

    With C(x) the discriminator's logit and E[.] the mean over the batch,
    D_Ra(a, b) = sigmoid(C(a) - E[C(b)]):

    * discriminator: BCE(D_Ra(real, fake), 1) + BCE(D_Ra(fake, real), 0), each averaged, halved;
    * generator: the same with the labels swapped.

    ``batch_mean`` computes E[.]; the trainer passes a mean over *all* data-parallel ranks, so the
    "average" is the global batch's and the loss equals the single-process one.
    """

    def __init__(self, batch_mean: BatchMean = local_batch_mean) -> None:
        super().__init__()
        self.batch_mean = batch_mean

    def _pair(self, real: torch.Tensor, fake: torch.Tensor, real_label: float) -> torch.Tensor:
        real, fake = real.float(), fake.float()
        real_rel = real - self.batch_mean(fake)
        fake_rel = fake - self.batch_mean(real)
        loss_real = F.binary_cross_entropy_with_logits(real_rel, torch.full_like(real_rel, real_label))
        loss_fake = F.binary_cross_entropy_with_logits(fake_rel, torch.full_like(fake_rel, 1.0 - real_label))
        return (loss_real + loss_fake) / 2

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Loss for the discriminator; ``fake_logits`` must come from a *detached* fake image."""
        return self._pair(real_logits, fake_logits, real_label=1.0)

    def generator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Loss for the generator; ``real_logits`` may be detached (they carry no generator gradient)."""
        return self._pair(real_logits, fake_logits, real_label=0.0)


class RelativisticNodeGANLoss(RelativisticGANLoss):
    """Relativistic average GAN on every output node: the loss on "the difference in outputs" of a
    discriminator with many outputs (``vgg19-fc4``: (N, 1000)).

    With C(x)_k the k-th output for image x and E_n[.] the mean over the batch *for that node*:

    * d_real[n, k] = C(real_n)_k - E_n[C(fake_n)_k]   (each real output against the mean fake output)
    * d_fake[n, k] = C(fake_n)_k - E_n[C(real_n)_k]   (and the reverse)
    * discriminator: (BCE(d_real, 1) + BCE(d_fake, 0)) / 2, with binary cross-entropy on logits,
      averaged over the batch and the nodes;
    * generator: the same with the targets swapped, (BCE(d_real, 0) + BCE(d_fake, 1)) / 2.

    Why per node: each of the 1,000 outputs is its own relativistic critic, and the design compares
    the real and the fake crop's outputs node against node. Subtracting one mean over *all* nodes (what
    :class:`RelativisticGANLoss` does with a multi-output tensor) would compare different nodes with
    each other: a node whose output is high for every image would count as "real" for real and fake
    crops alike, so the loss would learn node offsets instead of real-vs-fake differences. With one
    output (N, 1) this loss equals :class:`RelativisticGANLoss` exactly; on per-pixel logits
    (N, 1, H, W) it compares each pixel position with the batch mean at that position.

    ``node_mean`` maps (N, ...) to (1, ...) keeping the autograd graph; the trainer passes one over
    *all* data-parallel ranks so a split batch gives the single-process loss.
    """

    def __init__(self, node_mean: BatchMean = local_node_mean) -> None:
        super().__init__(batch_mean=node_mean)


__all__ = [
    "BatchMean",
    "FeatureMatchingLoss",
    "PerceptualLoss",
    "PixelLoss",
    "RelativisticGANLoss",
    "RelativisticNodeGANLoss",
    "local_batch_mean",
    "local_node_mean",
]
