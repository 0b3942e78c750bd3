"""The OpenVINO engine (texup.engines.openvino_engine): texup's ncnn graph rebuilt with OpenVINO's opset API, the same
pixels as torch and ncnn, selection, the CLI, and a one-line refusal where openvino is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from realdata import real_image

pytest.importorskip("openvino", reason="the openvino engine's tests need the openvino package (the test extra has it)")
torch = pytest.importorskip("torch")

from texup.archs import build  # noqa: E402
from texup.engines import select, spec  # noqa: E402
from texup.engines.base import Cancelled, Engine, EngineUnavailable  # noqa: E402
from texup.engines.openvino_engine import OpenVinoEngine  # noqa: E402
from texup.machine import native_bf16  # noqa: E402
from texup.weights import LoadedModel, save_model  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def crop01(h: int, w: int, top: int = 120, left: int = 200) -> np.ndarray:
    return real_image("coffee.png", (top, left, h, w)).astype(np.float32) / 255.0


TINY = [
    ("RRDBNet", {"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}, 4, 1),
    ("RRDBNet", {"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}, 2, 2),  # Reorg (pixel-unshuffle)
    ("SRVGGNetCompact", {"num_feat": 8, "num_conv": 2, "upscale": 4, "act_type": "prelu"}, 4, 1),
    ("SRVGGNetCompact", {"num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "leakyrelu"}, 2, 1),
]


def _tiny(tmp_path, arch, hparams, scale, multiple, seed=0):
    torch.manual_seed(seed)
    module = build(arch, hparams).eval()
    with torch.no_grad():  # random weights large enough that every layer matters
        for p in module.parameters():
            p.mul_(3.0)
    full = dict(getattr(module, "hparams", hparams))
    path = save_model(
        LoadedModel(module, arch, full, scale, multiple, "tiny"), tmp_path / f"tiny-{arch}-{seed}.safetensors"
    )
    return path


@pytest.mark.parametrize(("arch", "hparams", "scale", "multiple"), TINY)
def test_tiny_models_match_the_torch_fp32_reference(tmp_path, arch, hparams, scale, multiple):
    path = _tiny(tmp_path, arch, hparams, scale, multiple)
    x = crop01(23, 31)  # odd sizes: padded to the input multiple and cropped back
    ov = select.open_engine(path, engine="openvino", device="cpu", precision="fp32")
    ref = select.open_engine(path, engine="torch", device="cpu", precision="fp32")
    assert isinstance(ov, Engine) and isinstance(ov, OpenVinoEngine)
    assert (ov.name, ov.device, ov.precision, ov.scale, ov.input_multiple) == (
        "openvino",
        "cpu",
        "fp32",
        scale,
        multiple,
    )
    a, b = ov.run_tile(x), ref.run_tile(x)
    assert a.shape == b.shape == (23 * scale, 31 * scale, 3) and a.dtype == np.float32
    assert psnr(a, b) > 60.0
    # Another tile shape through the same engine (dynamic height and width on the CPU).
    y = crop01(16, 20)
    kept = a.copy()
    assert psnr(ov.run_tile(y), ref.run_tile(y)) > 60.0
    assert np.array_equal(a, kept)  # a tile's result is its own array, not the request's buffer the next one fills


def test_a_packaged_model_matches_the_ncnn_engine_in_fp32_and_auto_within_50_db():
    x = crop01(40, 48)
    nc = select.open_engine("realesr-animevideov3", engine="ncnn", device="cpu", precision="fp32")
    ov = select.open_engine("realesr-animevideov3", engine="openvino", device="cpu", precision="fp32")
    ref = nc.run_tile(x)
    assert psnr(ov.run_tile(x), ref) > 60.0
    auto = select.open_engine("realesr-animevideov3", engine="openvino", device="cpu")
    assert auto.precision == ("bf16" if native_bf16() else "fp32")  # OpenVINO's default hint
    assert psnr(auto.run_tile(x), ref) >= 50.0
    info = auto.describe()
    assert info["engine"] == "openvino" and info["precision"] == auto.precision and info["threads"] >= 1
    assert 64 <= auto.auto_tile() <= 256


def test_rrdbnet_runs_its_dense_blocks_as_written_and_matches_ncnn(tmp_path):
    path = _tiny(tmp_path, *TINY[0], seed=3)
    ov = select.open_engine(path, engine="openvino", precision="fp32")
    assert "Concat" in ov.graph.param.read_text()  # OpenVINO's fastest form; ncnn's own export is "split"
    nc = select.open_engine(path, engine="ncnn", precision="fp32")
    assert "Concat" not in nc.graph.param.read_text()
    x = crop01(20, 20)
    assert psnr(ov.run_tile(x), nc.run_tile(x)) > 60.0


def test_cancel_is_polled_while_a_tile_runs_and_progress_moves(monkeypatch):
    from texup.engines import base

    monkeypatch.setattr(base, "CANCEL_POLL_S", 0.0)  # poll at every chance: the test counts chances, not seconds
    ov = select.open_engine("realesrgan-x4plus-anime", engine="openvino", device="cpu", precision="fp32")
    x = crop01(48, 48)
    ov.run_tile(x)  # one tile first: step() then has the previous tile's time
    steps: list[float] = []
    assert ov.run_tile(x, step=steps.append).shape == (192, 192, 3)
    assert steps == sorted(steps) and steps[-1] == 1.0 and len(steps) >= 2
    calls: list[int] = []
    with pytest.raises(Cancelled):
        ov.run_tile(x, cancel=lambda: calls.append(1) or len(calls) >= 2)
    assert ov.run_tile(x).shape == (192, 192, 3)  # usable after a cancel


def test_it_is_a_candidate_and_listed_by_texup_engines(capsys):
    assert "openvino/cpu/auto" in [c.key for c in select.candidates()]
    from texup.cli.main import main

    assert main(["engines"]) == 0
    out = capsys.readouterr().out
    assert "openvino: " in out and "openvino/cpu/auto" in out
    assert main(["engines", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "openvino/cpu/auto" in json.dumps(info)


def test_unknown_devices_and_precisions_are_refused_in_words():
    with pytest.raises(ValueError, match="gpu"):
        select.open_engine("realesr-animevideov3", engine="openvino", device="gpu:7")
    with pytest.raises(ValueError, match="fp16"):
        select.open_engine("realesr-animevideov3", engine="openvino", device="cpu", precision="fp16")


def test_engine_openvino_end_to_end_on_a_small_file(tmp_path):
    src = tmp_path / "wall.png"
    Image.fromarray(real_image("brick.png", (0, 0, 30, 26))[:, :, 0]).save(src)
    run = subprocess.run(
        [sys.executable, "-m", "texup", "upscale", str(src), "-o", str(tmp_path / "out")]
        + ["--model", "realesr-animevideov3", "--engine", "openvino", "--tile", "16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = Image.open(tmp_path / "out" / "wall_x4.png")
    assert out.size == (104, 120) and out.mode == "L"


def test_without_openvino_engine_openvino_is_a_one_line_error(tmp_path, capsys):
    from texup.cli.main import main

    def missing(*_args):
        raise EngineUnavailable("the openvino engine needs the `openvino` package (pip install openvino)")

    src = tmp_path / "wall.png"
    Image.fromarray(real_image("brick.png", (0, 0, 20, 20))[:, :, 0]).save(src)
    with spec.replaced("openvino", available=lambda: False, open=missing, candidates=list):
        assert "openvino" not in {c.engine for c in select.candidates()}
        code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--engine", "openvino"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "pip install openvino" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("precision", "tile"), [("bf16", 256), ("fp32", 224)])
def test_the_automatic_tile_is_the_largest_whose_measured_memory_fits_the_budget(precision, tile):
    from texup.engines.openvino_engine import CPU_MEMORY_BUDGET

    x4plus = select.open_engine("realesrgan-x4plus", engine="openvino", device="cpu", precision=precision)
    if x4plus.precision != precision:  # bf16 asked on a CPU without native bf16: OpenVINO computes fp32
        assert (precision, x4plus.precision, native_bf16()) == ("bf16", "fp32", False)
        tile = 224
    assert x4plus.auto_tile(overlap=16) == tile  # OPENVINO_TILE_MEMORY's figures, from bench_engines.py --tiles
    for out_width in (2048, 16384, 65536):
        t = x4plus.auto_tile(overlap=16, out_width=out_width)
        side = t + 32
        assert t == 64 or x4plus.activation_bytes(side) + side * 4 * out_width * 12 <= CPU_MEMORY_BUDGET
    compact = select.open_engine("realesr-animevideov3", engine="openvino", device="cpu", precision=precision)
    assert compact.auto_tile(overlap=16) == 256


_MEASURE = """
import json, sys
import numpy as np
from texup.engines.select import open_engine

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

