"""Architecture detection: which generator a canonical state dict belongs to, and every
hyperparameter, read off tensor names and shapes (never off the file name)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from texup.errors import ModelLoadError

_BODY_RRDB = re.compile(r"^body\.(\d+)\.rdb1\.conv1\.weight$")
_CONV_UP = re.compile(r"^conv_up(\d+)\.weight$")
_BODY_N = re.compile(r"^body\.(\d+)\.weight$")

#: RRDBNet: number of 2x upsampling convs -> scale when no pixel-unshuffle is used.
_UPSAMPLES_TO_SCALE = {2: 4, 3: 8, 4: 16}

#: Activation assumed for SRVGGNetCompact weights without PReLU slopes: ReLU and LeakyReLU carry
#: no parameters, so the tensors cannot tell them apart. Pass hparams explicitly to override.
COMPACT_DEFAULT_ACT = "relu"


def detect_architecture(sd: dict[str, Any], *, source: str | Path = "<state dict>") -> tuple[str, dict[str, Any]]:
    """Return ``(arch, hparams)`` for a state dict with canonical names (see :func:`canonicalize`).

    RRDBNet: ``num_feat`` / ``num_in_ch`` from ``conv_first``, ``num_block`` from the count of
    ``body.{i}``, ``num_grow_ch`` from ``rdb1.conv1``, ``num_out_ch`` from ``conv_last``; the scale
    from the number of ``conv_up{u}`` and, with two of them, from ``conv_first``'s input channels:
    ``4 * num_out_ch`` means Real-ESRGAN's x2 layout (pixel-unshuffle by 2), ``16 * num_out_ch`` the
    x1 layout (unshuffle by 4) — input and output channel counts are assumed equal in those layouts.

    SRVGGNetCompact: convolutions at ``body.0, body.2, ..., body.{2+2*num_conv}``; ``upscale`` from
    the last conv's output channels (``num_out_ch * upscale**2``, with ``num_out_ch == num_in_ch``);
    ``act_type`` is ``"prelu"`` when ``body.1.weight`` holds ``num_feat`` slopes, else
    :data:`COMPACT_DEFAULT_ACT`.

    Raises:
        ModelLoadError: not a known architecture (the message lists a few keys and shapes), or a
            known one with inconsistent shapes.
    """
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd:
        return "RRDBNet", _detect_rrdbnet(sd, source)
    if "body.0.weight" in sd and sd["body.0.weight"].ndim == 4:
        return "SRVGGNetCompact", _detect_compact(sd, source)
    examples = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:4])
    raise ModelLoadError(
        source,
        f"not a known architecture: found {len(sd)} tensors, e.g. {examples or 'none'} "
        "(texup reads ESRGAN/RRDBNet and Real-ESRGAN SRVGGNetCompact weights)",
    )


def _shape(sd: dict[str, Any], key: str, source: str | Path, ndim: int) -> tuple[int, ...]:
    tensor = sd.get(key)
    if tensor is None:
        raise ModelLoadError(source, f"missing tensor {key!r}")
    if tensor.ndim != ndim:
        raise ModelLoadError(source, f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
    return tuple(tensor.shape)


def _detect_rrdbnet(sd: dict[str, Any], source: str | Path) -> dict[str, Any]:
    num_feat, first_in, _, _ = _shape(sd, "conv_first.weight", source, 4)
    num_out_ch = _shape(sd, "conv_last.weight", source, 4)[0]
    num_grow_ch = _shape(sd, "body.0.rdb1.conv1.weight", source, 4)[0]
    blocks = sorted(int(m.group(1)) for k in sd if (m := _BODY_RRDB.match(k)))
    if blocks != list(range(len(blocks))):
        raise ModelLoadError(source, f"RRDB blocks are not numbered 0..n-1: {blocks[:8]}...")
    ups = sorted(int(m.group(1)) for k in sd if (m := _CONV_UP.match(k)))
    if ups != list(range(1, len(ups) + 1)):
        raise ModelLoadError(source, f"upsampling convs are not numbered conv_up1..conv_upN: {ups}")
    n_up = len(ups)
    if n_up not in _UPSAMPLES_TO_SCALE:
        raise ModelLoadError(
            source,
            f"RRDBNet with {n_up} upsampling layers is not supported "
            f"(texup handles {sorted(_UPSAMPLES_TO_SCALE)}: x4/x8/x16, and x2/x1 through pixel-unshuffle)",
        )
    scale, num_in_ch = _UPSAMPLES_TO_SCALE[n_up], first_in
    if n_up == 2 and first_in == 16 * num_out_ch:
        scale, num_in_ch = 1, num_out_ch
    elif n_up == 2 and first_in == 4 * num_out_ch:
        scale, num_in_ch = 2, num_out_ch
    return {
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
        "scale": scale,
        "num_feat": num_feat,
        "num_block": len(blocks),
        "num_grow_ch": num_grow_ch,
    }


def _detect_compact(sd: dict[str, Any], source: str | Path) -> dict[str, Any]:
    num_feat, num_in_ch, _, _ = _shape(sd, "body.0.weight", source, 4)
    convs = sorted(int(m.group(1)) for k in sd if (m := _BODY_N.match(k)) and sd[k].ndim == 4)
    if len(convs) < 2 or convs != list(range(0, 2 * len(convs), 2)):
        raise ModelLoadError(source, f"SRVGGNetCompact convs expected at body.0, body.2, ...; found {convs[:8]}")
    last_out = _shape(sd, f"body.{convs[-1]}.weight", source, 4)[0]
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
