"""Writing texup's generators as ncnn models (text ``.param`` graph + binary ``.bin`` weights).

The inverse of :mod:`texup.weights.ncnn`: a canonical-name numpy state dict and the architecture's hparams
in, an ncnn ``.param``/``.bin`` pair out, written by the graph writer the architecture's spec names
(:attr:`texup.archs.spec.ArchSpec.ncnn_writer`: :func:`rrdbnet_graph`, :func:`compact_graph`). numpy only
(no torch, no ncnn): the files are plain text and little-endian fp32.

Format facts used (ncnn's "param and model file structure" and "operation param weight table"):

* ``.param``: ``7767517``, then ``layer_count blob_count``, then one line per layer:
  ``Type name n_in n_out in_blobs... out_blobs... key=value...``; an array param is ``-233xx=n,v1,...``
  for key ``xx``. A value containing ``.`` or ``e`` is parsed as a float, anything else as an int.
* A blob may be consumed by one layer only; a blob read by several layers goes through a ``Split`` whose
  outputs each feed one consumer (with ``opt.lightmode`` ncnn frees a blob as soon as its consumer ran).
* ``.bin``: the weights of the layers in ``.param`` order. ``Convolution`` (``mb.load(size, 0)``): a
  4-byte tag, ``0x00000000`` = fp32, then ``num_output*in*kh*kw`` floats in torch's (out, in, kh, kw)
  order, then (``5=1``) ``num_output`` raw fp32 biases. ``PReLU``: ``0=num_slope`` raw fp32 slopes.

Layer choices (each checked numerically against torch in tests/core/test_ncnn_export.py):

* ``F.pixel_unshuffle(x, r)`` -> ``Reorg 0=r 1=0``. Mode 0 writes input channel ``c``'s sample at
  offset ``(i, j)`` to output channel ``c*r*r + i*r + j``, exactly torch's order (bit-identical);
  mode 1 (``(i*r + j)*C + c``) is a different order, so conv_first's weights need no permutation.
* nearest 2x / ``upscale``x upsampling -> ``Interp 0=1`` (nearest) with ``1=`` / ``2=`` height/width scales.
* ``F.pixel_shuffle`` -> ``PixelShuffle 0=r`` (mode 0 is torch's order).
* ``leaky_relu``/``relu`` after a convolution -> fused into it: ``9=2 -23310=1,slope`` / ``9=1``.
* ``a*0.2 + b`` (dense-block and RRDB residuals) -> ``Eltwise 0=1 -23301=2,0.2,1.0`` (weighted sum);
  ``a + b`` -> ``BinaryOp 0=0``; channel concatenation -> ``Concat`` (axis 0 = channels).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from texup._atomic import atomic_path
from texup.archs.rrdbnet_spec import SCALE_LAYOUT as _RRDB_SCALE_LAYOUT
from texup.archs.spec import registered

__all__ = ["export_ncnn", "supported_archs"]

MAGIC = "7767517"
#: Tag in front of a Convolution's weights in the .bin: raw fp32 data follows.
TAG_FP32 = 0x00000000

_RRDB_RESIDUAL_SCALE = 0.2
_RRDB_LRELU_SLOPE = 0.2
_RRDB_HPARAMS = ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block", "num_grow_ch")

_COMPACT_ACT_TYPES = ("prelu", "relu", "leakyrelu")
_COMPACT_LRELU_SLOPE = 0.1
_COMPACT_HPARAMS = ("num_in_ch", "num_out_ch", "num_feat", "num_conv", "upscale", "act_type")
#: Compact checkpoints split the convolutions into this many chunks (more when chunks would exceed 4 convolutions).
_COMPACT_TARGET_CHUNKS = 8

#: ncnn Convolution fused activation ids (param 9).
_ACT_RELU = 1
_ACT_LEAKY = 2

#: Reorg mode 0 = torch's pixel_unshuffle channel order (see the module docstring).
_REORG_MODE_TORCH = 0


class Ints(tuple):
    """An array param whose items ncnn reads as ints (e.g. Slice's sizes), written without exponents."""


ParamValue = int | float | Sequence[float]


@dataclass
class _Layer:
    """One layer of the graph being built: params as (key, value) pairs in writing order; ``weights`` are the
    .bin chunks in order, each ``(tagged, float32 array)`` (tagged = preceded by the fp32 tag)."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: list[tuple[int, ParamValue]] = field(default_factory=list)
    weights: list[tuple[bool, np.ndarray]] = field(default_factory=list)


class _Graph:
    """Layers in topological order, by blob name; :meth:`finish` inserts the Split layers ncnn needs."""

    def __init__(self) -> None:
        self.layers: list[_Layer] = []
        self._produced: set[str] = set()

    def add(self, layer: _Layer) -> str:
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

    def finish(self) -> tuple[list[_Layer], int]:
        """The layers with a Split after the producer of every blob read more than once, and the blob count.

        The i-th reader (in layer order) of a split blob reads ``{blob}_split{i}``; the original blob name
        stays the producer's output, so it can still be extracted.
        """
        readers: dict[str, list[tuple[int, int]]] = {}
        for li, layer in enumerate(self.layers):
            for pos, blob in enumerate(layer.inputs):
                readers.setdefault(blob, []).append((li, pos))
        splits: dict[str, _Layer] = {}
        for blob, uses in readers.items():
            if len(uses) < 2:
                continue
            outs = [f"{blob}_split{i}" for i in range(len(uses))]
            splits[blob] = _Layer("Split", f"split_{blob}", [blob], outs)
            for (li, pos), out in zip(uses, outs, strict=True):
                self.layers[li].inputs[pos] = out
        result: list[_Layer] = []
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


def _format_value(value: ParamValue) -> str:
    """ncnn param text: ints plain, floats with an exponent (so ncnn parses them as floats) and 9 significant
    digits (enough to round-trip a float32), arrays as ``n,v1,...``."""
    if isinstance(value, bool):
        raise AssertionError("ncnn export: bool param")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{float(np.float32(value)):.8e}"
    if isinstance(value, Ints):
        return ",".join([str(len(value))] + [str(int(v)) for v in value])
    return ",".join([str(len(value))] + [_format_value(float(v)) for v in value])


def _param_text(layers: list[_Layer], blob_count: int) -> str:
    lines = [MAGIC, f"{len(layers)} {blob_count}"]
    for layer in layers:
        parts = [f"{layer.type:<16}", f"{layer.name:<24}", str(len(layer.inputs)), str(len(layer.outputs))]
        parts += layer.inputs + layer.outputs
        for key, value in layer.params:
            # Array params are written under key -23300 - key.
            text_key = key if isinstance(value, (int, float)) else -23300 - key
            parts.append(f"{text_key}={_format_value(value)}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def _write_bin(fh: BinaryIO, layers: list[_Layer]) -> None:
    tag = struct.pack("<I", TAG_FP32)
    for layer in layers:
        for tagged, array in layer.weights:
            if tagged:
                fh.write(tag)
            fh.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


# --- inputs -------------------------------------------------------------------------------------------


def _int_hparam(arch: str, hparams: Mapping[str, Any], key: str, minimum: int) -> int:
    value = hparams[key]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"ncnn export of {arch}: hparam {key} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_hparam_keys(arch: str, hparams: Any, expected: tuple[str, ...]) -> None:
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


class _Weights:
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


def _conv(
    weights: _Weights,
    module: str,
    in_ch: int,
    out_ch: int,
    src: str,
    dst: str,
    act: int = 0,
    slope: float = 0.0,
) -> _Layer:
    """A 3x3, stride 1, pad 1 convolution with bias named ``module``, optionally with a fused activation."""
    weight = weights.get(f"{module}.weight", (out_ch, in_ch, 3, 3))
    bias = weights.get(f"{module}.bias", (out_ch,))
    return _conv_layer(module, weight, bias, src, dst, act, slope)


def _conv_layer(
    name: str, weight: np.ndarray, bias: np.ndarray | None, src: str, dst: str, act: int = 0, slope: float = 0.0
) -> _Layer:
    """A 3x3, stride 1, pad 1 convolution with these (out, in, 3, 3) weights and optional bias."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    params: list[tuple[int, ParamValue]] = [
        (0, weight.shape[0]),
        (1, 3),
        (4, 1),
        (5, int(bias is not None)),
        (6, weight.size),
    ]
    if act == _ACT_LEAKY:
        params += [(9, _ACT_LEAKY), (10, [slope])]
    elif act == _ACT_RELU:
        params.append((9, _ACT_RELU))
    chunks: list[tuple[bool, np.ndarray]] = [(True, weight)]
    if bias is not None:
        chunks.append((False, np.ascontiguousarray(bias, dtype=np.float32)))
    return _Layer("Convolution", name, [src], [dst], params, chunks)


