"""Weights: safe reading, unwrapping, key canonicalisation, detection, save/load round trip."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from texup.archs import RRDBNet, SRVGGNetCompact
from texup.errors import ModelLoadError, UnsafeWeightsError
from texup.weights import (
    LoadedModel,
    canonicalize,
    detect_architecture,
    load_model,
    read_state_dict,
    save_model,
)

SMALL = dict(num_feat=8, num_block=2, num_grow_ch=4)


def _rrdb(scale: int = 4, **kw) -> RRDBNet:
    torch.manual_seed(scale)
    return RRDBNet(scale=scale, **{**SMALL, **kw}).eval()


def to_esrgan_naming(sd: dict[str, torch.Tensor], num_block: int, n_up: int) -> dict[str, torch.Tensor]:
    """Rename canonical keys to the original ESRGAN layout (written independently of texup's map)."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        kind = parts[-1]
        if parts[0] == "body":
            i, rdb, conv = parts[1], parts[2], parts[3]
            out[f"model.1.sub.{i}.RDB{rdb[-1]}.{conv}.0.{kind}"] = value
        elif parts[0] == "conv_first":
            out[f"model.0.{kind}"] = value
        elif parts[0] == "conv_body":
            out[f"model.1.sub.{num_block}.{kind}"] = value
        elif parts[0].startswith("conv_up"):
            out[f"model.{3 * int(parts[0][-1])}.{kind}"] = value
        elif parts[0] == "conv_hr":
            out[f"model.{2 + 3 * n_up}.{kind}"] = value
        elif parts[0] == "conv_last":
            out[f"model.{4 + 3 * n_up}.{kind}"] = value
    assert len(out) == len(sd)
    return out


# ---------------------------------------------------------------- canonicalize / detect


def test_canonicalize_x4_esrgan_explicit_keys() -> None:
    sd = {
        k: torch.zeros(1)
        for k in [
            "model.0.weight",
            "model.1.sub.0.RDB1.conv1.0.weight",
            "model.1.sub.0.RDB3.conv5.0.bias",
            "model.1.sub.1.weight",
            "model.3.weight",
            "model.6.bias",
            "model.8.weight",
            "model.10.bias",
        ]
    }
    assert list(canonicalize(sd)) == [
        "conv_first.weight",
        "body.0.rdb1.conv1.weight",
        "body.0.rdb3.conv5.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.bias",
        "conv_hr.weight",
        "conv_last.bias",
    ]


@pytest.mark.parametrize("scale,n_up", [(4, 2), (8, 3)])
def test_esrgan_naming_round_trip(scale: int, n_up: int) -> None:
    net = _rrdb(scale)
    sd = net.state_dict()
    old = to_esrgan_naming(sd, num_block=2, n_up=n_up)
    canon = canonicalize(old)
    assert canon.keys() == sd.keys()
    assert all(canon[k] is old_v for k, old_v in zip(canon, old.values()))
    assert detect_architecture(canon) == ("RRDBNet", net.hparams)


def test_canonicalize_esrgan_v2_naming() -> None:
    sd = {
        "conv_first.weight": 0,
        "RRDB_trunk.3.RDB2.conv4.bias": 1,
        "trunk_conv.weight": 2,
        "upconv1.weight": 3,
        "upconv2.bias": 4,
        "HRconv.weight": 5,
        "conv_last.bias": 6,
    }
    assert list(canonicalize(sd)) == [
        "conv_first.weight",
        "body.3.rdb2.conv4.bias",
        "conv_body.weight",
        "conv_up1.weight",
        "conv_up2.bias",
        "conv_hr.weight",
        "conv_last.bias",
    ]


def test_canonicalize_rejects_odd_esrgan_layout() -> None:
    sd = {
        "model.0.weight": torch.zeros(1),
        "model.5.weight": torch.zeros(1),
        "model.7.weight": torch.zeros(1),
        "model.9.weight": torch.zeros(1),
    }
    with pytest.raises(ModelLoadError, match="unexpected layer layout"):
        canonicalize(sd)


@pytest.mark.parametrize("scale,in_ch", [(1, 3), (2, 3), (4, 3), (2, 1), (4, 1)])
def test_detect_rrdbnet_hparams(scale: int, in_ch: int) -> None:
    net = RRDBNet(num_in_ch=in_ch, num_out_ch=in_ch, scale=scale, num_feat=16, num_block=3, num_grow_ch=8)
    assert detect_architecture(net.state_dict()) == ("RRDBNet", net.hparams)


@pytest.mark.parametrize("act", ["prelu", "relu"])
def test_detect_compact_hparams(act: str) -> None:
    net = SRVGGNetCompact(num_feat=12, num_conv=3, upscale=3, act_type=act)
    assert detect_architecture(net.state_dict()) == ("SRVGGNetCompact", net.hparams)


def test_detect_compact_leakyrelu_reads_as_default_relu() -> None:
    """ReLU and LeakyReLU carry no tensors: detection documents and returns its default."""
    from texup.weights.detect import COMPACT_DEFAULT_ACT

    net = SRVGGNetCompact(num_feat=8, num_conv=1, act_type="leakyrelu")
    assert detect_architecture(net.state_dict())[1]["act_type"] == COMPACT_DEFAULT_ACT


def test_detect_unknown_architecture_message() -> None:
    sd = {"encoder.weight": torch.zeros(4, 3, 3, 3), "encoder.bias": torch.zeros(4), "head.weight": torch.zeros(2)}
    with pytest.raises(ModelLoadError) as err:
        detect_architecture(sd, source="swinir.pth")
    msg = str(err.value)
    assert msg.startswith("swinir.pth: ")
    assert "not a known architecture: found 3 tensors" in msg
    assert "encoder.weight (4, 3, 3, 3)" in msg


# ---------------------------------------------------------------- reading files


def _save_pth(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_pth_wrappers_and_module_prefix(tmp_path: Path) -> None:
    net = _rrdb()
    sd = net.state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    both = _save_pth({"params": sd, "params_ema": ema, "iter": 5}, tmp_path / "both.pth")
    got = read_state_dict(both)
    assert got.keys() == sd.keys()
    assert all(torch.equal(got[k], ema[k]) for k in sd)  # params_ema preferred

    only_params = _save_pth({"params": sd}, tmp_path / "params.pth")
    assert torch.equal(read_state_dict(only_params)["conv_first.weight"], sd["conv_first.weight"])

    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "optimizer": {"lr": 0.1}}
    got = read_state_dict(_save_pth(wrapped, tmp_path / "lightning.ckpt"))
    assert got.keys() == sd.keys()


@pytest.mark.parametrize("style", ["canonical", "esrgan"])
@pytest.mark.parametrize("wrap", [None, "params_ema", "model"])
def test_load_model_from_every_naming_and_wrapper(tmp_path: Path, style: str, wrap: str | None) -> None:
    net = _rrdb(2)
    sd = net.state_dict()
    if style == "esrgan":
        sd = to_esrgan_naming(sd, num_block=2, n_up=2)
    obj = {wrap: sd} if wrap else sd
    path = _save_pth(obj, tmp_path / "model.pth")
    loaded = load_model(path)
    assert loaded.arch == "RRDBNet" and loaded.hparams == net.hparams
    assert loaded.scale == 2 and loaded.input_multiple == 2
    assert loaded.name == "model" and loaded.path == path
    assert loaded.metadata["naming"] == style
    x = torch.rand(1, 3, 10, 14)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), net(x))
    assert not loaded.module.training
    assert all(not p.requires_grad for p in loaded.module.parameters())


