"""ESRGAN's RRDBNet: the network (:mod:`.network`, torch), its spec's parts (:mod:`.spec`) and its ncnn graph
(:mod:`.ncnn`, numpy), registered by :mod:`texup.archs` as :data:`SPEC`. Importing this package does not import
torch: ``RRDBNet``, ``RRDB`` and ``ResidualDenseBlock`` load :mod:`.network` on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from texup._lazy import lazy_getattr
from texup.archs.rrdbnet import ncnn, spec
from texup.archs.spec import ArchSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from texup.archs.rrdbnet.network import RRDB, ResidualDenseBlock, RRDBNet


def _network() -> type[nn.Module]:
    from texup.archs.rrdbnet.network import RRDBNet

    return RRDBNet


SPEC = ArchSpec(
    name="RRDBNet",
    label="ESRGAN/RRDBNet",
    network=_network,
    detect=spec.detect,
    scale=spec.scale,
    input_multiple=spec.input_multiple,
    size_signature=spec.size_signature,
    estimate_activation=spec.activation_bytes,
    streams_rows=True,
    ncnn_writer=ncnn.write_graph,
    ncnn_reader=ncnn.read_graph,
)

_NETWORK = "texup.archs.rrdbnet.network"
__getattr__ = lazy_getattr(__name__, globals(), {"RRDBNet": _NETWORK, "RRDB": _NETWORK, "ResidualDenseBlock": _NETWORK})

__all__ = ["RRDB", "RRDBNet", "ResidualDenseBlock", "SPEC"]
