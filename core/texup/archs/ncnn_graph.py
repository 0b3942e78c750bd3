"""The pieces every architecture's ncnn graph is written and read with (numpy only, no torch, no ncnn).

Writing: an architecture's ``ncnn.write_graph(hparams, weights, dense)`` (``texup.archs.<name>.ncnn``, its spec's
``ncnn_writer``) adds :class:`Layer` s to a :class:`Graph`, taking its tensors from :class:`Weights` (shape-checked,
leftovers reported); :func:`texup.engines.ncnn_export.export_ncnn` writes the ``.param``/``.bin`` files (the format
facts and the layer choices are in that module's docstring). Reading: :func:`texup.weights.ncnn.read_ncnn` parses a
``.param`` into :class:`NcnnLayer` s and its ``.bin`` into weights, and asks each spec's ``ncnn_reader``
``(layers, weights, param_path) -> NcnnRead | None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ncnn Convolution fused activation ids (param 9).
ACT_RELU = 1
ACT_LEAKY = 2

#: Reorg mode 0 = torch's pixel_unshuffle channel order (see :mod:`texup.engines.ncnn_export`).
REORG_MODE_TORCH = 0


class Ints(tuple):
    """An array param whose items ncnn reads as ints (e.g. Slice's sizes), written without exponents."""


ParamValue = int | float | Sequence[float]


@dataclass
class Layer:
    """One layer of the graph being built: params as (key, value) pairs in writing order; ``weights`` are the
    .bin chunks in order, each ``(tagged, float32 array)`` (tagged = preceded by the fp32 tag)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: list[tuple[int, ParamValue]] = field(default_factory=list)
    weights: list[tuple[bool, np.ndarray]] = field(default_factory=list)


class Graph:
    """Layers in topological order, by blob name; :meth:`finish` inserts the Split layers ncnn needs."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self._produced: set[str] = set()

    def add(self, layer: Layer) -> str:
        """Append ``layer`` (its inputs must already be produced); return its first output blob."""
        for blob in layer.inputs:
            if blob not in self._produced:
                raise AssertionError(f"ncnn export: layer {layer.name} reads blob {blob} before it is produced")
        for blob in layer.outputs:
            if blob in self._produced:
                raise AssertionError(f"ncnn export: blob {blob} is produced twice")
            self._produced.add(blob)
        self.layers.append(layer)
        return layer.outputs[0]

    def finish(self) -> tuple[list[Layer], int]:
        """The layers with a Split after the producer of every blob read more than once, and the blob count.

        The i-th reader (in layer order) of a split blob reads ``{blob}_split{i}``; the original blob name
        stays the producer's output, so it can still be extracted.
        """
        readers: dict[str, list[tuple[int, int]]] = {}
        for li, layer in enumerate(self.layers):
            for pos, blob in enumerate(layer.inputs):
                readers.setdefault(blob, []).append((li, pos))
        splits: dict[str, Layer] = {}
        for blob, uses in readers.items():
            if len(uses) < 2:
                continue
            outs = [f"{blob}_split{i}" for i in range(len(uses))]
            splits[blob] = Layer("Split", f"split_{blob}", [blob], outs)
            for (li, pos), out in zip(uses, outs, strict=True):
                self.layers[li].inputs[pos] = out
        result: list[Layer] = []
        blobs = 0
        for layer in self.layers:
            result.append(layer)
            blobs += len(layer.outputs)
            for blob in layer.outputs:
                split = splits.get(blob)
                if split is not None:
                    result.append(split)
                    blobs += len(split.outputs)
        return result, blobs


# --- writing: inputs --------------------------------------------------------------------------------


def int_hparam(arch: str, hparams: Mapping[str, Any], key: str, minimum: int) -> int:
    value = hparams[key]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"ncnn export of {arch}: hparam {key} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_hparam_keys(arch: str, hparams: Any, expected: tuple[str, ...]) -> None:
    if not isinstance(hparams, Mapping):
        raise ValueError(f"ncnn export of {arch}: hparams must be a dict, got {type(hparams).__name__}")
    missing = [k for k in expected if k not in hparams]
    unknown = sorted(str(k) for k in hparams if k not in expected)
    if missing or unknown:
        what = []
        if missing:
            what.append(f"missing {', '.join(missing)}")
        if unknown:
            what.append(f"unknown {', '.join(unknown)}")
        raise ValueError(f"ncnn export of {arch}: hparams {'; '.join(what)} (expected exactly {', '.join(expected)})")


class Weights:
    """Shape-checked access to the state dict; remembers which names were used to report leftovers."""

    def __init__(self, arch: str, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"ncnn export of {arch}: state_dict must be a mapping, got {type(state_dict).__name__}")
        self.arch = arch
        self.state_dict = state_dict
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """``state_dict[name]`` as float32, which must have ``shape``."""
        if name not in self.state_dict:
            raise ValueError(f"ncnn export of {self.arch}: state dict has no tensor {name!r} (expected shape {shape})")
        self.used.add(name)
        array = np.asarray(self.state_dict[name])
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"ncnn export of {self.arch}: tensor {name!r} has dtype {array.dtype}, expected floats")
        if array.shape != shape:
            raise ValueError(f"ncnn export of {self.arch}: tensor {name!r} has shape {array.shape}, expected {shape}")
        return array.astype(np.float32, copy=False)

    def check_all_used(self, hint: str) -> None:
        """Tensors nobody asked for mean the hparams do not describe these weights."""
        extra = sorted(str(k) for k in self.state_dict if k not in self.used)
        if extra:
            shown = ", ".join(repr(k) for k in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise ValueError(f"ncnn export of {self.arch}: unexpected tensors {shown} for {hint}")


def conv(
    weights: Weights,
    module: str,
    in_ch: int,
    out_ch: int,
    src: str,
    dst: str,
    act: int = 0,
    slope: float = 0.0,
) -> Layer:
    """A 3x3, stride 1, pad 1 convolution with bias named ``module``, optionally with a fused activation."""
    weight = weights.get(f"{module}.weight", (out_ch, in_ch, 3, 3))
    bias = weights.get(f"{module}.bias", (out_ch,))
    return conv_layer(module, weight, bias, src, dst, act, slope)


def conv_layer(
    name: str, weight: np.ndarray, bias: np.ndarray | None, src: str, dst: str, act: int = 0, slope: float = 0.0
) -> Layer:
    """A 3x3, stride 1, pad 1 convolution with these (out, in, 3, 3) weights and optional bias."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    params: list[tuple[int, ParamValue]] = [
        (0, weight.shape[0]),
        (1, 3),
        (4, 1),
        (5, int(bias is not None)),
        (6, weight.size),
    ]
    if act == ACT_LEAKY:
        params += [(9, ACT_LEAKY), (10, [slope])]
    elif act == ACT_RELU:
        params.append((9, ACT_RELU))
    chunks: list[tuple[bool, np.ndarray]] = [(True, weight)]
    if bias is not None:
        chunks.append((False, np.ascontiguousarray(bias, dtype=np.float32)))
    return Layer("Convolution", name, [src], [dst], params, chunks)


# --- reading ------------------------------------------------------------------------------------------


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Any]
    #: The values' text as written (arrays as lists), which :func:`check_graph` reads as ncnn does.
    raw: dict[int, str | list[str]] = field(default_factory=dict, repr=False)

    def int_param(self, key: int, default: int) -> int:
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise ValueError(f"param {key} of layer {self.name} is an array")
        return int(float(value))


#: What an architecture's ncnn reader returns: ``(arch, hparams, canonical state dict)``, or None for a graph
#: that is not of its architecture (see :attr:`texup.archs.spec.ArchSpec.ncnn_reader`).
NcnnRead = tuple[str, dict[str, Any], dict[str, Any]]


def set_conv(sd: dict[str, Any], name: str, conv: Any) -> None:
    """``name.weight`` and, when it has one, ``name.bias`` of a convolution read from the ``.bin``."""
    sd[f"{name}.weight"] = conv.weight
    if conv.bias is not None:
        sd[f"{name}.bias"] = conv.bias
