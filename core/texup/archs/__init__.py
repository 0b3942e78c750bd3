"""Generator architectures (ESRGAN's RRDBNet, Real-ESRGAN's SRVGGNetCompact) and their registry.

Every architecture's module takes keyword-only hyperparameters and exposes ``hparams`` (exactly the constructor
kwargs, JSON-serialisable: ``build(arch, m.hparams)`` rebuilds ``m``), ``scale`` and ``input_multiple`` (H and W
given to ``forward`` must be multiples of it; the caller pads and crops). ``forward`` maps (N, C_in, H, W) float
in [0, 1] to (N, C_out, H*scale, W*scale), unclamped. Each has one :class:`~texup.archs.spec.ArchSpec`
(detection, scale, activation estimate, ncnn export ...) registered below; importing this package does not
import torch (the module classes load on first use).

Adding an architecture:

1. A folder ``archs/<name>/``: ``network.py``, the ``nn.Module`` (the contract above; canonical parameter
   names); ``spec.py`` (no torch): its detector, scale and the rest; optionally ``ncnn.py`` (numpy, with
   :mod:`texup.archs.ncnn_graph`): ``write_graph`` and ``read_graph``.
2. Its ``__init__.py``: ``SPEC = ArchSpec(name, label, network, detect, scale, ..., ncnn_writer=ncnn.write_graph,
   ncnn_reader=ncnn.read_graph)``, ``network`` a function importing the module class (so no torch here);
   optional fields fall back to generic behaviour (no ncnn export, generic activation estimate).
3. ``register(<name>.SPEC)`` below. Detection, loading, saving, the torch engine and, with an ``ncnn_writer``,
   the ncnn exporter and reader find it there.
4. Small hparams for it in ``CASES`` of tests/core/test_arch_specs.py, which checks the spec against the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from texup._lazy import lazy_getattr
from texup.archs import compact, rrdbnet
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

    from texup.archs.compact.network import SRVGGNetCompact
    from texup.archs.rrdbnet.network import RRDBNet

register(rrdbnet.SPEC)
register(compact.SPEC)


def build(arch: str, hparams: dict[str, Any]) -> nn.Module:
    """Construct architecture ``arch`` (a registered name) with ``hparams``.

    Raises:
        KeyError: ``arch`` is not a known architecture (the message lists the known ones).
        ValueError / TypeError: hparams the architecture does not accept.
    """
    return get_spec(arch).build(hparams)


__getattr__ = lazy_getattr(
    __name__, globals(), {"RRDBNet": "texup.archs.rrdbnet.network", "SRVGGNetCompact": "texup.archs.compact.network"}
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
