"""Discriminators for GAN training: they judge HR crops (real) against generator output (fake).

Only used while training; at deployment only the generator runs. Five kinds, selected by name
(``TrainConfig.discriminator.kind``) through :func:`build_discriminator`:

``"vgg128"`` / ``"vgg256"`` — :class:`VGGStyleDiscriminator`, ESRGAN's discriminator: pairs of a 3x3
    convolution and a 4x4 stride-2 convolution with BatchNorm and LeakyReLU(0.2), 64 -> 512 channels,
    then a linear head (-> 100 -> 1). Needs crops of exactly ``input_size`` (128 or 256) pixels.
    Parameter names follow BasicSR (``conv0_0``, ``bn0_1``, ..., ``linear1``, ``linear2``) so its
    pretrained discriminators load.
``"vgg19"`` — :class:`VGG19Discriminator`, the VGG19-shaped variant: five blocks of 3x3 convolutions
    (2, 2, 4, 4, 4 convs of 64, 128, 256, 512, 512 channels) each followed by 2x2 max pooling, adaptive
    average pooling to 7x7, fully connected layers 4096 -> 4096 -> 1000 and one real/fake logit. Any
    crop of at least 32 pixels. No normalisation layers.
``"vgg19-fc4"`` — :class:`VGG19FC4Discriminator`, the discriminator exactly as the ESRGAN design
    describes it: the same convolutions and pooling (a 224x224 crop gives 7x7x512 after the fifth
    pooling, 25,088 values), then four fully connected layers 25,088 -> 4096 -> 4096 -> 1000 -> 1000
    and no single logit: the 1,000 outputs are compared between the real and the generated crop by
    the per-node relativistic loss (:class:`texup.training.losses.RelativisticNodeGANLoss`). Any crop
    of at least 32 pixels. No normalisation layers.
``"unet"`` — :class:`UNetDiscriminatorSN`, Real-ESRGAN's U-Net discriminator with spectral norm: one
    logit per pixel. H and W must be multiples of 8.

Every discriminator takes (N, C, H, W) float images in [0, 1] (sRGB, as the generator produces them)
and returns raw logits (no sigmoid): (N, 1) for the one-logit VGG kinds, (N, 1000) for ``vgg19-fc4``
(``fc[-1]`` outputs), (N, 1, H, W) for the U-Net.
``forward_features`` additionally returns intermediate activations, used by the feature-matching loss.
Like the generators, each has ``hparams`` (its constructor kwargs), so ``build_discriminator(kind,
d.hparams)`` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

_LRELU_SLOPE = 0.2


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator for ``input_size`` x ``input_size`` crops (128 or 256).

    Stage 0 is conv0_0 (3x3) + conv0_1 (4x4, stride 2, BN); stages 1.. are conv{i}_0 (3x3, BN) +
    conv{i}_1 (4x4, stride 2, BN), doubling channels up to ``8 * num_feat``. After log2(input_size / 4)
    stages the map is 4x4, flattened into linear1 (-> 100) and linear2 (-> 1).
    """

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"VGGStyleDiscriminator supports input_size 128 or 256, got {input_size}")
        self.hparams: dict[str, Any] = {"num_in_ch": num_in_ch, "num_feat": num_feat, "input_size": input_size}
        self.input_size = input_size
        self.num_stages = 5 if input_size == 128 else 6
        widths = [num_feat * min(2**i, 8) for i in range(self.num_stages)]
        self.conv0_0 = nn.Conv2d(num_in_ch, widths[0], 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(widths[0], widths[0], 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(widths[0], affine=True)
        for i in range(1, self.num_stages):
            setattr(self, f"conv{i}_0", nn.Conv2d(widths[i - 1], widths[i], 3, 1, 1, bias=False))
            setattr(self, f"bn{i}_0", nn.BatchNorm2d(widths[i], affine=True))
            setattr(self, f"conv{i}_1", nn.Conv2d(widths[i], widths[i], 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(widths[i], affine=True))
        self.linear1 = nn.Linear(widths[-1] * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, 1) and the activation after each stage (N, C_i, H / 2^(i+1), W / 2^(i+1))."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"VGGStyleDiscriminator(input_size={self.input_size}) needs {self.input_size}x{self.input_size} "
                f"crops, got {tuple(x.shape[-2:])}"
            )
        act = lambda t: F.leaky_relu(t, _LRELU_SLOPE)  # noqa: E731
        feat = act(self.conv0_0(x))
        feat = act(self.bn0_1(self.conv0_1(feat)))
        features = [feat]
        for i in range(1, self.num_stages):
            feat = act(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(feat)))
            feat = act(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(feat)))
            features.append(feat)
        out = act(self.linear1(feat.flatten(1)))
        return self.linear2(out), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