def test_plain_safetensors_is_detected(tmp_path: Path) -> None:
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    path = tmp_path / "compact.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    loaded = load_model(path)
    assert loaded.arch == "SRVGGNetCompact" and loaded.hparams == net.hparams
    assert loaded.metadata["source_format"] == "safetensors"


def test_fp16_pth_becomes_fp32_module(tmp_path: Path) -> None:
    net = _rrdb()
    path = _save_pth({k: v.half() for k, v in net.state_dict().items()}, tmp_path / "half.pth")
    assert read_state_dict(path)["conv_first.weight"].dtype == torch.float16
    loaded = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())


def test_save_load_round_trip_with_metadata(tmp_path: Path) -> None:
    net = _rrdb(1)
    out = save_model(net, tmp_path / "sub" / "mine.safetensors", provenance={"source": "unit test", "step": 7})
    assert out == tmp_path / "sub" / "mine.safetensors"
    assert [p.name for p in out.parent.iterdir()] == ["mine.safetensors"]  # no temp file left
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["texup.format"] == "1" and meta["texup.arch"] == "RRDBNet" and meta["texup.scale"] == "1"
    assert json.loads(meta["texup.hparams"]) == net.hparams
    loaded = load_model(out)
    assert isinstance(loaded, LoadedModel)
    assert loaded.arch == "RRDBNet" and loaded.name == "mine" and loaded.path == out
    assert loaded.hparams == net.hparams and loaded.scale == 1 and loaded.input_multiple == 4
    assert loaded.metadata["provenance"] == {"source": "unit test", "step": 7}
    x = torch.rand(1, 3, 8, 12)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), net(x))
    # A LoadedModel re-saves with its provenance.
    again = load_model(save_model(loaded, tmp_path / "again.safetensors"))
    assert again.metadata["provenance"] == {"source": "unit test", "step": 7}


