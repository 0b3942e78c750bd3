"""Engines (texup.engines): ncnn and torch give the same pixels, auto picks by measurement, cancel inside a tile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import real_image

from texup.engines import select, spec
from texup.engines.base import Cancelled, Engine
from texup.engines.select import Candidate, open_engine
from texup.machine import native_bf16

ncnn = pytest.importorskip("ncnn")

ROOT = Path(__file__).resolve().parents[2]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def crop01(h: int, w: int, name: str = "coffee.png", top: int = 120, left: int = 200) -> np.ndarray:
    return real_image(name, (top, left, h, w)).astype(np.float32) / 255.0


# --- the same pixels from every engine ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"])
def test_ncnn_runs_the_packaged_models_and_matches_torch_fp32(model):
    x = crop01(27, 33)
    nc = open_engine(model, engine="ncnn", device="cpu")
    th = open_engine(model, engine="torch", device="cpu", precision="fp32")
    native = "bf16" if native_bf16() else "fp32"  # auto: ncnn's bf16 storage where the CPU computes bf16 natively
    assert isinstance(nc, Engine) and nc.name == "ncnn" and nc.device == "cpu" and nc.precision == native
    a, b = nc.run_tile(x), th.run_tile(x)
    assert a.shape == b.shape == (108, 132, 3) and a.dtype == np.float32
    assert psnr(a, b) >= 50.0
    from texup.engines.ncnn_engine import NcnnEngine, graph_from_files
    from texup.weights.registry import ncnn_files

    nc = open_engine(model, engine="ncnn", device="cpu", precision="fp32")  # the graphs compared in fp32
    packaged = NcnnEngine(graph_from_files(*ncnn_files(model), scale=4, input_multiple=1), precision="fp32")
    if model == "realesr-animevideov3":
        assert nc.graph.param == packaged.graph.param  # compact: the packaged files run as they are
    else:
        # RRDBNet: the packaged weights in texup's graph (no Concat): the same output as Real-ESRGAN's graph.
        assert nc.graph.param.parent.name == "ncnn" and "Concat" not in nc.graph.param.read_text()
        assert np.abs(nc.run_tile(x) - packaged.run_tile(x)).max() <= 1e-5


def test_a_model_made_by_texup_train_x2_pixel_unshuffle_exports_and_matches(tmp_path):
    from texup.training import train
    from texup.training.config import DataConfig, GeneratorConfig, OptimConfig, TrainConfig

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(real_image("brick.png")[:96, :112, 0]).save(data / "brick.png")
    Image.fromarray(real_image("coffee.png")[:100, :90]).save(data / "coffee.png")
    cfg = TrainConfig(
        data=DataConfig(root=str(data), hr_crop=32, batch_size=2, val_fraction=0.0),
        out_dir=str(tmp_path / "run"),
        stage="psnr",
        steps=3,
        precision="fp32",
        device="cpu",
        seed=1,
        generator=GeneratorConfig(
            pretrained=None, arch="RRDBNet", hparams={"scale": 2, "num_feat": 16, "num_block": 2, "num_grow_ch": 8}
        ),
        optim=OptimConfig(lr_g=2e-3, ema_decay=0.0),
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
        tensorboard=False,
    )
    result = train(cfg)
    x = crop01(23, 31)  # odd sizes: the engine pads to the unshuffle multiple and crops back
    nc = open_engine(result.model_path, engine="ncnn")
    th = open_engine(result.model_path, engine="torch", precision="fp32")
    assert nc.scale == th.scale == 2 and nc.input_multiple == 2
    a, b = nc.run_tile(x), th.run_tile(x)
    assert a.shape == (46, 62, 3) and psnr(a, b) >= 50.0
    # Exported once into the cache, with its facts beside it; a second open reuses the files.
    assert nc.graph.param.parent.name == "ncnn" and nc.graph.param.with_suffix(".json").is_file()
    mtime = nc.graph.bin.stat().st_mtime_ns
    again = open_engine(result.model_path, engine="ncnn")
    assert again.graph.bin == nc.graph.bin and again.graph.bin.stat().st_mtime_ns == mtime


def test_export_is_rebuilt_when_the_source_changes(tmp_path):
    import torch

    from texup.archs import build
    from texup.weights import LoadedModel, save_model

    hp = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2, "upscale": 2, "act_type": "prelu"}
    path = tmp_path / "mine.safetensors"
    graphs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        module = build("SRVGGNetCompact", hp)
        save_model(LoadedModel(module, "SRVGGNetCompact", hp, 2, 1, "mine"), path)
        engine = open_engine(path, engine="ncnn")
        graphs.append(engine.graph.bin)
        torch_out = open_engine(path, engine="torch").run_tile(crop01(9, 11))
        assert psnr(engine.run_tile(crop01(9, 11)), torch_out) >= 50.0
    assert graphs[0] != graphs[1] and all(g.is_file() for g in graphs)


def test_whole_pipeline_same_pixels_on_both_engines_16bit_rgba_tiles_and_seams():
    from texup.inference.pipeline import UpscaleOptions, Upscaler

    rgb = real_image("brick.png", (0, 0, 41, 37))
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    alpha = np.tile(np.linspace(0, 65535, 37, dtype=np.uint16), (41, 1))[:, :, None]
    pixels = np.concatenate([rgb.astype(np.uint16) * 257, alpha], axis=2)
    options = UpscaleOptions(tile=16, overlap=4, seamless="on")
    outs = [
        Upscaler("realesr-animevideov3", engine=e, device="cpu", precision="fp32").upscale_array(pixels, options)
        for e in ("ncnn", "torch")
    ]
    assert outs[0].shape == (164, 148, 4) and outs[0].dtype == np.uint16
    assert psnr(outs[0], outs[1], peak=65535.0) >= 50.0


def test_vulkan_on_a_tiny_input_matches_the_cpu():
    from texup.engines.ncnn_engine import vulkan_devices

    devices = vulkan_devices()
    if not devices:
        pytest.skip("no Vulkan device here (install mesa-vulkan-drivers for llvmpipe, or run on a GPU)")
    x = crop01(12, 10)
    gpu = open_engine("realesr-animevideov3", device=f"vulkan:{devices[0].index}")
    cpu = open_engine("realesr-animevideov3", engine="ncnn", device="cpu")
    assert gpu.name == "ncnn" and gpu.device == "vulkan:0" and gpu.precision == "fp16"
    assert gpu.describe()["device_name"] == devices[0].name
    assert psnr(gpu.run_tile(x), cpu.run_tile(x)) >= 45.0


# --- choices -----------------------------------------------------------------------------------------


def test_explicit_choices_are_honoured_or_refused_with_the_reason():
    assert open_engine("realesr-animevideov3", engine="torch", device="cpu").name == "torch"
    with pytest.raises(ValueError, match="run by the ncnn engine"):
        open_engine("realesr-animevideov3", engine="torch", device="vulkan")
    with pytest.raises(ValueError, match="vulkan:7"):
        open_engine("realesr-animevideov3", device="vulkan:7")
    with pytest.raises(ValueError, match="ncnn engine computes on the CPU: fp32 or bf16"):
        open_engine("realesr-animevideov3", engine="ncnn", device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="unknown engine"):
        open_engine("realesr-animevideov3", engine="onnx")


def test_the_unmeasured_first_guess_on_a_cpu_is_the_bundled_engine(monkeypatch):
    """A torch environment's worker must not start slower than Blender's own Python with the bundled ncnn: on a
    CPU, ncnn comes before torch in the candidates (the guess shown until measured), native bf16 or not."""
    import texup.devices

    for native in (True, False):
        monkeypatch.setattr(texup.devices, "cpu_has_native_bf16", lambda native=native: native)
        keys = [c.key for c in select.candidates() if c.device == "cpu"]
        openvino = ["openvino/cpu/auto"] if spec.get_spec("openvino").available() else []  # after ncnn, before torch
        torch_keys = (["torch/cpu/bf16"] if native else []) + ["torch/cpu/fp32"]
        assert keys[0] == "ncnn/cpu/auto" and keys[1:] == openvino + torch_keys


def test_software_vulkan_is_never_an_auto_candidate(monkeypatch):
    from texup.engines import ncnn_engine
    from texup.engines.ncnn_engine import VulkanDevice

    fake = (
        VulkanDevice(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu"),
        VulkanDevice(1, "AMD Radeon RX 7600", "discrete"),
    )
    monkeypatch.setattr(ncnn_engine, "vulkan_devices", lambda: fake)
    keys = [c.key for c in select.candidates()]
    assert "ncnn/vulkan:1/auto" in keys and "ncnn/vulkan:0/auto" not in keys
    assert keys.index("ncnn/vulkan:1/auto") < keys.index("ncnn/cpu/auto")


def test_auto_measures_once_keeps_the_fastest_and_reuses_the_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "others_load", lambda *a, **k: 0.05)  # a quiet machine
    pool = [Candidate("torch", "cpu", "fp32"), Candidate("ncnn", "cpu")]
    monkeypatch.setattr(select, "candidates", lambda: list(pool))
    timed: list[str] = []
    fake_times = {"torch": 2.0, "ncnn": 0.5}

    def fake_time(engine, **_):
        timed.append(engine.name)
        return fake_times[engine.name]

    monkeypatch.setattr(select, "time_engine", fake_time)
    lines: list[str] = []
    first = open_engine("realesr-animevideov3", status=lines.append)
    rounds = select.CALIBRATION_ROUNDS
    assert first.name == "ncnn" and timed == ["torch", "ncnn"] * rounds  # interleaved rounds
    assert any("measuring" in line for line in lines) and any("0.50 s" in line for line in lines)
    table = json.loads((tmp_path / "engines.json").read_text())
    (entry,) = table[select.machine_key()].values()
    assert entry["choice"] == "ncnn/cpu/auto" and entry["seconds_per_mpx"] == {
        "torch/cpu/fp32": 2.0,
        "ncnn/cpu/auto": 0.5,
    }
    assert entry["rounds"] == rounds and entry["busy"] is False
    timed.clear()
    assert open_engine("realesr-animevideov3").name == "ncnn" and timed == []  # cached: nothing re-measured
    # Another machine (other CPU flags or GPUs) measures again, and here torch wins.
    fake_times.update(torch=0.1)
    monkeypatch.setattr(select, "machine_key", lambda: "another-machine")
    assert open_engine("realesr-animevideov3").name == "torch" and timed == ["torch", "ncnn"] * rounds


def test_a_burst_of_load_during_one_round_does_not_decide_the_engine(monkeypatch, tmp_path):
    """Each candidate keeps its fastest round: a candidate slowed in one round by another program still wins."""
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "others_load", lambda *a, **k: 0.05)
    monkeypatch.setattr(select, "candidates", lambda: [Candidate("torch", "cpu", "fp32"), Candidate("ncnn", "cpu")])
    rounds = {"torch": iter([2.0, 2.1, 2.0]), "ncnn": iter([9.0, 1.0, 1.1])}  # ncnn's first round hit a burst
    monkeypatch.setattr(select, "time_engine", lambda engine, **_: next(rounds[engine.name]))
    assert open_engine("realesr-animevideov3").name == "ncnn"


def test_a_choice_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "candidates", lambda: [Candidate("torch", "cpu", "fp32"), Candidate("ncnn", "cpu")])
    fake_times = {"torch": 1.0, "ncnn": 3.0}  # under load, ncnn's spinning threads lose
    timed: list[str] = []

    def fake_time(engine, **_):
        timed.append(engine.name)
        return fake_times[engine.name]

    monkeypatch.setattr(select, "time_engine", fake_time)
    load = [0.75]
    monkeypatch.setattr(select, "others_load", lambda *a, **k: load[0])
    lines: list[str] = []
    assert open_engine("realesr-animevideov3", status=lines.append).name == "torch"
    assert any("measured again when the machine is quieter" in line for line in lines)
    (entry,) = json.loads((tmp_path / "engines.json").read_text())[select.machine_key()].values()
    assert entry["busy"] is True and entry["others_load"] == 0.75
    timed.clear()
    assert open_engine("realesr-animevideov3").name == "torch" and timed == []  # still busy: the record is used
    load[0], fake_times["ncnn"] = 0.1, 0.5
    assert open_engine("realesr-animevideov3").name == "ncnn" and timed  # quiet now: measured again
    (entry,) = json.loads((tmp_path / "engines.json").read_text())[select.machine_key()].values()
    assert entry["busy"] is False and entry["choice"] == "ncnn/cpu/auto"
    timed.clear()
    assert open_engine("realesr-animevideov3").name == "ncnn" and timed == []


def test_a_single_run_record_of_an_older_texup_is_measured_again_when_quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "others_load", lambda *a, **k: 0.0)
    old = {"choice": "torch/cpu/fp32", "seconds_per_mpx": {"torch/cpu/fp32": 70.0, "ncnn/cpu/auto": 89.0}}
    key = select._request_key("realesr-animevideov3", "auto", "auto")
    (tmp_path / "engines.json").write_text(json.dumps({select.machine_key(): {key: old}}))
    assert select.cached_choice("realesr-animevideov3") is None
    monkeypatch.setattr(select, "others_load", lambda *a, **k: 0.9)
    assert select.cached_choice("realesr-animevideov3") == Candidate("torch", "cpu", "fp32")


def test_a_candidate_that_cannot_run_the_model_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(select, "candidates", lambda: [Candidate("ncnn", "vulkan:9"), Candidate("torch", "cpu")])
    monkeypatch.setattr(select, "time_engine", lambda engine, **_: 1.0)
    lines: list[str] = []
    assert open_engine("realesr-animevideov3", status=lines.append).name == "torch"
    assert any("vulkan:9" in line and "cannot run" in line for line in lines)


# --- cancel and progress inside one tile -------------------------------------------------------------


@pytest.mark.parametrize("engine", ["torch", "ncnn"])
def test_cancel_acts_inside_a_tile_and_progress_moves(engine, monkeypatch):
    from texup.engines import base

    monkeypatch.setattr(base, "CANCEL_POLL_S", 0.0)  # poll at every chance: the test counts chances, not seconds
    e = open_engine("realesrgan-x4plus-anime", engine=engine, device="cpu", precision="fp32")
    steps: list[float] = []
    with pytest.raises(Cancelled):
        e.run_tile(crop01(24, 24), cancel=lambda: len(steps) >= 3, step=steps.append)
    assert 3 <= len(steps) and steps[-1] < 0.5, steps  # stopped early in the tile
    steps.clear()
    e.run_tile(crop01(24, 24), step=steps.append)
    assert steps == sorted(steps) and steps[-1] == pytest.approx(1.0, abs=0.05) and len(steps) >= 8


def test_pipeline_progress_reports_fractions_between_tiles(monkeypatch):
    from texup.inference import pipeline
    from texup.inference.pipeline import UpscaleOptions, Upscaler

    monkeypatch.setattr(pipeline.time, "monotonic", iter(range(10**6)).__next__)  # every call 1 s apart
    seen: list[tuple[float, int]] = []
    up = Upscaler("realesr-animevideov3", engine="ncnn", device="cpu")
    up.upscale_array(
        real_image("gravel.png", (0, 0, 20, 40)),
        UpscaleOptions(tile=20, overlap=2, seamless="off"),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    assert any(0 < d < 1 for d, _ in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# --- without torch -----------------------------------------------------------------------------------

_NO_TORCH = (
    "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError, as if not installed
    "import texup\n"
    "from texup.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    "sys.exit(code)\n"
)


def test_texup_upscales_without_torch_through_ncnn(tmp_path):
    src = tmp_path / "wall.png"
    Image.fromarray(real_image("brick.png", (0, 0, 30, 26))[:, :, 0]).save(src)
    env = {**os.environ, "TEXUP_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "upscale", str(src), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = Image.open(tmp_path / "out" / "wall_x4.png")
    assert out.size == (104, 120) and out.mode == "L"
    refused = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "upscale", str(src), "-o", str(tmp_path / "o2"), "--engine", "torch"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert refused.returncode == 1 and "needs PyTorch" in refused.stderr and "Traceback" not in refused.stderr
    engines = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "engines"], capture_output=True, text=True, env=env, timeout=300
    )
    assert engines.returncode == 0 and "torch: not installed" in engines.stdout and "ncnn/cpu/auto" in engines.stdout


def test_without_safetensors_the_packaged_models_run_and_a_safetensors_model_is_refused_in_one_line(tmp_path):
    """Blender 4.3.0's bundled worker: no torch, and Blender did not install safetensors' stable-ABI wheel.
    (Without torch a .safetensors model once stopped with a traceback: weights.state_dict imports torch.)"""
    from texup.archs import build
    from texup.weights import save_model

    model = save_model(build("RRDBNet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}), tmp_path / "m.safetensors")
    src = tmp_path / "wall.png"
    Image.fromarray(real_image("brick.png", (0, 0, 12, 10))[:, :, 0]).save(src)
    env = {**os.environ, "TEXUP_HOME": str(tmp_path / "home")}
    hide = _NO_TORCH.replace(
        "sys.modules['torch'] = None\n", "sys.modules['torch'] = sys.modules['safetensors'] = None\n"
    )
    args = [sys.executable, "-c", hide, "upscale", str(src), "--model"]
    ran = subprocess.run(
        [*args, "realesr-animevideov3", "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert Image.open(tmp_path / "out" / "wall_x4.png").size == (40, 48)
    # with safetensors (every other Blender) a .safetensors model runs through ncnn without torch
    mine = [sys.executable, "-c", _NO_TORCH, "upscale", str(src), "--model", str(model), "-o", str(tmp_path / "o1")]
    ran = subprocess.run(mine, capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0 and Image.open(tmp_path / "o1" / "wall_x4.png").size == (40, 48), ran.stderr
    for ref in (str(model), f"blend:{model},{model}@0.5"):
        refused = subprocess.run(
            [*args, ref, "-o", str(tmp_path / "o2")], capture_output=True, text=True, env=env, timeout=300
        )
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"{model}: reading or writing .safetensors needs the 'safetensors' package" in refused.stderr
        assert "Blender 4.4 or later" in refused.stderr and not (tmp_path / "o2" / "wall_x4.png").exists()


@pytest.mark.parametrize(
    "arch,hparams",
    [("RRDBNet", {"scale": s, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}) for s in (1, 2, 4, 8)]
    + [("SRVGGNetCompact", {"num_feat": 8, "num_conv": 1, "upscale": 3})],
)
def test_numpy_side_knows_scale_and_input_multiple_as_the_torch_archs_do(arch, hparams):
    from texup.archs import build
    from texup.weights.arrays import scale_and_multiple

    module = build(arch, hparams)
    assert scale_and_multiple(arch, module.hparams) == (module.scale, module.input_multiple)


def test_a_users_ncnn_files_run_as_they_are_with_the_scale_read_off_the_network(tmp_path):
    from texup.weights.registry import ncnn_files

    param, weights = ncnn_files("realesr-animevideov3")
    folder = param.parent
    # Real-ESRGAN's x2 graph: the x4 network followed by a 0.5x resize (counting layers would say x4).
    e = open_engine(folder / "realesr-animevideov3-x2.param", engine="ncnn")
    assert e.scale == 2 and e.run_tile(crop01(10, 12)).shape == (20, 24, 3)
    bad = tmp_path / "bad.param"
    bad.write_text("7767517\n1 1\nInput in 0 1 data\n")
    (tmp_path / "bad.bin").write_bytes(b"")
    from texup.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="bad.param.*no convolutions"):
        open_engine(bad, engine="ncnn")


def test_ncnn_tiles_are_sized_by_the_head_not_by_the_stacked_dense_block_convolutions():
    # texup's x4plus graph has 192-wide convolutions in its dense blocks, but only the 64-wide head runs at
    # output resolution; its memory estimate scales with that width (NCNN_TILE_MEMORY, measured at 64).
    from texup.engines.ncnn_engine import CPU_MEMORY_BUDGET

    nc = open_engine("realesrgan-x4plus", engine="ncnn", device="cpu")
    assert nc.graph.head_width == 64 and nc.graph.full_resolution_head and nc.head_kind == "strips"
    # The head in row strips: the fastest measured tile fits (tests/core/test_engine_tiles.py checks every engine).
    assert nc.auto_tile(overlap=16, out_width=800) == 256
    # The whole head at output resolution: the 192 this engine once used broke the budget (2.5 GB for one tile
    # alone, 4.7 GB resident through the worker).
    nc.stream_rows = None
    assert nc.activation_bytes(192 + 32) > 2 * CPU_MEMORY_BUDGET


def test_ncnn_threads_follow_omp_num_threads_as_schedulers_set_it(monkeypatch):
    """A farm or Ray process given one CPU (OMP_NUM_THREADS=1) must not spread ncnn over every core."""
    import ncnn

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert open_engine("realesr-animevideov3", engine="ncnn", device="cpu").threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert open_engine("realesr-animevideov3", engine="ncnn", device="cpu").threads == max(
        1, ncnn.get_physical_big_cpu_count()
    )


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="others_load reads /proc/stat (Linux)")
def test_others_load_sees_another_program_on_the_cpus_and_not_this_process():
    import subprocess
    import time

    cores = os.cpu_count() or 1
    baseline = select.others_load(window=0.5)  # what other programs use already (a CI run, a benchmark, helpers)
    if baseline > 0.25 / cores:
        pytest.skip(f"other programs already keep {baseline * cores:.2f} cores busy: nothing to tell apart")
    before = select.cpu_sample()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:  # this process spinning: not "other programs"
        pass
    assert select.others_load(before) < baseline + 0.5 / cores
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert select.others_load(window=0.5) > 0.6 / cores  # one core of the machine, busy
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize("native", [True, False])
def test_ncnn_on_the_cpu_stores_bf16_exactly_where_the_cpu_computes_it_natively(monkeypatch, native):
    """auto on the CPU: ncnn's bf16 storage on a CPU with native bf16 (faster, smaller tiles; within 50 dB of fp32,
    as torch's bf16 is), else fp32 (the same pixels as torch fp32). An explicit precision is kept either way."""
    from texup.engines import ncnn_engine

    monkeypatch.setattr(ncnn_engine, "native_bf16", lambda: native)
    x = crop01(27, 33)
    auto = open_engine("realesr-animevideov3", engine="ncnn", device="cpu")
    fp32 = open_engine("realesr-animevideov3", engine="ncnn", device="cpu", precision="fp32")
    bf16 = open_engine("realesr-animevideov3", engine="ncnn", device="cpu", precision="bf16")
    assert (auto.precision, fp32.precision, bf16.precision) == ("bf16" if native else "fp32", "fp32", "bf16")
    a, f, b = auto.run_tile(x), fp32.run_tile(x), bf16.run_tile(x)
    assert np.array_equal(a, b if native else f)
    assert 50.0 <= psnr(b, f) < 120.0  # bf16 storage really is on: close to fp32, not equal
