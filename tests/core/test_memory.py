"""Bounded memory of tiled inference (texup.inference.pipeline): output rows stream out of a row band.

The model pass keeps a float32 accumulator one tile row high, hands finished rows to a sink that converts
them into the output's own dtype, and never holds a float copy of the whole output. These tests check the
row streaming itself (every output row exactly once, wrap seams included, same pixels as the whole-image
result) and the resulting peak memory of a real process on a large-ish input with a tiny network.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from realdata import real_image

from texup.inference.pipeline import UpscaleOptions, Upscaler, _Job

pytestmark = pytest.mark.slow  # memory measurements of real-size networks

CORE = Path(__file__).resolve().parents[2] / "core"


class BlurUp(torch.nn.Module):
    """3x3 box blur with zero padding, then nearest x`scale`: the output depends on neighbours like a conv net's."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = torch.full((3, 1, 3, 3), 1 / 9, dtype=x.dtype)
        return F.interpolate(F.conv2d(x, kernel, padding=1, groups=3), scale_factor=self.scale, mode="nearest")


def _upscaler(scale: int = 4) -> Upscaler:
    model = SimpleNamespace(module=BlurUp(scale), scale=scale, input_multiple=1, name="blur", hparams={}, arch="x")
    return Upscaler(model, device="cpu", precision="fp32")


def _photo(h: int, w: int) -> np.ndarray:
    return real_image("coffee.png", (60, 90, h, w))


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize(("size", "tile", "overlap"), [((37, 53), 12, 4), ((29, 31), 7, 3), ((20, 9), 64, 8)])
def test_stream_pass_emits_every_output_row_once_and_matches_the_canvas(wrap, size, tile, overlap):
    up = _upscaler()
    x = _photo(*size).astype(np.float32) / 255
    h, w = size
    seen = np.zeros(h * 4, np.int64)
    streamed = np.full((h * 4, w * 4, 3), np.nan, np.float32)

    def sink(block: np.ndarray, row0: int) -> None:
        assert block.dtype == np.float32 and block.shape[1:] == (w * 4, 3)
        assert 0 <= row0 and row0 + block.shape[0] <= h * 4
        seen[row0 : row0 + block.shape[0]] += 1
        streamed[row0 : row0 + block.shape[0]] = block

    job = _Job(total=0, progress=None, cancel=None, overlap=overlap)
    up._stream_pass(x, tile, overlap, wrap, job, sink, top_level=False)
    assert (seen == 1).all()
    # The same tiles through the whole-image untiled run: equal where the context covers the blur.
    whole = up.engine.run_tile(x) if not wrap else None
    if whole is not None and overlap >= 1:
        np.testing.assert_allclose(streamed, whole, atol=1e-5)
    # Blend weights sum to one: a constant image stays constant, seams included.
    flat = np.full((h, w, 3), 0.25, np.float32)
    const = np.zeros((h * 4, w * 4, 3), np.float32)

    def fill(block: np.ndarray, row0: int) -> None:
        const[row0 : row0 + block.shape[0]] = block

    up._stream_pass(flat, tile, overlap, True, job, fill, top_level=False)
    np.testing.assert_allclose(const, 0.25, atol=1e-6)


def test_varying_alpha_and_gray_stream_into_the_output_dtype():
    up = _upscaler()
    rgb = _photo(45, 38)
    alpha = (real_image("grass.png", (10, 10, 45, 38))[:, :, :1] > 120).astype(np.uint16) * 65535
    rgba16 = np.concatenate([rgb.astype(np.uint16) * 257, alpha], axis=2)
    whole = up.upscale_array(rgba16, UpscaleOptions(tile=256, seamless="off"))
    tiled = up.upscale_array(rgba16, UpscaleOptions(tile=10, overlap=4, seamless="off"))
    assert tiled.dtype == np.uint16 and tiled.shape == (180, 152, 4)
    assert np.abs(tiled.astype(np.int64) - whole.astype(np.int64)).max() <= 2
    gray = rgb[:, :, 1]
    out = up.upscale_array(gray, UpscaleOptions(tile=16, overlap=4, seamless="on"))
    assert out.shape == (180, 152) and out.dtype == np.uint8


