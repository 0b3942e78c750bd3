"""Tile sizes per engine (issue 23 items 2 and 3): the ncnn engine's upsampling head in row strips gives the whole
head's pixels, and every engine's automatic tile keeps the README's budget (one tile's activations plus the output
row band within 1 GiB) by its measured memory estimate, which a real tile of a small model stays within."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from realdata import real_image

from texup.engines.select import open_engine

ncnn = pytest.importorskip("ncnn")
torch = pytest.importorskip("torch")

from texup.archs import RRDBNet, SRVGGNetCompact  # noqa: E402
from texup.archs.ncnn_graph import NcnnLayer  # noqa: E402
from texup.engines import ncnn_engine  # noqa: E402
from texup.engines.ncnn_engine import NcnnEngine, find_row_head, graph_from_files  # noqa: E402
from texup.engines.ncnn_models import graph_for  # noqa: E402

CORE = Path(__file__).resolve().parents[2] / "core"
BUDGET = 1 << 30


def crop01(h: int, w: int) -> np.ndarray:
    return real_image("coffee.png", (120, 200, h, w)).astype(np.float32) / 255.0


def _tiny_graph(net: torch.nn.Module, name: str) -> ncnn_engine.NcnnGraph:
    """An ncnn export of a small torch network (seeded weights), as texup exports any weights file."""
    hparams = dict(net.hparams)
    arch = "RRDBNet" if isinstance(net, RRDBNet) else "SRVGGNetCompact"
    model = SimpleNamespace(
        module=net, arch=arch, hparams=hparams, name=name, scale=net.scale, input_multiple=net.input_multiple
    )
    return graph_for(model)[0]


# --- the head in row strips: same pixels ----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("graph_kind", ["texup's export", "Real-ESRGAN's packaged graph"])
def test_rrdbnet_head_in_row_strips_gives_the_whole_heads_pixels(graph_kind, precision):
    from texup.weights.registry import ncnn_files

    if graph_kind == "texup's export":
        engine = open_engine("realesrgan-x4plus-anime", engine="ncnn", device="cpu", precision=precision)
    else:  # Concat dense blocks, Interp -> Convolution -> ReLU layers as Real-ESRGAN wrote them
        files = ncnn_files("realesrgan-x4plus-anime")
        engine = NcnnEngine(graph_from_files(*files, scale=4, input_multiple=1), precision=precision)
    head = engine.graph.head
    assert head is not None and (head.up, head.halo) == (4, 2) and head.body_checkpoints[-1] == head.input_blob
    assert engine.stream_rows == ncnn_engine.NCNN_STREAM_ROWS and engine.head_kind == "strips"
    x = crop01(45, 38)  # 45 rows: strips of 8 or 16 end in a short one
    # fp32: the same arithmetic. bf16 storage rounds the output blob to 8 bits of mantissa, and a strip's height can
    # change ncnn's convolution kernel (summation order): at most one bf16 step (2^-8 below 1) apart, rarely.
    tolerance = 1e-6 if precision == "fp32" else 2**-8
    engine.stream_rows = None
    whole = engine.run_tile(x)
    for rows in (1, 5, ncnn_engine.NCNN_STREAM_ROWS, 64):
        engine.stream_rows = rows
        steps: list[float] = []
        strips = engine.run_tile(x, cancel=lambda: False, step=steps.append)
        assert strips.shape == whole.shape == (180, 152, 3)
        difference = np.abs(strips - whole)
        assert difference.max() <= tolerance and difference.mean() < 1e-4, (rows, difference.max())
        assert steps == sorted(steps) and steps[-1] == pytest.approx(1.0)


def test_a_pixel_unshuffle_rrdbnet_runs_its_head_in_strips_too():
    torch.manual_seed(0)
    net = RRDBNet(scale=2, num_feat=16, num_block=1, num_grow_ch=8)
    graph = _tiny_graph(net, "tiny-rrdb-x2")
    engine = NcnnEngine(graph, precision="fp32")
    assert graph.head is not None and graph.head.up == 4 and engine.input_multiple == 2
    x = crop01(23, 31)  # odd sizes: padded to the unshuffle multiple, cropped back
    engine.stream_rows = None
    whole = engine.run_tile(x)
    engine.stream_rows = 3
    strips = engine.run_tile(x)
    assert strips.shape == (46, 62, 3) and 0.05 < float(np.mean((whole > 0) & (whole < 1)))
    assert np.abs(strips - whole).max() <= 1e-6


def _layer(kind: str, name: str, src: str, params: dict[int, object]) -> NcnnLayer:
    return NcnnLayer(kind, name, [src], [name], dict(params))


def test_only_a_chain_of_nearest_2x_interps_and_same_padded_convolutions_is_a_row_head():
    conv = {0: 8, 1: 3, 4: 1}
    chain = [
        _layer("Interp", "up1", "trunk", {0: 1, 1: 2.0, 2: 2.0}),
        _layer("Convolution", "c1", "up1", conv),
        _layer("ReLU", "r1", "c1", {}),
        _layer("Convolution", "out", "r1", conv),
    ]
    head = find_row_head(chain, "out", ["trunk", "c1", "out"])
    assert head is not None and (head.input_blob, head.up, head.halo, head.body_checkpoints) == (
        "trunk",
        2,
        1,
        ("trunk",),
    )
    bilinear = [_layer("Interp", "up1", "trunk", {0: 2, 1: 2.0, 2: 2.0}), *chain[1:]]
    strided = [*chain[:3], _layer("Convolution", "out", "r1", {**conv, 3: 2})]
    unpadded = [*chain[:3], _layer("Convolution", "out", "r1", {0: 8, 1: 3, 4: 0})]
    branching = [*chain[:3], NcnnLayer("BinaryOp", "out", ["r1", "trunk"], ["out"], {})]
    for layers in (bilinear, strided, unpadded, branching):
        assert find_row_head(layers, "out", ["out"]) is None
    # Compact's head upsamples by PixelShuffle at input resolution: no row head, nothing at output resolution.
    compact = open_engine("realesr-animevideov3", engine="ncnn", device="cpu")
    assert compact.graph.head is None and compact.head_kind == "input"


# --- the automatic tile: within the budget, the fastest measured that fits ------------------------------


@pytest.mark.parametrize("model", ["realesrgan-x4plus", "realesr-animevideov3"])
@pytest.mark.parametrize(
    ("engine", "precision"), [("ncnn", "fp32"), ("ncnn", "bf16"), ("torch", "bf16"), ("torch", "fp32")]
)
def test_the_automatic_tile_keeps_the_budget_for_every_engine_precision_and_model(model, engine, precision):
    e = open_engine(model, engine=engine, device="cpu", precision=precision)
    # Textures up to 4096 px wide (16384 px outputs) keep the fastest measured tile, 256, on every engine.
    for out_width in (None, 2048, 16384):
        assert e.auto_tile(overlap=16, out_width=out_width) == 256
    for out_width in (2048, 16384, 65536, 200_000):
        tile = e.auto_tile(overlap=16, out_width=out_width)
        side = tile + 32
        need = e.activation_bytes(side) + side * e.scale * out_width * 12
        assert tile == 64 or need <= BUDGET, (out_width, tile, need)
        assert 64 <= tile <= 256 and tile % 32 == 0


def test_the_ncnn_whole_head_gets_the_smaller_tile_its_memory_allows():
    e = open_engine("realesrgan-x4plus", engine="ncnn", device="cpu", precision="fp32")
    strips = e.activation_bytes(288)
    e.stream_rows = None
    assert e.head_kind == "whole"
    tile = e.auto_tile(overlap=16, out_width=2048)
    assert 64 <= tile < 256 and e.activation_bytes(288) > 3 * strips
    assert tile == 64 or e.activation_bytes(tile + 32) + (tile + 32) * 4 * 2048 * 12 <= BUDGET


# --- the estimate against a measured tile of a small model ----------------------------------------------


_MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from texup.engines.ncnn_engine import NcnnEngine, graph_from_files

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    param, weights, precision, rows, side = sys.argv[1:6]
    engine = NcnnEngine(graph_from_files(Path(param), Path(weights)), precision=precision)
    engine.stream_rows = int(rows) or None
    x = np.random.default_rng(0).random((int(side), int(side), 3), dtype=np.float32)
    engine.run_tile(x[:32, :32])  # warm-up, as the figures were measured
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    engine.run_tile(x)
    print(json.dumps({"growth": status("VmHWM") - before, "estimate": engine.activation_bytes(int(side)),
                      "kind": engine.head_kind}))
    """
)


