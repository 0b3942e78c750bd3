"""Device and precision choice, and one tile through the network (texup.engines.torch_engine)."""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from realdata import real_image

from texup import devices
from texup.archs import RRDBNet
from texup.engines import torch_engine as runner_mod
from texup.engines.torch_engine import TorchEngine as Runner
from texup.engines.torch_engine import pick_device, pick_precision


class NeedsMultiple(torch.nn.Module):
    """Nearest x`scale` upsampling that insists on inputs padded to a multiple, like pixel-unshuffle models."""

    def __init__(self, scale: int, multiple: int) -> None:
        super().__init__()
        self.scale, self.multiple = scale, multiple
        self.seen: list[tuple[int, ...]] = []
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        assert x.shape[2] % self.multiple == 0 and x.shape[3] % self.multiple == 0
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") * 1.5 - 0.25 + self.anchor


def _model(module: torch.nn.Module, scale: int, multiple: int = 1, **hparams) -> SimpleNamespace:
    return SimpleNamespace(module=module, scale=scale, input_multiple=multiple, name="test", hparams=hparams, arch="x")


def _tiny_rrdb(scale: int) -> SimpleNamespace:
    torch.manual_seed(0)
    net = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    return _model(net, net.scale, net.input_multiple, num_feat=8)


def test_pick_device_auto_and_explicit():
    auto = pick_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    else:
        assert auto.type in ("mps", "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pick_device_refuses_cuda_when_missing():
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ValueError):
        pick_device("cuda:3")


@pytest.mark.parametrize("name", ["gpu", "tpu", "", "cuda:x"])
def test_pick_device_rejects_unknown_names(name):
    with pytest.raises(ValueError):
        pick_device(name)


def test_pick_precision_auto_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    caps = dict(torch.cpu.get_capabilities())
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: MappingProxyType(caps | {"avx512_bf16": True}))
    assert pick_precision(cpu) is torch.bfloat16
    monkeypatch.setattr(
        torch.cpu,
        "get_capabilities",
        lambda: MappingProxyType(caps | {"avx512_bf16": False, "amx_bf16": False, "bf16": False, "sve_bf16": False}),
    )
    assert pick_precision(cpu) is torch.float32
    assert pick_precision(torch.device("cuda")) is torch.float16  # a device object needs no GPU


def test_pick_precision_explicit_and_invalid():
    cpu = torch.device("cpu")
    assert pick_precision(cpu, "fp32") is torch.float32
    assert pick_precision(cpu, "BF16") is torch.bfloat16
    assert pick_precision(cpu, "fp16") is torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision(cpu, "int8")


def test_runner_pads_to_the_input_multiple_and_crops_back():
    net = NeedsMultiple(scale=2, multiple=4)
    runner = Runner(_model(net, 2, 4), device="cpu", precision="fp32")
    x = real_image("coffee.png", (150, 250, 37, 53)).astype(np.float32) / 255
    y = runner.run_tile(x)
    assert y.shape == (74, 106, 3) and y.dtype == np.float32
    assert runner.module.seen == [(1, 3, 40, 56)]
    expected = np.clip(x.repeat(2, 0).repeat(2, 1) * 1.5 - 0.25, 0, 1)  # clamped to [0, 1]
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert y.min() == 0.0 and y.max() == 1.0


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_runner_with_pixel_unshuffle_rrdbnet_on_odd_sizes(scale):
    model = _tiny_rrdb(scale)
    runner = Runner(model, device="cpu", precision="fp32")
    x = real_image("chelsea.png", (50, 60, 23, 17)).astype(np.float32) / 255
    y = runner.run_tile(x)
    assert y.shape == (23 * scale, 17 * scale, 3)
    assert np.all((y >= 0) & (y <= 1))
    # Contract: bottom/right edge replication up to the multiple, output cropped back.
    m = model.input_multiple
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    padded = F.pad(t, (0, -17 % m, 0, -23 % m), mode="replicate")
    with torch.no_grad():
        reference = model.module(padded)[0, :, : 23 * scale, : 17 * scale].clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(y, reference, atol=1e-6)


def test_runner_leaves_the_callers_model_alone_and_bf16_is_close():
    model = _tiny_rrdb(4)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    fp32 = Runner(model, device="cpu", precision="fp32")
    bf16 = Runner(model, device="cpu", precision="bf16")
    assert bf16.dtype is torch.bfloat16 and bf16.channels_last
    for k, v in model.module.state_dict().items():
        assert v.dtype is torch.float32 and torch.equal(v, before[k])
    x = real_image("astronaut.png", (100, 200, 20, 20)).astype(np.float32) / 255
    a, b = fp32.run_tile(x), bf16.run_tile(x)
    assert b.dtype == np.float32
    psnr = 10 * np.log10(1 / np.mean((a - b) ** 2))
    assert psnr > 35, psnr