#: VGG19's convolution widths per block (the "E" configuration): 16 convolutions in all.
_VGG19_BLOCKS: tuple[tuple[int, int], ...] = ((0, 2), (1, 2), (2, 4), (3, 4), (4, 4))


class VGG19Discriminator(nn.Module):
    """The VGG19-shaped discriminator: VGG19's 16 convolutions + pooling, FC 4096/4096/1000, one logit.

    ``channels`` (default 64, 128, 256, 512, 512) and ``fc`` (default 4096, 4096, 1000) set the widths;
    smaller values give the same topology for tests. Any crop of at least 32x32: adaptive average
    pooling brings the last map to 7x7 before the fully connected layers. LeakyReLU(0.2) throughout,
    no normalisation (so it behaves the same on any batch split, which data-parallel parity relies on).
    """

    #: How many widths ``fc`` lists: 3 here (the output is one logit), 4 in :class:`VGG19FC4Discriminator`.
    _NUM_FC_WIDTHS = 3

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        fc: Sequence[int] = (4096, 4096, 1000),
    ) -> None:
        super().__init__()
        channels, fc = [int(c) for c in channels], [int(f) for f in fc]
        name = type(self).__name__
        if len(channels) != 5 or len(fc) != self._NUM_FC_WIDTHS:
            raise ValueError(f"{name} needs 5 channel widths and {self._NUM_FC_WIDTHS} FC widths, got {channels}, {fc}")
        self.hparams: dict[str, Any] = {"num_in_ch": num_in_ch, "channels": channels, "fc": fc}
        layers: list[nn.Module] = []
        in_ch = num_in_ch
        for block, n_convs in _VGG19_BLOCKS:
            for _ in range(n_convs):
                layers += [nn.Conv2d(in_ch, channels[block], 3, 1, 1), nn.LeakyReLU(_LRELU_SLOPE)]
                in_ch = channels[block]
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 7 * 7, fc[0]),
            nn.LeakyReLU(_LRELU_SLOPE),
            nn.Linear(fc[0], fc[1]),
            nn.LeakyReLU(_LRELU_SLOPE),
            nn.Linear(fc[1], fc[2]),
            nn.LeakyReLU(_LRELU_SLOPE),
        )
        # The last fully connected layer: fc[2] -> one logit here, fc[2] -> fc[3] outputs in vgg19-fc4.
        self.head = nn.Linear(fc[2], fc[3] if self._NUM_FC_WIDTHS == 4 else 1)
        # Without normalisation layers, PyTorch's default initialisation shrinks activations through
        # 19 layers until the logit no longer depends on the input; He initialisation for
        # LeakyReLU(0.2) keeps their scale, so the discriminator can learn from the first step.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, a=_LRELU_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, 1) (vgg19-fc4: (N, fc[3])) and the activation after each of the five pooling layers."""
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"{type(self).__name__} needs crops of at least 32x32, got {tuple(x.shape[-2:])}")
        features = []
        feat = x
        for layer in self.features:
            feat = layer(feat)
            if isinstance(layer, nn.MaxPool2d):
                features.append(feat)
        out = self.classifier(self.pool(feat).flatten(1))
        return self.head(out), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