#: Put before every measuring script below: the child reads its own memory from /proc.
_PROC_PRELUDE = textwrap.dedent(
    """
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak():  # VmHWM := the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    """
)


def _measure(script: str, *args: object) -> dict:
    """Run ``script`` (after :data:`_PROC_PRELUDE`) in a fresh one-thread Python; return its last JSON line."""
    env = {**os.environ, "PYTHONPATH": str(CORE), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _PROC_PRELUDE + script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace
    import numpy as np, torch
    import torch.nn.functional as F
    from texup.inference.pipeline import Upscaler, UpscaleOptions

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        def forward(self, x):
            return F.interpolate(self.conv(x), scale_factor=4, mode="nearest")

    torch.manual_seed(0)
    model = SimpleNamespace(module=Tiny(), scale=4, input_multiple=1, name="tiny", hparams={}, arch="x")
    up = Upscaler(model, device="cpu", precision="fp32")
    side = int(sys.argv[1])
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.empty((side, side, 4), np.uint8)
    image[..., 0] = (xx * 7) % 256
    image[..., 1] = (yy * 5) % 256
    image[..., 2] = rng.integers(0, 256, (side, side), dtype=np.uint8)
    image[..., 3] = np.where((xx // 64 + yy // 64) % 2 == 0, 255, 0)  # varying alpha: a second model run
    options = UpscaleOptions(tile=256, seamless="off", scale=float(sys.argv[2]), color_fix=sys.argv[3])
    up.upscale_array(image[:64, :64], options)  # warm-up: allocator pools, oneDNN primitives
    reset_peak()
    before = status("VmRSS")
    out = up.upscale_array(image, options)
    print(json.dumps({"before": before, "peak": status("VmHWM"), "out_bytes": out.nbytes}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("scale", [4, 2])
def test_peak_memory_is_the_output_plus_a_bounded_band(scale):
    # x4: 1024^2 -> 4096 x 4096 RGBA uint8 (64 MiB); a whole-image float32 RGB canvas alone would be 192 MiB.
    # x2 from the x4 model: the model's 4096^2 rows are resampled as they come; a canvas would again be 192 MiB.
    # Without the colour fix: the streamed pipeline (the fix's own cost is bounded by the next test).
    side = 1024
    figures = _measure(_PEAK_SCRIPT, side, scale, "off")
    growth = figures["peak"] - figures["before"]
    out_bytes = figures["out_bytes"]
    assert out_bytes == (side * scale) ** 2 * 4
    # Output + the input's float copies (16 MiB, more while bleeding colour) + one row band (53 MiB) + sink and
    # tile temporaries: measured 90-150 MiB over the output, depending on glibc's heap. A whole-image float32
    # canvas would add 192 MiB; the previous design (canvases for colour and alpha) was output + ~370 MiB.
    limit = out_bytes + 240 * 2**20
    assert growth < limit, f"peak grew by {growth / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_the_colour_fix_costs_at_most_its_float_copy_of_the_output():
    """The colour fix (on by default) holds a float32 RGB copy of the output (12 bytes per output pixel:
    texup.inference.colorfix) on top of the streamed pipeline's bound; nothing more."""
    side, scale = 1024, 4
    figures = _measure(_PEAK_SCRIPT, side, scale, "on")
    growth = figures["peak"] - figures["before"]
    out_bytes = figures["out_bytes"]
    limit = out_bytes + 240 * 2**20 + 12 * (side * scale) ** 2
    assert growth < limit, f"peak grew by {growth / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB"


_TILE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace
    import numpy as np, torch
    from texup.archs import RRDBNet, SRVGGNetCompact
    from texup.engines.torch_engine import TorchEngine as Runner

    torch.manual_seed(0)
    if sys.argv[3] == "rrdbnet":
        net = RRDBNet(num_block=1)  # x4plus's widths (64 features, 32 growth), one RRDB: the same per-block peak
    else:
        net = SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4)  # realesr-animevideov3's shape
    model = SimpleNamespace(module=net, scale=4, input_multiple=1, name="rrdb", hparams=net.hparams, arch="x")
    runner = Runner(model, device="cpu", precision="fp32", layout=sys.argv[2])
    side = int(sys.argv[1])
    x = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    runner.run_tile(x[:64, :64])  # warm-up: allocator pools, oneDNN primitives
    reset_peak()
    before = status("VmRSS")
    y = runner.run_tile(x)
    assert y.shape == (side * 4, side * 4, 3)
    print(json.dumps({"growth": status("VmHWM") - before, "estimate": runner.activation_bytes(side)}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize(("arch", "layout"), [("rrdbnet", "nchw"), ("rrdbnet", "channels_last"), ("compact", "nchw")])
def test_tile_memory_stays_within_the_estimate(arch, layout):
    # The default CPU tile of x4plus (256 + 2 * 16 context): without streaming the upsampling head, its
    # 64-channel 1152x1152 float32 activations alone (340 MB each, three alive at once) exceed 1 GB.
    side = 288
    figures = _measure(_TILE_SCRIPT, side, layout, arch)
    growth, estimate = figures["growth"], figures["estimate"]
    assert estimate < 400e6
    # The estimate plus allocator/oneDNN slack (weights are ~1 MB for one block).
    assert growth < estimate + 100 * 2**20, f"tile peak {growth / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB"


_MALLOC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from texup._malloc import keep_freed_memory, release_freed_memory

    kept = keep_freed_memory() if sys.argv[1] == "keep" else None
    base = status("VmRSS")
    block = np.ones(200 << 20, np.uint8)  # one 200 MiB block, like a big tile tensor
    allocated = status("VmRSS") - base
    del block
    freed = status("VmRSS") - base
    released = release_freed_memory()
    print(json.dumps({"kept": kept, "allocated": allocated, "freed": freed, "released": released,
                      "after_release": status("VmRSS") - base}))
    """
)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_kept_for_reuse_until_released():
    mib = 2**20
    default, keep = _measure(_MALLOC_SCRIPT, "default"), _measure(_MALLOC_SCRIPT, "keep")
    assert default["kept"] is None and keep["kept"] is True
    assert default["allocated"] > 190 * mib and keep["allocated"] > 190 * mib
    assert default["freed"] < 20 * mib  # glibc's default: a big block is unmapped at once ...
    assert keep["freed"] > 190 * mib  # ... kept: the next tile reuses it without page faults
    assert keep["released"] is True and keep["after_release"] < 20 * mib  # and the worker gives it back


def test_loaded_weights_are_adopted_and_training_them_leaves_the_file_alone(tmp_path):
    from texup.archs.compact import SRVGGNetCompact
    from texup.weights.model import load_model, save_model

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4, act_type="prelu")
    path = save_model(net, tmp_path / "tiny.safetensors")
    before = path.read_bytes()
    loaded = load_model(path)
    x = torch.rand(1, 3, 9, 7)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded.module(x).numpy(), net.eval()(x).numpy())
    # The parameters are the file's memory-mapped tensors (no second copy in memory) ...
    maps = Path("/proc/self/maps")
    if maps.exists():
        spans = [line.split()[0].split("-") for line in maps.read_text().splitlines() if line.endswith(str(path))]
        ranges = [(int(a, 16), int(b, 16)) for a, b in spans]
        for name, p in loaded.module.named_parameters():
            assert any(a <= p.data_ptr() < b for a, b in ranges), f"{name} is not inside the mapped file"
    # ... and private: a training step through them changes the module, never the file (copy-on-write).
    module = loaded.module.train().requires_grad_(True)
    optimiser = torch.optim.SGD(module.parameters(), lr=0.1)
    module(x).square().mean().backward()
    optimiser.step()
    with torch.inference_mode():
        assert not torch.equal(module.eval()(x), net(x))
    assert path.read_bytes() == before
    assert not torch.equal(load_model(path).module.body[0].weight, module.body[0].weight)
