"""SRVGGNetCompact as an ncnn graph: its writer (a canonical numpy state dict to layers, with checkpoints between
runs of convolutions) and its reader (a parsed graph back to a canonical state dict), the ``ncnn_writer`` and
``ncnn_reader`` of its spec. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from texup.archs import ncnn_graph as ng
from texup.archs.compact import spec
from texup.errors import ModelLoadError

_COMPACT_ACT_TYPES = ("prelu", "relu", "leakyrelu")
_COMPACT_LRELU_SLOPE = 0.1
_COMPACT_HPARAMS = ("num_in_ch", "num_out_ch", "num_feat", "num_conv", "upscale", "act_type")
#: Compact checkpoints split the convolutions into this many chunks (more when chunks would exceed 4 convolutions).
_COMPACT_TARGET_CHUNKS = 8


def write_graph(hparams: Mapping[str, Any], weights: ng.Weights, dense: str = "split") -> tuple[ng.Graph, list[str]]:
    """SRVGGNetCompact's graph and checkpoints (its spec's ``ncnn_writer``; no dense blocks: ``dense`` is unused)."""
    arch = "SRVGGNetCompact"
    ng.check_hparam_keys(arch, hparams, _COMPACT_HPARAMS)
    in_ch, out_ch, nf, up = (
        ng.int_hparam(arch, hparams, k, 1) for k in ("num_in_ch", "num_out_ch", "num_feat", "upscale")
    )
    num_conv = ng.int_hparam(arch, hparams, "num_conv", 0)
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

    g = ng.Graph()
    checkpoints: list[str] = []
    data = g.add(ng.Layer("Input", "data", [], ["data"]))
    x = data
    for k in range(activated):
        c_in = in_ch if k == 0 else nf
        conv_name, act_name = f"body.{2 * k}", f"body.{2 * k + 1}"
        if act_type == "prelu":
            x = g.add(ng.conv(weights, conv_name, c_in, nf, x, conv_name))
            slopes = weights.get(f"{act_name}.weight", (nf,))
            x = g.add(ng.Layer("PReLU", act_name, [x], [act_name], [(0, nf)], [(False, slopes)]))
        elif act_type == "relu":
            x = g.add(ng.conv(weights, conv_name, c_in, nf, x, act_name, act=ng.ACT_RELU))
        else:
            x = g.add(ng.conv(weights, conv_name, c_in, nf, x, act_name, act=ng.ACT_LEAKY, slope=_COMPACT_LRELU_SLOPE))
        if k + 1 in cut_after:
            checkpoints.append(x)
    last = f"body.{2 * activated}"
    x = g.add(ng.conv(weights, last, nf, out_ch * up * up, x, last))
    x = g.add(ng.Layer("PixelShuffle", "pixel_shuffle", [x], ["pixel_shuffle"], [(0, up)]))
    skip = g.add(ng.Layer("Interp", "skip", [data], ["skip"], [(0, 1), (1, float(up)), (2, float(up))]))
    checkpoints.append(g.add(ng.Layer("BinaryOp", "output", [x, skip], ["output"], [(0, 0)])))
    weights.check_all_used(f"num_conv={num_conv}, act_type={act_type!r}")
    return g, checkpoints


def read_graph(layers: list[ng.NcnnLayer], weights: list[tuple[str, Any]], param_path: Path) -> ng.NcnnRead | None:
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
        ng.set_conv(sd, f"body.{2 * index}", conv)
    for index, slopes in enumerate(prelus):
        sd[f"body.{2 * index + 1}.weight"] = slopes
    hparams = spec.detect(sd, param_path)
    if hparams is None:
        raise ModelLoadError(param_path, "not a known architecture")
    hparams["act_type"] = act_type
    return "SRVGGNetCompact", hparams, sd