class VGG19FC4Discriminator(VGG19Discriminator):
    """The design's VGG19 discriminator: 16 convolutions + pooling, then four FC layers to 1,000 outputs.

    Five sections of 3x3 convolutions (``channels``, default 64, 128, 256, 512, 512), each followed
    by 2x2 max pooling: a 224x224x3 crop becomes 7x7x512 after the fifth pooling, flattened to 25,088
    values. Other crop sizes (at least 32x32) are brought to 7x7 by adaptive average pooling, which is
    the identity at 224. Then four fully connected layers, ``fc`` (default 4096, 4096, 1000, 1000):
    25,088 -> 4096 -> 4096 -> 1000 -> 1000, LeakyReLU(0.2) between them and none after the last, so the
    output is (N, 1000) raw values. The network is run once on the real crop and once on the generated
    one, and the loss compares "the difference in outputs" node by node
    (:class:`texup.training.losses.RelativisticNodeGANLoss`). No normalisation layers.

    Parameter names: ``features.*`` (convolutions), ``classifier.0/2/4`` (the first three FC layers)
    and ``head`` (the fourth), as in ``vgg19``; ``forward_features`` returns the five pooled maps.
    """

    _NUM_FC_WIDTHS = 4

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        fc: Sequence[int] = (4096, 4096, 1000, 1000),
    ) -> None:
        super().__init__(num_in_ch=num_in_ch, channels=channels, fc=fc)


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation: a real/fake logit per pixel.

    Three stride-2 4x4 convolutions down (``num_feat`` -> 2x -> 4x -> 8x channels), three bilinear 2x
    upsamplings each followed by a 3x3 convolution back up, with additive skip connections when
    ``skip_connection``; two more 3x3 convolutions and a 1-channel 3x3 output. H and W must be
    multiples of 8. Parameter names follow Real-ESRGAN (``conv0`` .. ``conv9``).
    """

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "num_in_ch": num_in_ch,
            "num_feat": num_feat,
            "skip_connection": skip_connection,
        }
        self.skip_connection = skip_connection
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, 1, H, W) and the encoder / decoder activations."""
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"UNetDiscriminatorSN needs H and W multiples of 8, got {tuple(x.shape[-2:])}")
        act = lambda t: F.leaky_relu(t, _LRELU_SLOPE)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv8(act(self.conv7(x6))))
        return self.conv9(out), [x1, x2, x3, x4, x5, x6]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


DISCRIMINATORS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "vgg128": (VGGStyleDiscriminator, {"input_size": 128}),
    "vgg256": (VGGStyleDiscriminator, {"input_size": 256}),
    "vgg19": (VGG19Discriminator, {}),
    "vgg19-fc4": (VGG19FC4Discriminator, {}),
    "unet": (UNetDiscriminatorSN, {}),
}
"""Discriminator kind -> (class, default kwargs the kind implies)."""


def build_discriminator(kind: str, hparams: dict[str, Any] | None = None) -> nn.Module:
    """Construct discriminator ``kind`` (a key of :data:`DISCRIMINATORS`) with ``hparams`` on top of its defaults.

    Raises:
        KeyError: unknown kind (the message lists the known ones).
        ValueError / TypeError: hparams the class does not accept.
    """
    try:
        cls, defaults = DISCRIMINATORS[kind]
    except KeyError:
        raise KeyError(f"unknown discriminator {kind!r}; known: {', '.join(DISCRIMINATORS)}") from None
    return cls(**{**defaults, **(hparams or {})})


def crop_requirement(kind: str, hparams: dict[str, Any] | None = None) -> tuple[int | None, int]:
    """(exact HR crop size or None, required multiple) for discriminator ``kind``."""
    if kind in ("vgg128", "vgg256"):
        size = int((hparams or {}).get("input_size", DISCRIMINATORS[kind][1]["input_size"]))
        return size, 1
    if kind == "unet":
        return None, 8
    if kind in ("vgg19", "vgg19-fc4"):
        return None, 1
    raise KeyError(f"unknown discriminator {kind!r}; known: {', '.join(DISCRIMINATORS)}")


__all__ = [
    "DISCRIMINATORS",
    "UNetDiscriminatorSN",
    "VGG19Discriminator",
    "VGG19FC4Discriminator",
    "VGGStyleDiscriminator",
    "build_discriminator",
    "crop_requirement",
]
