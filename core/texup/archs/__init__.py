"""Generator architectures: ESRGAN's RRDBNet and Real-ESRGAN's SRVGGNetCompact.

Every architecture takes keyword-only hyperparameters and exposes:

* ``hparams`` — exactly the constructor kwargs (JSON-serialisable), so ``build(arch, m.hparams)`` rebuilds ``m``;
* ``scale`` — output size / input size;
* ``input_multiple`` — H and W given to ``forward`` must be multiples of it; the caller pads and crops.

``forward`` maps (N, C_in, H, W) float in [0, 1] to (N, C_out, H*scale, W*scale), unclamped.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from texup.archs.compact import SRVGGNetCompact
from texup.archs.rrdbnet import RRDBNet

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "RRDBNet": RRDBNet,
    "SRVGGNetCompact": SRVGGNetCompact,
}


def build(arch: str, hparams: dict[str, Any]) -> nn.Module:
    """Construct architecture ``arch`` (a key of :data:`ARCHITECTURES`) with ``hparams``.

    Raises:
        KeyError: ``arch`` is not a known architecture (the message lists the known ones).
        ValueError / TypeError: hparams the architecture does not accept.
    """
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return cls(**hparams)


__all__ = ["ARCHITECTURES", "RRDBNet", "SRVGGNetCompact", "build"]
