"""Real-ESRGAN's SRVGGNetCompact: the network (:mod:`.network`, torch), its spec's parts (:mod:`.spec`) and its
ncnn graph (:mod:`.ncnn`, numpy), registered by :mod:`texup.archs` as :data:`SPEC`. Importing this package does not
import torch: ``SRVGGNetCompact`` loads :mod:`.network` on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from texup._lazy import lazy_getattr
from texup.archs.compact import ncnn, spec
from texup.archs.spec import ArchSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from texup.archs.compact.network import SRVGGNetCompact


def _network() -> type[nn.Module]:
    from texup.archs.compact.network import SRVGGNetCompact

    return SRVGGNetCompact


SPEC = ArchSpec(
    name="SRVGGNetCompact",
    label="Real-ESRGAN SRVGGNetCompact",
    network=_network,
    detect=spec.detect,
    scale=spec.scale,
    size_signature=spec.size_signature,
    estimate_activation=spec.activation_bytes,
    ncnn_writer=ncnn.write_graph,
    ncnn_reader=ncnn.read_graph,
)

__getattr__ = lazy_getattr(__name__, globals(), {"SRVGGNetCompact": "texup.archs.compact.network"})

__all__ = ["SPEC", "SRVGGNetCompact"]