def test_the_same_model_saved_by_two_processes_gives_the_same_bytes(tmp_path: Path) -> None:
    """safetensors orders its header by a per-process hash map; texup sorts it, so a model's SHA-256 (the output
    manifest's model identity, e.g. of a download converted on each farm node) does not depend on who saved it."""
    import subprocess
    import sys

    torch.manual_seed(0)
    weights = tmp_path / "net.safetensors"
    save_model(_rrdb(4), weights, provenance={"source": "unit test"})
    script = (
        "import sys; from texup.weights import load_model, save_model; save_model(load_model(sys.argv[1]), sys.argv[2])"
    )
    copies = [tmp_path / f"copy{i}.safetensors" for i in range(3)]
    for copy in copies:
        subprocess.run([sys.executable, "-c", script, str(weights), str(copy)], check=True)
    assert len({c.read_bytes() for c in copies}) == 1
    assert copies[0].read_bytes() == weights.read_bytes()
    data = weights.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])  # a valid header, its keys in order, padded to 8 bytes
    assert size % 8 == 0 and list(header) == sorted(header) and "__metadata__" in header
    loaded = load_model(copies[0])
    assert loaded.metadata["provenance"] == {"source": "unit test"} and loaded.hparams == _rrdb(4).hparams


def test_save_keeps_dtype_on_request(tmp_path: Path) -> None:
    net = SRVGGNetCompact(num_feat=8, num_conv=1).half()
    assert load_file(str(save_model(net, tmp_path / "a.safetensors")))["body.0.weight"].dtype == torch.float32
    kept = load_file(str(save_model(net, tmp_path / "b.safetensors", keep_dtype=True)))
    assert kept["body.0.weight"].dtype == torch.float16


def test_metadata_is_trusted_but_verified(tmp_path: Path) -> None:
    """Metadata decides the architecture (no guessing), and tensors that do not fit it are an error."""
    net = RRDBNet(num_in_ch=12, num_out_ch=3, scale=4, **SMALL)  # would be detected as scale 2 by shapes
    loaded = load_model(save_model(net, tmp_path / "m.safetensors"))
    assert loaded.hparams == net.hparams
    path = tmp_path / "lie.safetensors"
    save_file(
        {k: v.contiguous() for k, v in _rrdb().state_dict().items()},
        str(path),
        metadata={"texup.arch": "RRDBNet", "texup.hparams": json.dumps({**net.hparams, "num_block": 3})},
    )
    with pytest.raises(
        ModelLoadError, match=r"tensors do not fit RRDBNet\(.*num_block=3.*\): the metadata does not match"
    ) as err:
        load_model(path)
    assert str(err.value).startswith(str(path))


def test_save_model_rejects_foreign_modules(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_model(torch.nn.Conv2d(3, 3, 3), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        save_model(_rrdb(), tmp_path / "x.pth")


# ---------------------------------------------------------------- bad files


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    weird = tmp_path / "model.onnx"
    weird.write_bytes(b"\x08\x07")
    with pytest.raises(ModelLoadError, match=r"unsupported weights format '\.onnx'") as err:
        read_state_dict(weird)
    assert str(weird) in str(err.value)
    with pytest.raises(ModelLoadError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_zero_byte_and_garbage_files(tmp_path: Path, suffix: str) -> None:
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file") as err:
        load_model(empty)
    assert str(err.value).startswith(str(empty))
    # Many different random files (seeded, so a failure reproduces): every one is a clean ModelLoadError.
    rng = np.random.default_rng(1234)
    for i in range(30):
        garbage = tmp_path / f"garbage{i}{suffix}"
        garbage.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 300)), dtype=np.uint8).tobytes())
        with pytest.raises(ModelLoadError) as err:
            load_model(garbage)
        assert str(err.value).startswith(f"{garbage}: ")
        assert not isinstance(err.value, UnsafeWeightsError)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    if suffix == ".pth":
        torch.save(_rrdb().state_dict(), good)
    else:
        save_model(_rrdb(), good)
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"not a (valid|readable)") as err:
        load_model(cut)
    assert not isinstance(err.value, UnsafeWeightsError)


