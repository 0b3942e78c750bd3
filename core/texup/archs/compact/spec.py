"""What SRVGGNetCompact's :class:`~texup.archs.spec.ArchSpec` is made of (torch-free): detection, scale, size
signature, activation estimate. The spec itself is :data:`texup.archs.compact.SPEC`. Layer names as in
:mod:`texup.archs.compact.network`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from texup.archs.spec import tensor_shape
from texup.errors import ModelLoadError

#: Activation assumed for weights without PReLU slopes: ReLU and LeakyReLU carry no parameters, so the tensors
#: cannot tell them apart. Pass hparams explicitly to override.
COMPACT_DEFAULT_ACT = "relu"

_BODY_N = re.compile(r"^body\.(\d+)\.weight$")


def detect(sd: Mapping[str, Any], source: str | Path) -> dict[str, Any] | None:
    """SRVGGNetCompact's hparams, or None without a 4-d ``body.0.weight``.

    Convolutions at ``body.0, body.2, ..., body.{2+2*num_conv}``; ``upscale`` from the last conv's output
    channels (``num_out_ch * upscale**2``, with ``num_out_ch == num_in_ch``); ``act_type`` is ``"prelu"`` when
    ``body.1.weight`` holds ``num_feat`` slopes, else :data:`COMPACT_DEFAULT_ACT`.
    """
    if "body.0.weight" not in sd or sd["body.0.weight"].ndim != 4:
        return None
    num_feat, num_in_ch, _, _ = tensor_shape(sd, "body.0.weight", source, 4)
    convs = sorted(int(m.group(1)) for k in sd if (m := _BODY_N.match(k)) and sd[k].ndim == 4)
    if len(convs) < 2 or convs != list(range(0, 2 * len(convs), 2)):
        raise ModelLoadError(source, f"SRVGGNetCompact convs expected at body.0, body.2, ...; found {convs[:8]}")
    last_out = tensor_shape(sd, f"body.{convs[-1]}.weight", source, 4)[0]
    upscale = round((last_out / num_in_ch) ** 0.5)
    if upscale < 1 or num_in_ch * upscale * upscale != last_out:
        raise ModelLoadError(
            source,
            f"SRVGGNetCompact's last conv has {last_out} output channels, not {num_in_ch} * upscale**2",
        )
    slopes = sd.get("body.1.weight")
    act_type = "prelu" if slopes is not None and tuple(slopes.shape) == (num_feat,) else COMPACT_DEFAULT_ACT
    return {
        "num_in_ch": num_in_ch,
        "num_out_ch": num_in_ch,
        "num_feat": num_feat,
        "num_conv": len(convs) - 2,
        "upscale": upscale,
        "act_type": act_type,
    }


def scale(hparams: Mapping[str, Any]) -> int:
    return int(hparams.get("upscale", 4))


def size_signature(hparams: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything but ``act_type``: ReLU and LeakyReLU have no tensors (the metadata's choice is kept)."""
    return tuple(int(hparams[k]) for k in ("num_in_ch", "num_out_ch", "num_feat", "num_conv", "upscale"))


def activation_bytes(
    hparams: Mapping[str, Any], height: int, width: int, element_size: int, stream_rows: int | None
) -> int:
    """Every layer runs at the input resolution: two ``num_feat`` maps are alive between layers; at the end the
    last convolution's ``num_out_ch * scale**2`` channels, their pixel-shuffled copy, the upsampled input and the
    sum (four output-sized tensors). ``stream_rows`` does not apply."""
    out_values = int(hparams["num_out_ch"]) * scale(hparams) ** 2
    return (2 * int(hparams["num_feat"]) + 4 * out_values) * height * width * element_size
