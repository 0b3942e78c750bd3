"""Architecture detection: which generator a canonical state dict belongs to, and every hyperparameter, read
off tensor names and shapes (never off the file name) by the registered specs' detectors. No torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from texup.archs.compact.spec import COMPACT_DEFAULT_ACT
from texup.archs.spec import families, registered
from texup.errors import ModelLoadError

__all__ = ["COMPACT_DEFAULT_ACT", "detect_architecture"]


def detect_architecture(sd: Mapping[str, Any], *, source: str | Path = "<state dict>") -> tuple[str, dict[str, Any]]:
    """Return ``(arch, hparams)`` for a state dict with canonical names (see :func:`canonicalize`).

    Each registered :class:`~texup.archs.spec.ArchSpec`'s ``detect`` is asked in registration order; the
    first that recognises the tensors gives the hparams (RRDBNet: :func:`texup.archs.rrdbnet.spec.detect`,
    SRVGGNetCompact: :func:`texup.archs.compact.spec.detect`, whose parameter-free activations read as
    :data:`COMPACT_DEFAULT_ACT`).

    Raises:
        ModelLoadError: not a known architecture (the message lists a few keys and shapes), or a
            known one with inconsistent shapes.
    """
    for spec in registered():
        hparams = spec.detect(sd, source)
        if hparams is not None:
            return spec.name, hparams
    examples = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:4])
    raise ModelLoadError(
        source,
        f"not a known architecture: found {len(sd)} tensors, e.g. {examples or 'none'} "
        f"(texup reads {families()} weights)",
    )