def test_pickle_without_tensors(tmp_path: Path) -> None:
    path = _save_pth({"epoch": 3, "note": "no weights here"}, tmp_path / "empty_ckpt.pth")
    with pytest.raises(ModelLoadError, match="no tensors found"):
        read_state_dict(path)


class _Marker:
    """Unpickling this calls ``os.system``: a stand-in for a malicious model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "PWNED"
    payload = {"conv_first.weight": torch.zeros(1), "evil": _Marker(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f)
    # The payload really is live: plain unpickling of the same kind of object runs the command.
    live = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(_Marker(live)))
    assert live.exists()
    with pytest.raises(UnsafeWeightsError, match=r"refused: the pickle wants to call (posix|os)\.system") as err:
        load_model(path)
    assert str(err.value).startswith(str(path))
    assert not marker.exists()


def test_bin_without_param_is_a_pytorch_pickle(tmp_path: Path) -> None:
    net = _rrdb()
    path = _save_pth({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "pytorch_model.bin")
    loaded = load_model(path)
    assert loaded.hparams == net.hparams and loaded.metadata["source_format"] == "pickle"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x47\x6b\x30\x01" + bytes(range(60)))
    with pytest.raises(ModelLoadError, match=r"neither ncnn weights \(no junk\.param beside it\) nor"):
        load_model(junk)


def test_read_state_dict_dispatches_ncnn_param(tmp_path: Path) -> None:
    """A hand-made two-conv compact graph in fp32: .param and .bin both work as entry points."""
    param = tmp_path / "tiny.param"
    param.write_text(
        "7767517\n5 6\nInput in 0 1 data\nSplit sp 1 2 data a b\n"
        "Convolution c0 1 1 a c0 0=2 1=3 4=1 5=0 6=54 9=1\n"
        "Convolution c1 1 1 c0 c1 0=3 1=3 4=1 5=0 6=54\n"
        "PixelShuffle ps 1 1 c1 out 0=1\n"
    )
    w0, w1 = torch.randn(2, 3, 3, 3), torch.randn(3, 2, 3, 3)
    (tmp_path / "tiny.bin").write_bytes(b"\0\0\0\0" + w0.numpy().tobytes() + b"\0\0\0\0" + w1.numpy().tobytes())
    for entry in (param, tmp_path / "tiny.bin"):
        sd = read_state_dict(entry)
        assert sd.keys() == {"body.0.weight", "body.2.weight"}
        assert torch.equal(sd["body.0.weight"], w0) and torch.equal(sd["body.2.weight"], w1)


@pytest.mark.parametrize("lie", [{"num_conv": 20000}, {"num_feat": 40000}, {"upscale": 100000}])
def test_metadata_asking_for_a_huge_network_is_refused_before_building(tmp_path: Path, monkeypatch, lie) -> None:
    # A 324-byte file whose metadata said num_conv=20000 used to build a 3.2 GB network before any tensor
    # was compared with it; num_feat=40000 / a huge scale ended in tracebacks.
    from texup.archs import SRVGGNetCompact
    from texup.weights import model as model_mod

    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_conv": 1, "upscale": 2, "act_type": "relu"}
    net = SRVGGNetCompact(**hp)
    path = tmp_path / "bomb.safetensors"
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(path),
        metadata={"texup.arch": "SRVGGNetCompact", "texup.hparams": json.dumps({**hp, **lie})},
    )
    monkeypatch.setattr(model_mod, "build", lambda *a, **k: pytest.fail("built before the shapes were checked"))
    with pytest.raises(ModelLoadError, match="the metadata does not match the tensors") as err:
        load_model(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
