"""Generator architectures (ESRGAN's RRDBNet, Real-ESRGAN's SRVGGNetCompact) and their registry.

Every architecture's module takes keyword-only hyperparameters and exposes ``hparams`` (exactly the constructor
kwargs, JSON-serialisable: ``build(arch, m.hparams)`` rebuilds ``m``), ``scale`` and ``input_multiple`` (H and W
given to ``forward`` must be multiples of it; the caller pads and crops). ``forward`` maps (N, C_in, H, W) float
in [0, 1] to (N, C_out, H*scale, W*scale), unclamped. Each has one :class:`~texup.archs.spec.ArchSpec`
(detection, scale, activation estimate, ncnn export ...) registered below; importing this package does not
import torch (the module classes load on first use).

Adding an architecture:

1. ``archs/<name>.py``: the ``nn.Module`` (the contract above; canonical parameter names).
2. ``archs/<name>_spec.py`` (no torch): ``SPEC = ArchSpec(name, label, "texup.archs.<name>:Class", detect,
   scale, ...)``; optional fields fall back to generic behaviour (no ncnn export, generic activation estimate).
3. ``register(<name>_spec.SPEC)`` below. Detection, loading, saving, the torch engine and, with an
   ``ncnn_writer``, the ncnn exporter find it there.
4. Small hparams for it in ``CASES`` of tests/core/test_arch_specs.py, which checks the spec against the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from texup._lazy import lazy_getattr
from texup.archs import compact_spec, rrdbnet_spec
from texup.archs.spec import (
    ARCHITECTURES,
    ArchSpec,
    arch_names,
    get_spec,
    register,
    registered,
    spec_for_module,
    unregister,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from texup.archs.compact import SRVGGNetCompact
    from texup.archs.rrdbnet import RRDBNet

register(rrdbnet_spec.SPEC)
register(compact_spec.SPEC)


def build(arch: str, hparams: dict[str, Any]) -> nn.Module:
    """Construct architecture ``arch`` (a registered name) with ``hparams``.

    Raises:
        KeyError: ``arch`` is not a known architecture (the message lists the known ones).
        ValueError / TypeError: hparams the architecture does not accept.
    """
    return get_spec(arch).build(hparams)


__getattr__ = lazy_getattr(
    __name__, globals(), {"RRDBNet": "texup.archs.rrdbnet", "SRVGGNetCompact": "texup.archs.compact"}
)

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "RRDBNet",
    "SRVGGNetCompact",
    "arch_names",
    "build",
    "get_spec",
    "register",
    "registered",
    "spec_for_module",
    "unregister",
]