engine = open_engine(sys.argv[1], engine="openvino", device="cpu", precision=sys.argv[2])
x = np.random.default_rng(0).random((int(sys.argv[3]),) * 2 + (3,), dtype=np.float32)
engine.run_tile(x[:32, :32])  # warm-up, as the figures were measured
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
engine.run_tile(x)
print(json.dumps({"growth": status("VmHWM") - before, "estimate": engine.activation_bytes(int(sys.argv[3]))}))
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_real_tile_stays_within_the_measured_estimate(precision):
    # animevideov3 (small and quick); x4plus's own figures are in OPENVINO_TILE_MEMORY's comment
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, "realesr-animevideov3", precision, "224"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    growth, estimate = figures["growth"], figures["estimate"]
    assert growth <= estimate, f"{growth / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB"


def _blobs(home):
    return sorted((home / "openvino").glob("*.blob")) if (home / "openvino").is_dir() else []


def test_the_compiled_model_is_kept_imported_by_the_next_engine_and_gives_the_same_pixels(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TEXUP_HOME", str(home))
    path = _tiny(tmp_path, *TINY[0])
    x = crop01(23, 31)
    first = select.open_engine(path, engine="openvino", device="cpu", precision="fp32")
    assert first.describe()["compiled_model"].startswith("compiled (no kept compile yet); kept as ")
    (blob,) = _blobs(home)
    second = select.open_engine(path, engine="openvino", device="cpu", precision="fp32")
    assert second.describe()["compiled_model"] == f"imported {blob}"
    assert "_model" not in vars(second)  # an imported compile never builds the OpenVINO model
    assert np.array_equal(first.run_tile(x), second.run_tile(x))
    # another precision asked is another compile, kept beside it (one per model, device and precision)
    select.open_engine(path, engine="openvino", device="cpu", precision="auto")
    assert len(_blobs(home)) == 2 and blob in _blobs(home)


def test_a_damaged_or_stale_kept_compile_is_replaced_and_an_unwritable_folder_costs_only_the_saving(
    tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("TEXUP_HOME", str(home))
    path = _tiny(tmp_path, *TINY[2])
    x = crop01(17, 19)
    reference = select.open_engine(path, engine="openvino", device="cpu", precision="fp32").run_tile(x)
    (blob,) = _blobs(home)
    blob.write_bytes(b"not a compiled model")
    engine = select.open_engine(path, engine="openvino", device="cpu", precision="fp32")
    note = engine.describe()["compiled_model"]
    assert note.startswith("compiled (the kept compile did not import and was removed: ") and "kept as" in note
    assert np.array_equal(engine.run_tile(x), reference)
    assert _blobs(home) == [blob] and blob.stat().st_size > 1000  # written again
    # the model file changed (a retrained model saved over it): a new key, the old blob goes
    path.write_bytes(_tiny(tmp_path, *TINY[2], seed=1).read_bytes())
    changed = select.open_engine(path, engine="openvino", device="cpu", precision="fp32").run_tile(x)
    assert not np.array_equal(changed, reference)  # the new weights' pixels, not the kept compile's
    (newer,) = _blobs(home)
    assert newer != blob
    reference = changed
    # a folder that cannot be written: the engine runs and says why nothing was kept
    newer.unlink()
    (home / "openvino").chmod(0o500)
    try:
        engine = select.open_engine(path, engine="openvino", device="cpu", precision="fp32")
        if os.access(home / "openvino", os.W_OK):  # root ignores the mode: nothing to show here
            assert "kept as" in engine.describe()["compiled_model"]
        else:
            assert "; not kept (" in engine.describe()["compiled_model"]
        assert np.array_equal(engine.run_tile(x), reference)
    finally:
        (home / "openvino").chmod(0o700)
    monkeypatch.setenv("TEXUP_OPENVINO_CACHE", "0")
    assert (
        "compiled_model" not in select.open_engine(path, engine="openvino", device="cpu", precision="fp32").describe()
    )
