"""ESRGAN's generator: RRDBNet (residual-in-residual dense blocks).

Parameter names follow BasicSR / Real-ESRGAN, which texup treats as canonical::

    conv_first
    body.{i}.rdb{1,2,3}.conv{1..5}      i in range(num_block)
    conv_body
    conv_up1, conv_up2 [, conv_up3]     one per 2x nearest upsampling step
    conv_hr, conv_last

State dicts in the original ESRGAN naming (``model.0`` ...) are translated by
:func:`texup.weights.canonicalize` before they reach this module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from texup.archs.rrdbnet.spec import SCALE_LAYOUT, STRIP_HALO
from texup.archs.rrdbnet.spec import activation_bytes as _activation_bytes

#: Weight of the residual branch in dense blocks and RRDBs (ESRGAN's residual scaling).
_RESIDUAL_SCALE = 0.2
_LRELU_SLOPE = 0.2


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=True)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the result is added back scaled by 0.2.

    ``conv{k}`` sees the block input concatenated with the outputs of ``conv1 .. conv{k-1}``
    (each ``num_grow_ch`` channels); ``conv5`` maps back to ``num_feat`` channels.
    """

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(num_feat, num_grow_ch)
        self.conv2 = _conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = _conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = _conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = _conv3x3(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.is_contiguous():
            return self._forward_into_buffer(x)
        # In-place activation and scale-and-add on fresh convolution outputs (no backward needs those values):
        # fewer full-size temporaries, less memory traffic in this memory-bound glue.
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), _LRELU_SLOPE, inplace=True))
        return self.conv5(torch.cat(features, dim=1)).mul_(_RESIDUAL_SCALE).add_(x)

    def _forward_into_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """Inference in NCHW without concatenations: every growth output is written into its slice of one buffer.

        In NCHW a leading channel range of a one-image buffer is itself contiguous, so ``conv{k}`` reads
        ``buf[:, :c_k]`` in place where the training path copies all earlier features into a new tensor
        for every convolution. Bit-identical results, a faster trunk on a CPU (docs/benchmarks.md).
        Without autograd only (``out=`` is not differentiable); for batches the slices are strided and the
        convolutions copy them, which is still correct.
        """
        n, c, h, w = x.shape
        g = self.conv1.out_channels
        buf = torch.empty((n, c + 4 * g, h, w), dtype=x.dtype, device=x.device)
        buf[:, :c] = x
        for k, conv in enumerate((self.conv1, self.conv2, self.conv3, self.conv4)):
            lo = c + k * g
            # Public API only (the private ``torch._C._nn.leaky_relu(..., out=)`` saved one copy of g channels).
            buf[:, lo : lo + g] = F.leaky_relu(conv(buf[:, :lo]), _LRELU_SLOPE, inplace=True)
        return self.conv5(buf).mul_(_RESIDUAL_SCALE).add_(x)