# --- architectures ------------------------------------------------------------------------------------


def _dense_block_concat(g: _Graph, weights: _Weights, prefix: str, x: str, nf: int, gc: int) -> str:
    """One residual dense block as the model is written: conv{j} over the concatenation of x and g1..g{j-1}."""
    features = [x]
    for j in range(1, 6):
        src = (
            features[0]
            if j == 1
            else g.add(_Layer("Concat", f"{prefix}.cat{j}", list(features), [f"{prefix}.cat{j}"], [(0, 0)]))
        )
        last = j == 5
        conv = _conv(
            weights,
            f"{prefix}.conv{j}",
            nf + (j - 1) * gc,
            nf if last else gc,
            src,
            f"{prefix}.conv{j}",
            act=0 if last else _ACT_LEAKY,
            slope=_RRDB_LRELU_SLOPE,
        )
        features.append(g.add(conv))
    # out = conv5 * 0.2 + x
    return g.add(_Layer("Eltwise", prefix, [features[-1], x], [prefix], [(0, 1), (1, [_RRDB_RESIDUAL_SCALE, 1.0])]))


def _dense_block_split(
    g: _Graph, weights: _Weights, prefix: str, x: str, nf: int, gc: int, *, outer: str | None, name: str
) -> str:
    """The same block with every input convolved once: no concatenation, one Winograd transform per input.

    A convolution over a concatenation is the sum of convolutions over its parts, so
    ``conv_j([x, g1 .. g_{j-1}]) = sum_m conv_j[:, part m](part m)``. Each part m (x, then each growth output
    g_m as soon as it exists) goes through one convolution whose outputs are its contributions to every later
    conv_j, stacked, and a Slice hands them out; g_j = lrelu(sum of its contributions) and the block output
    is ``0.2 * sum(conv5's contributions) + x`` in one weighted Eltwise. Same arithmetic as the concatenated
    form up to summation order, but each part's input transform is done once instead of once per later
    convolution, and no concatenation is copied: faster on a CPU (docs/benchmarks.md 5b).
    With ``outer`` (the RRDB's input) the RRDB residual folds in too: ``0.04 * conv5 + 0.2 * x + outer``.
    """
    outs = [gc, gc, gc, gc, nf]
    full = [weights.get(f"{prefix}.conv{j}.weight", (outs[j - 1], nf + (j - 1) * gc, 3, 3)) for j in range(1, 6)]
    biases = [weights.get(f"{prefix}.conv{j}.bias", (outs[j - 1],)) for j in range(1, 6)]
    contributions: dict[int, list[str]] = {j: [] for j in range(1, 6)}
    part = x
    for m in range(5):  # part 0 is x; part m >= 1 is g_m, which feeds conv_{m+1} .. conv5
        lo, hi = (0, nf) if m == 0 else (nf + (m - 1) * gc, nf + m * gc)
        targets = list(range(m + 1, 6))
        weight = np.concatenate([full[t - 1][:, lo:hi] for t in targets], axis=0)
        bias = np.concatenate([biases[t - 1] for t in targets]) if m == 0 else None  # each bias added once
        stacked = g.add(_conv_layer(f"{prefix}.part{m}", weight, bias, part, f"{prefix}.part{m}"))
        if len(targets) > 1:
            names = [f"{prefix}.part{m}.to{t}" for t in targets]
            g.add(
                _Layer(
                    "Slice", f"{prefix}.slice{m}", [stacked], names, [(0, Ints(outs[t - 1] for t in targets)), (1, 0)]
                )
            )
        else:
            names = [stacked]
        for t, blob in zip(targets, names, strict=True):
            contributions[t].append(blob)
        if m < 4:
            j = m + 1
            summed = (
                contributions[j][0]
                if len(contributions[j]) == 1
                else g.add(
                    _Layer("Eltwise", f"{prefix}.sum{j}", list(contributions[j]), [f"{prefix}.sum{j}"], [(0, 1)])
                )
            )
            part = g.add(_Layer("ReLU", f"{prefix}.g{j}", [summed], [f"{prefix}.g{j}"], [(0, _RRDB_LRELU_SLOPE)]))
    r = _RRDB_RESIDUAL_SCALE
    inputs, coeffs = list(contributions[5]) + [x], [r] * len(contributions[5]) + [1.0]
    if outer is not None:
        inputs, coeffs = inputs + [outer], [c * r for c in coeffs] + [1.0]
    return g.add(_Layer("Eltwise", name, inputs, [name], [(0, 1), (1, coeffs)]))


