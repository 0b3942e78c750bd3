"""One :class:`ArchSpec` per generator architecture, and the registry that holds them.

Torch-free: detection, scale, input multiple, the activation estimate and the ncnn reader/writer serve the
no-torch (ncnn) path too. Each architecture is one folder, ``texup.archs.<name>`` (``network.py``: the torch
module; ``spec.py``: detection and the rest, torch-free; ``ncnn.py``: its ncnn graph, numpy), whose
``__init__`` makes its ``SPEC`` from real functions; the module class is imported only when asked for
(:meth:`ArchSpec.module_class`), so the registry imports no torch. Registration order is detection order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from texup.errors import ModelLoadError
from texup.options import PRECISIONS

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: Precision names an architecture may support: :data:`texup.options.PRECISIONS` without "auto".
ALL_DTYPES: tuple[str, ...] = tuple(p for p in PRECISIONS if p != "auto")

#: ``(canonical state dict, source) -> hparams``, or None when the tensors are not this architecture's.
#: Raises :class:`~texup.errors.ModelLoadError` for this architecture's tensors with inconsistent shapes.
Detector = Callable[[Mapping[str, Any], "str | Path"], "dict[str, Any] | None"]
#: ``hparams -> int`` (scale, input multiple); ValueError for hparams the architecture refuses.
FromHparams = Callable[[Mapping[str, Any]], int]
#: ``(hparams, height, width, element size, stream rows or None) -> bytes`` of peak activations of one
#: inference forward on a (1, C, height, width) input.
ActivationEstimate = Callable[[Mapping[str, Any], int, int, int, "int | None"], int]


class ArchModule(Protocol):
    """What every architecture's module exposes (see :mod:`texup.archs`)."""

    hparams: dict[str, Any]
    scale: int
    input_multiple: int


class RowStreaming(Protocol):
    """Modules of an architecture with ``streams_rows``: at inference the full-resolution part runs over strips
    of ``stream_rows`` input rows when it is set (None, the default and for training: the whole map)."""

    stream_rows: int | None


def _no_multiple(hparams: Mapping[str, Any]) -> int:
    return 1


def generic_activation_bytes(hparams: Mapping[str, Any], scale: int, height: int, width: int, element_size: int) -> int:
    """The estimate for architectures without their own: about ``8 * num_feat * scale**2`` values per input
    pixel (the full-resolution layers dominate); ``num_feat`` 64 when the hparams have none."""
    num_feat = int(hparams.get("num_feat", 64))
    return 8 * num_feat * scale**2 * element_size * height * width


@dataclass(frozen=True)
class ArchSpec:
    """Everything texup needs to know about one generator architecture.

    Attributes:
        name: the architecture's name (``texup.arch`` metadata, :func:`texup.archs.build`).
        label: how messages name the family, e.g. "ESRGAN/RRDBNet".
        network: returns the torch module's class (importing torch only when called); a keyword-only
            constructor taking the hparams.
        detect: hyperparameters from a canonical state dict's names and shapes (:data:`Detector`).
        scale, input_multiple: from hparams (the module's ``scale`` / ``input_multiple``, tested).
        size_signature: what of the hparams fixes the tensors' shapes, to refuse file metadata that disagrees
            with the tensors before building; None = all hparams must equal the detected ones.
        estimate_activation: :data:`ActivationEstimate`; None = :func:`generic_activation_bytes`.
        streams_rows: the module follows :class:`RowStreaming` (the torch engine sets ``stream_rows``).
        dtypes: precisions the network runs in (subset of :data:`ALL_DTYPES`; the first is the fallback of
            an automatic choice it does not support).
        ncnn_writer: ``(hparams, weights, dense) -> (graph, checkpoints)`` (:mod:`texup.archs.ncnn_graph`) for
            :func:`texup.engines.ncnn_export.export_ncnn`; None = no ncnn export.
        ncnn_reader: ``(layers, weights, param_path) -> (arch, hparams, state dict) | None`` for
            :func:`texup.weights.ncnn.read_ncnn`; None = ncnn graphs of it are not read.
    """

    name: str
    label: str
    network: Callable[[], type[nn.Module]]
    detect: Detector
    scale: FromHparams
    input_multiple: FromHparams = _no_multiple
    size_signature: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
    estimate_activation: ActivationEstimate | None = None
    streams_rows: bool = False
    dtypes: tuple[str, ...] = ALL_DTYPES
    ncnn_writer: Callable[..., Any] | None = None
    ncnn_reader: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"ArchSpec: name must be an identifier, got {self.name!r}")
        if not callable(self.network):
            raise ValueError(f"ArchSpec {self.name}: network must be a function returning the module class")
        if not self.dtypes or not set(self.dtypes) <= set(ALL_DTYPES):
            raise ValueError(f"ArchSpec {self.name}: dtypes must be a non-empty subset of {ALL_DTYPES}")

    def module_class(self) -> type[nn.Module]:
        """The torch module class (imports torch)."""
        return self.network()

    def build(self, hparams: Mapping[str, Any]) -> nn.Module:
        """``module_class()(**hparams)``; ValueError / TypeError for hparams it does not accept."""
        return self.module_class()(**hparams)

    def signature(self, hparams: Mapping[str, Any]) -> tuple[Any, ...]:
        """:attr:`size_signature` of ``hparams``, or all of them (sorted items) when the spec has none."""
        if self.size_signature is not None:
            return self.size_signature(hparams)
        return tuple(sorted(hparams.items()))

    def activation_bytes(
        self, hparams: Mapping[str, Any], height: int, width: int, element_size: int = 4, stream_rows: int | None = None
    ) -> int:
        """Estimated peak activation bytes of one inference forward on a (1, C, height, width) input."""
        if self.estimate_activation is None:
            return generic_activation_bytes(hparams, self.scale(hparams), height, width, element_size)
        return int(self.estimate_activation(hparams, height, width, element_size, stream_rows))


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add ``spec`` after those registered so far (detection tries them in this order); returns it.

    Raises ValueError when an architecture of that name is registered already."""
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> ArchSpec:
    """Remove and return the spec called ``name`` (KeyError when there is none)."""
    return _REGISTRY.pop(name)


def registered() -> tuple[ArchSpec, ...]:
    """Every registered spec, in registration order."""
    return tuple(_REGISTRY.values())


def arch_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    """The spec called ``name``; KeyError listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def spec_for_module(module: object) -> ArchSpec | None:
    """The spec whose module class is exactly ``type(module)`` (imports the archs' modules), else None."""
    cls = type(module)
    return next((spec for spec in _REGISTRY.values() if spec.module_class() is cls), None)


def families() -> str:
    """The registered families for messages: "A, B and C"."""
    labels = [spec.label for spec in _REGISTRY.values()]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def tensor_shape(sd: Mapping[str, Any], key: str, source: str | Path, ndim: int) -> tuple[int, ...]:
    """``sd[key]``'s shape for detectors; ModelLoadError when it is missing or has not ``ndim`` dimensions."""
    tensor = sd.get(key)
    if tensor is None:
        raise ModelLoadError(source, f"missing tensor {key!r}")
    if tensor.ndim != ndim:
        raise ModelLoadError(source, f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
    return tuple(tensor.shape)


class _Classes(Mapping[str, "type[nn.Module]"]):
    """Name -> module class of every registered architecture (a class is imported when looked up)."""

    def __getitem__(self, name: str) -> type[nn.Module]:
        spec = _REGISTRY.get(name)
        if spec is None:
            raise KeyError(name)
        return spec.module_class()

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)


#: Name -> module class, following the registry.
ARCHITECTURES: Mapping[str, type[nn.Module]] = _Classes()