def test_run_tile_rejects_wrong_shapes():
    runner = Runner(_model(NeedsMultiple(2, 1), 2), device="cpu", precision="fp32")
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        runner.run_tile(np.zeros((8, 8, 4), np.float32))


def test_auto_tile_on_cpu_and_native_bf16_probe():
    runner = Runner(_model(NeedsMultiple(2, 1), 2), device="cpu", precision="fp32")
    assert runner.auto_tile() == 256
    assert isinstance(devices.cpu_has_native_bf16(), bool)


def test_auto_tile_keeps_activations_and_band_within_the_cpu_budget(monkeypatch):
    net = RRDBNet()  # x4plus's shape; the weights do not matter here
    runner = Runner(_model(net, 4, num_feat=64), device="cpu", precision="fp32")
    assert runner.module.stream_rows == runner_mod.STREAM_ROWS and net.stream_rows is None
    # Streaming the head, a 288-pixel x4plus tile needs ~0.3 GB: the default tile fits even beside the band
    # of a 4096-pixel-wide input's 16384-pixel-wide output (288 * 4 rows * 16384 * 12 bytes = 226 MB).
    assert runner.activation_bytes(288) < 400e6
    assert runner.auto_tile(out_width=16384) == 256
    # A very wide output's band leaves less room for activations: the tile shrinks, and what it picks fits.
    tile = runner.auto_tile(out_width=65536)
    assert 64 <= tile < 256 and tile % 32 == 0
    side = tile + 32
    assert runner.activation_bytes(side) + side * 4 * 65536 * 12 <= runner_mod.CPU_MEMORY_BUDGET
    monkeypatch.setattr(runner_mod, "CPU_MEMORY_BUDGET", 100 * 2**20)
    assert runner.auto_tile() < 256
    monkeypatch.setattr(runner_mod, "CPU_MEMORY_BUDGET", 1)
    assert runner.auto_tile() == 64  # nothing fits: the smallest tile, never 0


def test_auto_tile_on_cuda_uses_half_the_free_memory(monkeypatch):
    # The CUDA branch without a GPU: a CPU runner posing as one, with the free memory given.
    runner = Runner(_model(RRDBNet(), 4, num_feat=64), device="cpu", precision="fp32")
    runner.torch_device, runner.dtype = torch.device("cuda"), torch.float16
    for free_gib, expected_range in ((80, (1024, 1024)), (1, (384, 800)), (0.1, (128, 128))):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free_gib: (int(f * 2**30), 80 * 2**30))
        tile = runner.auto_tile(out_width=65536)  # the host-side band does not count against the GPU
        assert expected_range[0] <= tile <= expected_range[1] and tile % 32 == 0
        if tile > 128:
            assert runner.activation_bytes(tile + 32) <= 0.5 * free_gib * 2**30


@pytest.mark.parametrize(
    ("capability", "dtype", "expected"),
    [
        ("AVX512", torch.float32, True),
        ("AVX2", torch.float32, False),
        ("DEFAULT", torch.float32, False),
        ("AVX2", torch.bfloat16, True),
        ("AVX512", torch.float16, False),
    ],
)
def test_auto_layout_follows_the_measured_cpu_kinds(monkeypatch, capability, dtype, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpu = torch.device("cpu")
    assert runner_mod.pick_channels_last(cpu, dtype) is expected
    assert runner_mod.pick_channels_last(cpu, dtype, "nchw") is False
    assert runner_mod.pick_channels_last(cpu, dtype, "Channels_Last") is True
    assert runner_mod.pick_channels_last(torch.device("cuda"), torch.float16) is True
    with pytest.raises(ValueError, match="unknown layout 'nhwc'"):
        runner_mod.pick_channels_last(cpu, dtype, "nhwc")


def test_both_layouts_give_the_same_tile():
    model = _tiny_rrdb(4)
    x = real_image("astronaut.png", (40, 60, 21, 34)).astype(np.float32) / 255
    nchw = Runner(model, device="cpu", precision="fp32", layout="nchw")
    cl = Runner(model, device="cpu", precision="fp32", layout="channels_last")
    assert not nchw.channels_last and cl.channels_last
    weight = cl.module.body[0].rdb1.conv2.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    np.testing.assert_allclose(cl.run_tile(x), nchw.run_tile(x), atol=1e-5)