def rrdbnet_graph(hparams: Mapping[str, Any], weights: _Weights, dense: str = "split") -> tuple[_Graph, list[str]]:
    """RRDBNet's graph and checkpoints (its spec's ``ncnn_writer``)."""
    arch = "RRDBNet"
    _check_hparam_keys(arch, hparams, _RRDB_HPARAMS)
    in_ch, out_ch, nf, nb, gc = (
        _int_hparam(arch, hparams, k, 1) for k in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch")
    )
    scale = hparams["scale"]
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or int(scale) not in _RRDB_SCALE_LAYOUT:
        raise ValueError(
            f"ncnn export of {arch}: hparam scale must be one of {sorted(_RRDB_SCALE_LAYOUT)}, got {scale!r}"
        )
    unshuffle, num_up = _RRDB_SCALE_LAYOUT[int(scale)]

    g = _Graph()
    checkpoints: list[str] = []
    x = g.add(_Layer("Input", "data", [], ["data"]))
    if unshuffle > 1:
        x = g.add(
            _Layer("Reorg", "pixel_unshuffle", [x], ["data_unshuffled"], [(0, unshuffle), (1, _REORG_MODE_TORCH)])
        )
    feat = g.add(_conv(weights, "conv_first", in_ch * unshuffle * unshuffle, nf, x, "conv_first"))

    residual = [_RRDB_RESIDUAL_SCALE, 1.0]
    x = feat
    for i in range(nb):
        block_in = x
        for k in (1, 2, 3):
            prefix = f"body.{i}.rdb{k}"
            if dense == "concat":
                x = _dense_block_concat(g, weights, prefix, x, nf, gc)
            else:
                # The third block's residual and the RRDB's fold into one weighted sum (saves a pass).
                outer = block_in if k == 3 else None
                x = _dense_block_split(
                    g, weights, prefix, x, nf, gc, outer=outer, name=f"body.{i}" if outer else prefix
                )
        if dense == "concat":
            # RRDB: rdb3(rdb2(rdb1(x))) * 0.2 + x
            x = g.add(_Layer("Eltwise", f"body.{i}", [x, block_in], [f"body.{i}"], [(0, 1), (1, residual)]))
        checkpoints.append(x)

    body = g.add(_conv(weights, "conv_body", nf, nf, x, "conv_body"))
    x = g.add(_Layer("BinaryOp", "trunk", [feat, body], ["trunk"], [(0, 0)]))
    checkpoints.append(x)
    for u in range(1, num_up + 1):
        x = g.add(_Layer("Interp", f"up{u}", [x], [f"up{u}"], [(0, 1), (1, 2.0), (2, 2.0)]))
        x = g.add(_conv(weights, f"conv_up{u}", nf, nf, x, f"conv_up{u}", act=_ACT_LEAKY, slope=_RRDB_LRELU_SLOPE))
        checkpoints.append(x)
    x = g.add(_conv(weights, "conv_hr", nf, nf, x, "conv_hr", act=_ACT_LEAKY, slope=_RRDB_LRELU_SLOPE))
    checkpoints.append(x)
    checkpoints.append(g.add(_conv(weights, "conv_last", nf, out_ch, x, "output")))
    weights.check_all_used(f"num_block={nb}, scale={scale}")
    return g, checkpoints


