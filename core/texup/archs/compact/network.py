"""Real-ESRGAN's small generator, SRVGGNetCompact (used by the realesr-animevideov3 models).

A plain stack of 3x3 convolutions at input resolution, a final convolution to
``num_out_ch * upscale**2`` channels, pixel-shuffle, and the nearest-upsampled input added
as a skip connection. Parameter names (``body.{i}``) match Real-ESRGAN's::

    body.0            conv num_in_ch -> num_feat
    body.1            activation (holds weights only for PReLU: shape (num_feat,))
    body.{2+2k}       conv num_feat -> num_feat        k in range(num_conv)
    body.{3+2k}       activation
    body.{2+2*num_conv}  conv num_feat -> num_out_ch * upscale**2
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from texup.archs.compact.spec import activation_bytes as _activation_bytes

#: Activation types Real-ESRGAN uses; "leakyrelu" has slope 0.1 there.
ACT_TYPES = ("prelu", "relu", "leakyrelu")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1)
    raise ValueError(f"SRVGGNetCompact: act_type must be one of {ACT_TYPES}, got {act_type!r}")


class SRVGGNetCompact(nn.Module):
    """Compact VGG-style super-resolution network.

    Args (keyword only; ``hparams`` holds exactly these):
        num_in_ch / num_out_ch: image channels in and out; must be equal (the input is added to
            the result as a skip connection).
        num_feat: feature channels.
        num_conv: number of feature-to-feature convolutions in the body.
        upscale: output scale (any integer >= 1).
        act_type: "prelu" (per-channel learned slope), "relu" or "leakyrelu" (slope 0.1).

    Attributes:
        hparams: the constructor arguments (JSON-serialisable).
        scale: same as ``upscale``.
        input_multiple: 1 (any input size works).
    """

    input_multiple = 1

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act_type: str = "prelu",
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_in_ch", num_in_ch),
            ("num_out_ch", num_out_ch),
            ("num_feat", num_feat),
            ("upscale", upscale),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SRVGGNetCompact: {name} must be a positive int, got {value!r}")
        if not isinstance(num_conv, int) or isinstance(num_conv, bool) or num_conv < 0:
            raise ValueError(f"SRVGGNetCompact: num_conv must be an int >= 0, got {num_conv!r}")
        if num_in_ch != num_out_ch:
            raise ValueError(
                f"SRVGGNetCompact: num_in_ch ({num_in_ch}) must equal num_out_ch ({num_out_ch}): "
                "the upsampled input is added to the output"
            )
        if act_type not in ACT_TYPES:
            raise ValueError(f"SRVGGNetCompact: act_type must be one of {ACT_TYPES}, got {act_type!r}")
        self.hparams: dict[str, Any] = {
            "num_in_ch": num_in_ch,
            "num_out_ch": num_out_ch,
            "num_feat": num_feat,
            "num_conv": num_conv,
            "upscale": upscale,
            "act_type": act_type,
        }
        self.scale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale a batch.

        Args:
            x: (N, num_in_ch, H, W) float tensor in [0, 1]; any H, W.
        Returns:
            (N, num_out_ch, H * scale, W * scale), same dtype and device, not clamped.
        """
        if x.ndim != 4 or x.shape[1] != self.hparams["num_in_ch"]:
            raise ValueError(f"SRVGGNetCompact expects (N, {self.hparams['num_in_ch']}, H, W), got {tuple(x.shape)}")
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")

    def activation_bytes(self, height: int, width: int, element_size: int = 4) -> int:
        """An estimate of the peak activation memory of one inference forward on an (1, C, height, width) input
        (:func:`texup.archs.compact.spec.activation_bytes`)."""
        return _activation_bytes(self.hparams, height, width, element_size, None)
