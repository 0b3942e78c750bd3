"""What RRDBNet's :class:`~texup.archs.spec.ArchSpec` is made of (torch-free): detection, scale layout, size
signature, activation estimate. The spec itself is :data:`texup.archs.rrdbnet.SPEC`.

Canonical names as in :mod:`texup.archs.rrdbnet.network`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from texup.archs.spec import tensor_shape
from texup.errors import ModelLoadError

#: Output scale -> (pixel-unshuffle factor applied to the input, number of 2x upsampling steps).
#: Real-ESRGAN's x2 and x1 models keep the x4 body and shrink the input by pixel-unshuffle first.
SCALE_LAYOUT: dict[int, tuple[int, int]] = {
    1: (4, 2),
    2: (2, 2),
    4: (1, 2),
    8: (1, 3),
    16: (1, 4),
}

#: Trunk rows of context each head strip takes from its neighbours. Every 2x step is nearest upsampling then a
#: 3x3 convolution, and three 3x3 convolutions follow the last one; an output row therefore depends on trunk
#: rows within 2 of its own, at any number of steps.
STRIP_HALO = 2

_BODY_RRDB = re.compile(r"^body\.(\d+)\.rdb1\.conv1\.weight$")
_CONV_UP = re.compile(r"^conv_up(\d+)\.weight$")

#: Number of 2x upsampling convs -> scale when no pixel-unshuffle is used.
_UPSAMPLES_TO_SCALE = {2: 4, 3: 8, 4: 16}


def detect(sd: Mapping[str, Any], source: str | Path) -> dict[str, Any] | None:
    """RRDBNet's hparams, or None without ``conv_first`` and ``body.0.rdb1.conv1``.

    ``num_feat`` / ``num_in_ch`` from ``conv_first``, ``num_block`` from the count of ``body.{i}``,
    ``num_grow_ch`` from ``rdb1.conv1``, ``num_out_ch`` from ``conv_last``; the scale from the number of
    ``conv_up{u}`` and, with two of them, from ``conv_first``'s input channels: ``4 * num_out_ch`` means
    Real-ESRGAN's x2 layout (pixel-unshuffle by 2), ``16 * num_out_ch`` the x1 layout (unshuffle by 4) — input
    and output channel counts are assumed equal in those layouts.
    """
    if "conv_first.weight" not in sd or "body.0.rdb1.conv1.weight" not in sd:
        return None
    num_feat, first_in, _, _ = tensor_shape(sd, "conv_first.weight", source, 4)
    num_out_ch = tensor_shape(sd, "conv_last.weight", source, 4)[0]
    num_grow_ch = tensor_shape(sd, "body.0.rdb1.conv1.weight", source, 4)[0]
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


def scale(hparams: Mapping[str, Any]) -> int:
    value = int(hparams.get("scale", 4))
    if value not in SCALE_LAYOUT:
        raise ValueError(f"RRDBNet: scale must be one of {sorted(SCALE_LAYOUT)}, got {value}")
    return value


def input_multiple(hparams: Mapping[str, Any]) -> int:
    """The pixel-unshuffle factor: 4 at x1, 2 at x2, else 1."""
    return SCALE_LAYOUT[scale(hparams)][0]


def size_signature(hparams: Mapping[str, Any]) -> tuple[Any, ...]:
    """``num_in_ch`` and ``scale`` are only seen together in the shapes (a 12-channel x4 model and a 3-channel x2
    model have the same conv_first), so their product through the pixel-unshuffle factor counts."""
    unshuffle, num_up = SCALE_LAYOUT[int(hparams["scale"])]
    return (
        int(hparams["num_feat"]),
        int(hparams["num_block"]),
        int(hparams["num_grow_ch"]),
        int(hparams["num_out_ch"]),
        int(hparams["num_in_ch"]) * unshuffle**2,
        num_up,
    )


def activation_bytes(
    hparams: Mapping[str, Any], height: int, width: int, element_size: int, stream_rows: int | None
) -> int:
    """Trunk: while a dense block's last convolution runs, the trunk input, the RRDB input, the block input, the
    four growth outputs, their concatenation and the result are alive (about ``6 * num_feat + 8 * num_grow_ch``
    channels at trunk resolution); with ``stream_rows`` the head adds three full-resolution ``num_feat`` strips,
    and the output. Measured peak RSS of x4plus stays within this plus ~100 MB of allocator and oneDNN
    workspace (tests/core/test_memory.py)."""
    m, num_upsample = SCALE_LAYOUT[scale(hparams)]
    fh, fw = -(-height // m), -(-width // m)
    nf, gc = int(hparams["num_feat"]), int(hparams["num_grow_ch"])
    up = 2**num_upsample
    trunk = (6 * nf + 8 * gc) * fh * fw
    strip_rows = min(fh, (stream_rows or fh) + 2 * STRIP_HALO)
    head = 3 * nf * strip_rows * up * fw * up
    out = int(hparams["num_out_ch"]) * fh * up * fw * up
    return (trunk + head + out + nf * fh * fw) * element_size