def _measure(graph: ncnn_engine.NcnnGraph, precision: str, rows: int, side: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(CORE)}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(graph.param), str(graph.bin), precision, str(rows), str(side)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize(
    ("arch", "precision", "rows", "side", "kind"),
    [
        ("rrdbnet", "fp32", ncnn_engine.NCNN_STREAM_ROWS, 160, "strips"),
        ("rrdbnet", "bf16", ncnn_engine.NCNN_STREAM_ROWS, 160, "strips"),
        ("rrdbnet", "fp32", 0, 96, "whole"),
        ("compact", "fp32", 0, 160, "input"),
    ],
)
def test_a_real_ncnn_tile_stays_within_the_measured_estimate(arch, precision, rows, side, kind):
    # One RRDB of x4plus's widths (64 features, 32 growth): ncnn frees every blob after its last use, so the peak
    # per pixel is one dense block's, as in x4plus's 23, at 1/23 of the time. Compact: animevideov3's width.
    torch.manual_seed(0)
    if arch == "rrdbnet":
        net = RRDBNet(num_block=1)
    else:
        net = SRVGGNetCompact(num_feat=64, num_conv=4, upscale=4)
    figures = _measure(_tiny_graph(net, f"tiny-{arch}"), precision, rows, side)
    assert figures["kind"] == kind
    growth, estimate = figures["growth"], figures["estimate"]
    # Within the estimate, and not so far below it that the estimate would waste the budget.
    assert 0.4 * estimate < growth <= estimate, f"{kind}: {growth / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f}"