def compact_graph(hparams: Mapping[str, Any], weights: _Weights, dense: str = "split") -> tuple[_Graph, list[str]]:
    """SRVGGNetCompact's graph and checkpoints (its spec's ``ncnn_writer``; no dense blocks: ``dense`` is unused)."""
    arch = "SRVGGNetCompact"
    _check_hparam_keys(arch, hparams, _COMPACT_HPARAMS)
    in_ch, out_ch, nf, up = (
        _int_hparam(arch, hparams, k, 1) for k in ("num_in_ch", "num_out_ch", "num_feat", "upscale")
    )
    num_conv = _int_hparam(arch, hparams, "num_conv", 0)
    act_type = hparams["act_type"]
    if act_type not in _COMPACT_ACT_TYPES:
        raise ValueError(
            f"ncnn export of {arch}: hparam act_type must be one of {_COMPACT_ACT_TYPES}, got {act_type!r}"
        )
    if in_ch != out_ch:
        raise ValueError(f"ncnn export of {arch}: num_in_ch ({in_ch}) must equal num_out_ch ({out_ch})")

    # Split the num_conv + 2 convolutions into `chunks` runs of 2 to 4 (sizes differ by at most one):
    # _COMPACT_TARGET_CHUNKS of them where that allows, more for very deep models. A checkpoint is the
    # activation output of the last convolution of each run but the final one.
    activated = num_conv + 1
    total = num_conv + 2
    chunks = max(math.ceil(total / 4), min(_COMPACT_TARGET_CHUNKS, total // 2))
    cut_after = {i * total // chunks for i in range(1, chunks)}  # 1-based convolution numbers

    g = _Graph()
    checkpoints: list[str] = []
    data = g.add(_Layer("Input", "data", [], ["data"]))
    x = data
    for k in range(activated):
        c_in = in_ch if k == 0 else nf
        conv_name, act_name = f"body.{2 * k}", f"body.{2 * k + 1}"
        if act_type == "prelu":
            x = g.add(_conv(weights, conv_name, c_in, nf, x, conv_name))
            slopes = weights.get(f"{act_name}.weight", (nf,))
            x = g.add(_Layer("PReLU", act_name, [x], [act_name], [(0, nf)], [(False, slopes)]))
        elif act_type == "relu":
            x = g.add(_conv(weights, conv_name, c_in, nf, x, act_name, act=_ACT_RELU))
        else:
            x = g.add(_conv(weights, conv_name, c_in, nf, x, act_name, act=_ACT_LEAKY, slope=_COMPACT_LRELU_SLOPE))
        if k + 1 in cut_after:
            checkpoints.append(x)
    last = f"body.{2 * activated}"
    x = g.add(_conv(weights, last, nf, out_ch * up * up, x, last))
    x = g.add(_Layer("PixelShuffle", "pixel_shuffle", [x], ["pixel_shuffle"], [(0, up)]))
    skip = g.add(_Layer("Interp", "skip", [data], ["skip"], [(0, 1), (1, float(up)), (2, float(up))]))
    checkpoints.append(g.add(_Layer("BinaryOp", "output", [x, skip], ["output"], [(0, 0)])))
    weights.check_all_used(f"num_conv={num_conv}, act_type={act_type!r}")
    return g, checkpoints


# --- entry point --------------------------------------------------------------------------------------


def supported_archs() -> tuple[str, ...]:
    """The registered architectures with an ncnn writer (:attr:`texup.archs.spec.ArchSpec.ncnn_writer`)."""
    return tuple(spec.name for spec in registered() if spec.ncnn_writer is not None)


def export_ncnn(
    arch: str,
    hparams: dict[str, Any],
    state_dict: Mapping[str, np.ndarray],
    param_path: str | os.PathLike[str],
    bin_path: str | os.PathLike[str],
    *,
    dense: str = "split",
) -> list[str]:
    """Write an ncnn ``.param``/``.bin`` pair for texup architecture ``arch`` (one of :func:`supported_archs`).

    Args:
        arch: a registered architecture whose spec has an ``ncnn_writer`` (:mod:`texup.archs.spec`).
        hparams: exactly the architecture's constructor kwargs (``module.hparams``); no defaults are filled in.
        state_dict: canonical-name weights (see the architecture modules' docstrings) as numpy arrays (or
            anything ``np.asarray`` takes) of any float dtype; written as fp32. Every tensor the
            architecture needs must be present with its exact shape, and no other tensor.
        param_path, bin_path: the files to write (their folders must exist). Each is replaced atomically
            (temporary file in the same folder, then ``os.replace``); both temporary files are complete
            before either target is replaced, and nothing is written at all when the inputs are invalid.

    The graph's input blob is ``"data"`` (C, H, W) float in [0, 1], with H and W multiples of the
    architecture's ``input_multiple`` (RRDBNet x2 / x1: 2 / 4); its output blob is ``"output"``
    (C_out, H*scale, W*scale), unclamped, matching the torch module's ``forward``.

    Returns:
        Checkpoint blob names in graph order, the last being ``"output"``. Extracting them one after another,
        each once, with one ``ncnn.Extractor`` computes the network in bounded chunks (each extraction runs
        only the layers between the previous checkpoint and this one; ncnn keeps the pending side inputs,
        e.g. the trunk skip connection) and gives the same output as extracting ``"output"`` directly.
        RRDBNet: the output of every RRDB (``body.{i}``), the trunk sum, every upsampling stage
        (``conv_up{u}``) and ``conv_hr``. SRVGGNetCompact: activation outputs that cut the convolutions into
        chunks of 2 to 4 (8 chunks where that allows, e.g. every 2nd-3rd of the 18 in realesr-animevideov3;
        more for deeper models; none for num_conv 0 or 1).

    ``dense``: RRDBNet's dense blocks as "split" (default: each input convolved once, the faster graph, see
    :func:`_dense_block_split`) or "concat" (the layers as the model is written, as other converters do).

    Raises:
        ValueError: unknown ``arch``; hparams missing, unknown or invalid; a tensor missing, of the wrong
            shape or not floating point; tensors the hparams do not account for; ``param_path`` and
            ``bin_path`` naming the same file. The message names the problem.
        OSError: the files cannot be written (an existing target is then left unchanged).
    """
    weights = _Weights(arch, state_dict)
    if dense not in ("split", "concat"):
        raise ValueError(f"ncnn export: dense must be 'split' or 'concat', got {dense!r}")
    writer = next((spec.ncnn_export() for spec in registered() if spec.name == arch), None)
    if writer is None:
        raise ValueError(f"ncnn export: unsupported architecture {arch!r}; supported: {', '.join(supported_archs())}")
    graph, checkpoints = writer(hparams, weights, dense)
    param_file, bin_file = Path(param_path), Path(bin_path)
    if os.path.abspath(param_file) == os.path.abspath(bin_file):
        raise ValueError(f"ncnn export: param_path and bin_path are the same file ({param_file})")
    layers, blob_count = graph.finish()
    text = _param_text(layers, blob_count)
    # Nested so that both temporary files are complete before either target is replaced.
    with atomic_path(param_file) as param_tmp, atomic_path(bin_file) as bin_tmp:
        with open(bin_tmp, "wb") as fh:
            _write_bin(fh, layers)
        param_tmp.write_text(text, encoding="ascii")
    return checkpoints
