"""RRDBNet as an ncnn graph: its writer (a canonical numpy state dict to layers) and its reader (the convolutions
of a parsed graph back to a canonical state dict), the ``ncnn_writer`` and ``ncnn_reader`` of its spec. numpy only.

The dense blocks are written "split" by default: each input convolved once, its contributions to every later
convolution stacked and sliced, no Concat (about 1.3x faster on a CPU, docs/benchmarks.md 5b); "concat" writes
them as the model is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from texup.archs import ncnn_graph as ng
from texup.archs.rrdbnet import spec
from texup.archs.rrdbnet.spec import SCALE_LAYOUT
from texup.errors import ModelLoadError

_RRDB_RESIDUAL_SCALE = 0.2
_RRDB_LRELU_SLOPE = 0.2
_RRDB_HPARAMS = ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block", "num_grow_ch")


def _dense_block_concat(g: ng.Graph, weights: ng.Weights, prefix: str, x: str, nf: int, gc: int) -> str:
    """One residual dense block as the model is written: conv{j} over the concatenation of x and g1..g{j-1}."""
    features = [x]
    for j in range(1, 6):
        src = (
            features[0]
            if j == 1
            else g.add(ng.Layer("Concat", f"{prefix}.cat{j}", list(features), [f"{prefix}.cat{j}"], [(0, 0)]))
        )
        last = j == 5
        conv = ng.conv(
            weights,
            f"{prefix}.conv{j}",
            nf + (j - 1) * gc,
            nf if last else gc,
            src,
            f"{prefix}.conv{j}",
            act=0 if last else ng.ACT_LEAKY,
            slope=_RRDB_LRELU_SLOPE,
        )
        features.append(g.add(conv))
    # out = conv5 * 0.2 + x
    return g.add(ng.Layer("Eltwise", prefix, [features[-1], x], [prefix], [(0, 1), (1, [_RRDB_RESIDUAL_SCALE, 1.0])]))


def _dense_block_split(
    g: ng.Graph, weights: ng.Weights, prefix: str, x: str, nf: int, gc: int, *, outer: str | None, name: str
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
        stacked = g.add(ng.conv_layer(f"{prefix}.part{m}", weight, bias, part, f"{prefix}.part{m}"))
        if len(targets) > 1:
            names = [f"{prefix}.part{m}.to{t}" for t in targets]
            g.add(
                ng.Layer(
                    "Slice",
                    f"{prefix}.slice{m}",
                    [stacked],
                    names,
                    [(0, ng.Ints(outs[t - 1] for t in targets)), (1, 0)],
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
                    ng.Layer("Eltwise", f"{prefix}.sum{j}", list(contributions[j]), [f"{prefix}.sum{j}"], [(0, 1)])
                )
            )
            part = g.add(ng.Layer("ReLU", f"{prefix}.g{j}", [summed], [f"{prefix}.g{j}"], [(0, _RRDB_LRELU_SLOPE)]))
    r = _RRDB_RESIDUAL_SCALE
    inputs, coeffs = list(contributions[5]) + [x], [r] * len(contributions[5]) + [1.0]
    if outer is not None:
        inputs, coeffs = inputs + [outer], [c * r for c in coeffs] + [1.0]
    return g.add(ng.Layer("Eltwise", name, inputs, [name], [(0, 1), (1, coeffs)]))


def write_graph(hparams: Mapping[str, Any], weights: ng.Weights, dense: str = "split") -> tuple[ng.Graph, list[str]]:
    """RRDBNet's graph and checkpoints (its spec's ``ncnn_writer``): ``dense`` "split" (faster on a CPU) or "concat"."""
    arch = "RRDBNet"
    ng.check_hparam_keys(arch, hparams, _RRDB_HPARAMS)
    in_ch, out_ch, nf, nb, gc = (
        ng.int_hparam(arch, hparams, k, 1) for k in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch")
    )
    scale = hparams["scale"]
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or int(scale) not in SCALE_LAYOUT:
        raise ValueError(f"ncnn export of {arch}: hparam scale must be one of {sorted(SCALE_LAYOUT)}, got {scale!r}")
    unshuffle, num_up = SCALE_LAYOUT[int(scale)]

    g = ng.Graph()
    checkpoints: list[str] = []
    x = g.add(ng.Layer("Input", "data", [], ["data"]))
    if unshuffle > 1:
        x = g.add(
            ng.Layer("Reorg", "pixel_unshuffle", [x], ["data_unshuffled"], [(0, unshuffle), (1, ng.REORG_MODE_TORCH)])
        )
    feat = g.add(ng.conv(weights, "conv_first", in_ch * unshuffle * unshuffle, nf, x, "conv_first"))

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
            x = g.add(ng.Layer("Eltwise", f"body.{i}", [x, block_in], [f"body.{i}"], [(0, 1), (1, residual)]))
        checkpoints.append(x)

    body = g.add(ng.conv(weights, "conv_body", nf, nf, x, "conv_body"))
    x = g.add(ng.Layer("BinaryOp", "trunk", [feat, body], ["trunk"], [(0, 0)]))
    checkpoints.append(x)
    for u in range(1, num_up + 1):
        x = g.add(ng.Layer("Interp", f"up{u}", [x], [f"up{u}"], [(0, 1), (1, 2.0), (2, 2.0)]))
        x = g.add(ng.conv(weights, f"conv_up{u}", nf, nf, x, f"conv_up{u}", act=ng.ACT_LEAKY, slope=_RRDB_LRELU_SLOPE))
        checkpoints.append(x)
    x = g.add(ng.conv(weights, "conv_hr", nf, nf, x, "conv_hr", act=ng.ACT_LEAKY, slope=_RRDB_LRELU_SLOPE))
    checkpoints.append(x)
    checkpoints.append(g.add(ng.conv(weights, "conv_last", nf, out_ch, x, "output")))
    weights.check_all_used(f"num_block={nb}, scale={scale}")
    return g, checkpoints


def read_graph(layers: list[ng.NcnnLayer], weights: list[tuple[str, Any]], param_path: Path) -> ng.NcnnRead | None:
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
        ng.set_conv(sd, name, conv)
    hparams = spec.detect(sd, param_path)
    if hparams is None:
        raise ModelLoadError(param_path, "not a known architecture")
    return "RRDBNet", hparams, sd
