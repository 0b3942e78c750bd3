"""Writing texup's generators as ncnn models (text ``.param`` graph + binary ``.bin`` weights).

The inverse of :mod:`texup.weights.ncnn`: a canonical-name numpy state dict and the architecture's hparams
in, an ncnn ``.param``/``.bin`` pair out, the layers made by the architecture's graph writer
(:attr:`texup.archs.spec.ArchSpec.ncnn_writer`: ``texup.archs.<name>.ncnn.write_graph``, with
:mod:`texup.archs.ncnn_graph`). numpy only (no torch, no ncnn): the files are plain text and little-endian fp32.

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

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from texup._atomic import atomic_path
from texup.archs.ncnn_graph import Ints, Layer, ParamValue, Weights
from texup.archs.spec import registered

__all__ = ["export_ncnn", "supported_archs"]

MAGIC = "7767517"
#: Tag in front of a Convolution's weights in the .bin: raw fp32 data follows.
TAG_FP32 = 0x00000000


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


def _param_text(layers: list[Layer], blob_count: int) -> str:
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


def _write_bin(fh: BinaryIO, layers: list[Layer]) -> None:
    tag = struct.pack("<I", TAG_FP32)
    for layer in layers:
        for tagged, array in layer.weights:
            if tagged:
                fh.write(tag)
            fh.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


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
    :mod:`texup.archs.rrdbnet.ncnn`) or "concat" (the layers as the model is written, as other converters do).

    Raises:
        ValueError: unknown ``arch``; hparams missing, unknown or invalid; a tensor missing, of the wrong
            shape or not floating point; tensors the hparams do not account for; ``param_path`` and
            ``bin_path`` naming the same file. The message names the problem.
        OSError: the files cannot be written (an existing target is then left unchanged).
    """
    weights = Weights(arch, state_dict)
    if dense not in ("split", "concat"):
        raise ValueError(f"ncnn export: dense must be 'split' or 'concat', got {dense!r}")
    writer = next((spec.ncnn_writer for spec in registered() if spec.name == arch), None)
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