class RRDB(nn.Module):
    """Three dense blocks in a row, wrapped in one more scaled residual connection."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))).mul_(_RESIDUAL_SCALE).add_(x)


class RRDBNet(nn.Module):
    """The ESRGAN / Real-ESRGAN generator.

    Args (keyword only; ``hparams`` holds exactly these, so ``RRDBNet(**m.hparams)`` rebuilds ``m``):
        num_in_ch: channels of the image given to :meth:`forward` (3 for RGB, 1 for gray).
        num_out_ch: channels of the result.
        scale: output size / input size, one of 1, 2, 4, 8, 16. Scales 4, 8 and 16 upsample 2, 3
            and 4 times by 2x (nearest + conv). Scales 2 and 1 are Real-ESRGAN's layout: the input
            is pixel-unshuffled by 2 resp. 4 first (so ``conv_first`` takes ``num_in_ch * 4`` resp.
            ``num_in_ch * 16`` channels) and then upsampled 4x.
        num_feat: feature channels of the trunk.
        num_block: number of RRDBs in the trunk (23 for ESRGAN / Real-ESRGAN x4plus, 6 for the anime model).
        num_grow_ch: growth channels of each dense block.

    Attributes:
        hparams: the constructor arguments (JSON-serialisable dict of ints).
        scale: the output scale.
        input_multiple: height and width given to :meth:`forward` must be multiples of this
            (1, or the pixel-unshuffle factor 2 / 4). The caller pads (e.g. reflect) and crops the
            result back to ``scale`` times the unpadded size; the model does not pad.
        stream_rows: None, or trunk rows per strip of the upsampling head (inference memory;
            :class:`~texup.archs.spec.RowStreaming`, set by the torch engine).
    """

    def __init__(
        self,
        *,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in SCALE_LAYOUT:
            raise ValueError(f"RRDBNet: scale must be one of {sorted(SCALE_LAYOUT)}, got {scale!r}")
        for name, value in (
            ("num_in_ch", num_in_ch),
            ("num_out_ch", num_out_ch),
            ("num_feat", num_feat),
            ("num_block", num_block),
            ("num_grow_ch", num_grow_ch),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RRDBNet: {name} must be a positive int, got {value!r}")
        self.hparams: dict[str, Any] = {
            "num_in_ch": num_in_ch,
            "num_out_ch": num_out_ch,
            "scale": scale,
            "num_feat": num_feat,
            "num_block": num_block,
            "num_grow_ch": num_grow_ch,
        }
        self.scale = scale
        unshuffle, num_upsample = SCALE_LAYOUT[scale]
        self.input_multiple = unshuffle
        self.num_upsample = num_upsample

        self.conv_first = _conv3x3(num_in_ch * unshuffle * unshuffle, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = _conv3x3(num_feat, num_feat)
        # Registered as conv_up1 .. conv_up{n}, the names pretrained weights use.
        for i in range(1, num_upsample + 1):
            self.add_module(f"conv_up{i}", _conv3x3(num_feat, num_feat))
        self.conv_hr = _conv3x3(num_feat, num_feat)
        self.conv_last = _conv3x3(num_feat, num_out_ch)
        #: When set, :meth:`forward` runs the upsampling head over strips of this many trunk rows (inference
        #: memory; see :meth:`_upsample_in_strips`). None (the default, and for training) = the whole map.
        self.stream_rows: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upscale a batch.

        Args:
            x: (N, num_in_ch, H, W) float tensor, values in [0, 1] (the range the pretrained
               weights were trained on; texup feeds RGB in the image's own encoding, usually sRGB).
               H and W must be multiples of ``input_multiple``; pad before calling.
        Returns:
            (N, num_out_ch, H * scale, W * scale), same dtype and device, nominally in [0, 1] but
            not clamped (the caller clamps).
        """
        if x.ndim != 4 or x.shape[1] != self.hparams["num_in_ch"]:
            raise ValueError(f"RRDBNet expects (N, {self.hparams['num_in_ch']}, H, W), got {tuple(x.shape)}")
        m = self.input_multiple
        if m > 1:
            if x.shape[2] % m or x.shape[3] % m:
                raise ValueError(
                    f"RRDBNet(scale={self.scale}) needs H and W to be multiples of {m} "
                    f"(pad the input first), got {x.shape[2]}x{x.shape[3]}"
                )
            x = F.pixel_unshuffle(x, m)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        rows = self.stream_rows
        if rows is None or rows >= feat.shape[2]:
            return self._upsample(feat)
        return self._upsample_in_strips(feat, rows)

    def _upsample(self, feat: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_upsample + 1):
            conv = getattr(self, f"conv_up{i}")
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), _LRELU_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), _LRELU_SLOPE))

    def _upsample_in_strips(self, feat: torch.Tensor, rows: int) -> torch.Tensor:
        """The upsampling head over horizontal strips of ``rows`` trunk rows, each with ``STRIP_HALO`` rows of context.

        Same result as :meth:`_upsample` on the whole map (up to convolution rounding), but the
        full-resolution 64-channel activations exist for one strip at a time: at x4 a 288-pixel tile's head
        would otherwise hold several 340 MB tensors, here a few tens of MB (and runs faster, in cache).
        """
        n, _c, height, width = feat.shape
        up = 2**self.num_upsample
        out = torch.empty(
            (n, self.hparams["num_out_ch"], height * up, width * up),
            dtype=feat.dtype,
            device=feat.device,
            memory_format=_memory_format(feat),
        )
        halo = STRIP_HALO
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            a, b = max(0, r0 - halo), min(height, r1 + halo)
            strip = self._upsample(feat[:, :, a:b])
            out[:, :, r0 * up : r1 * up] = strip[:, :, (r0 - a) * up : (r1 - a) * up]
        return out

    def activation_bytes(self, height: int, width: int, element_size: int = 4) -> int:
        """An estimate of the peak activation memory of one inference forward on an (1, C, height, width) input,
        with the current :attr:`stream_rows` (:func:`texup.archs.rrdbnet.spec.activation_bytes`)."""
        return _activation_bytes(self.hparams, height, width, element_size, self.stream_rows)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else torch.contiguous_format
    )
