"""CPU throughput of ESRGAN inference: the fp32 reference forward against texup's paths, in one run.

    .venv/bin/python scripts/bench_upscale.py                # full run (several minutes on 2 cores)
    .venv/bin/python scripts/bench_upscale.py --quick        # smoke run: small crops, no compile
    .venv/bin/python scripts/bench_upscale.py --json out.json

Same image (a crop of a real photo, tests/realdata.py's coffee.png), same weights, same process:

* **reference**: the plain fp32 NCHW ``module(x)`` on the whole image, dense blocks computed as Real-ESRGAN
  computes them (``as_real_esrgan``: concatenations, out-of-place ops; what Real-ESRGAN runs on a CPU);
* **auto**: texup end to end, ``Upscaler(model).upscale_file(png_in, png_out)`` with every default;
* candidates on a smaller probe crop: channels_last, bf16 (native or emulated), one thread vs all,
  ``torch.compile`` with freezing (cold start reported), tile size vs overlap overhead, glibc malloc settings.

It counts the model's FLOPs (forward hooks on every convolution), measures the conv peak (a 64->64 3x3
convolution at the auto precision) in the same run, and prints times, ratios, the fraction of the floor
(FLOPs / peak), PSNR of each path against the fp32 reference (>= 40 dB required) and fidelity to ground
truth (a photo downscaled x4, upscaled back, PSNR against the original; must match the reference within
0.05 dB). Printing is this script's job; texup itself never prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from realdata import real_image  # noqa: E402

from texup.devices import cpu_has_native_bf16, pick_precision  # noqa: E402
from texup.imageio import read_image, write_image  # noqa: E402
from texup.inference.pipeline import UpscaleOptions, Upscaler  # noqa: E402
from texup.inference.tiling import plan_tiles  # noqa: E402
from texup.weights.registry import load_pretrained  # noqa: E402

MODELS = {"x4plus": "realesrgan-x4plus", "compact": "realesr-animevideov3"}
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(2**28)}


def machine() -> dict[str, Any]:
    """CPU model, flags that matter, core count, torch build, load average."""
    model, flags = "?", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return {
        "cpu": model,
        "flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(t: torch.Tensor) -> np.ndarray:
    return t[0].float().clamp(0, 1).permute(1, 2, 0).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def count_flops(module: torch.nn.Module, h: int, w: int) -> float:
    """Multiply-adds x 2 of every Conv2d for one (1, 3, h, w) forward, per input pixel."""
    total = 0

    def hook(conv: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(conv, torch.nn.Conv2d)
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels // conv.groups
        total += 2 * k * out.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, h, w))
    finally:
        for handle in handles:
            handle.remove()
    return total / (h * w)


def conv_peak(dtype: torch.dtype, channels_last: bool, side: int = 256, repeat: int = 10) -> float:
    """FLOP/s of a 64->64 3x3 convolution on a (1, 64, side, side) input, best of ``repeat``."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(dtype)
    x = torch.rand(1, 64, side, side, dtype=dtype)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        seconds, _ = timed(lambda: conv(x), repeat)
    return 2 * 64 * 64 * 9 * side * side / seconds


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def forward(module: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    with torch.inference_mode():
        x = x.to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return module(x).float()


def as_real_esrgan(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose dense blocks compute the way Real-ESRGAN's RRDBNet does on a CPU.

    texup's own RRDBNet skips the concatenations in NCHW inference and works in place; the reference must
    not: every growth output concatenated with ``torch.cat``, LeakyReLU and the 0.2 residual scale-and-add
    out of place, the upsampling head on the whole map. Other archs are returned as a plain copy.
    """
    import copy
    import types

    from texup.archs.rrdbnet import RRDB, ResidualDenseBlock

    def dense(self: ResidualDenseBlock, x: torch.Tensor) -> torch.Tensor:
        lrelu = torch.nn.functional.leaky_relu
        x1 = lrelu(self.conv1(x), 0.2)
        x2 = lrelu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = lrelu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1)) * 0.2 + x

    def rrdb(self: RRDB, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x

    plain = copy.deepcopy(module)
    for sub in plain.modules():
        if isinstance(sub, ResidualDenseBlock):
            sub.forward = types.MethodType(dense, sub)
        elif isinstance(sub, RRDB):
            sub.forward = types.MethodType(rrdb, sub)
    if hasattr(plain, "stream_rows"):
        plain.stream_rows = None
    return plain


def variant(module: torch.nn.Module, dtype: torch.dtype, channels_last: bool) -> torch.nn.Module:
    import copy

    m = copy.deepcopy(module).eval().to(dtype)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def bench_model(key: str, args: argparse.Namespace, peak: float, report: dict[str, Any]) -> None:
    name = MODELS[key]
    out: dict[str, Any] = {}
    report[key] = out
    t_load, model = timed(lambda: load_pretrained(name))
    module = as_real_esrgan(model.module.eval())  # the reference and the candidates; auto runs texup's own
    out["load_s"] = t_load
    flops_px = count_flops(module, 32, 32)
    out["mflop_per_input_pixel"] = flops_px / 1e6
    size, probe = args.size, args.probe
    crop = real_image("coffee.png", (60, 150, size, size))
    x = to_tensor(crop)
    print(f"\n== {name}: {flops_px / 1e6:.1f} MFLOP per input pixel; {size}x{size} -> {size * 4}x{size * 4}")

    # Reference: plain fp32 NCHW forward of the whole image (warm-up on a small crop first).
    forward(module, x[:, :, :32, :32], torch.float32, False)
    t_ref, ref = timed(lambda: forward(module, x, torch.float32, False), args.repeat)
    ref_img = to_image(ref)
    floor = flops_px * size * size / peak
    out["reference_s"] = t_ref
    out["floor_s"] = floor
    print(f"reference fp32 NCHW forward      {t_ref:8.2f} s   ({floor / t_ref:5.1%} of floor {floor:.2f} s)")

    # texup auto, end to end: PNG in -> PNG out with every default but the colour fix, which changes the
    # network's pixels on purpose (scripts/bench_quality.py measures it): here the engine's pixels are compared.
    up = Upscaler(model)
    plain = UpscaleOptions(color_fix="off")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.png", Path(tmp) / "out.png"
        write_image(src, crop)
        up.upscale_array(crop[:32, :32], plain)  # warm-up (oneDNN primitives), as in a warm worker
        t_auto, _ = timed(lambda: up.upscale_file(src, dst, plain), args.repeat)
        auto_img = read_image(dst).pixels.astype(np.float32) / 255
    out["auto_s"] = t_auto
    out["auto_precision"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[up.precision]
    out["auto_channels_last"] = up.engine.channels_last
    out["auto_tile"] = up.engine.auto_tile()
    out["speedup"] = t_ref / t_auto
    out["auto_fraction_of_floor"] = floor / t_auto
    out["auto_psnr_vs_reference_db"] = psnr(auto_img, ref_img)
    print(
        f"texup auto (file->file, {out['auto_precision']}, "
        f"{'channels_last' if up.engine.channels_last else 'NCHW'}) {t_auto:8.2f} s   "
        f"x{t_ref / t_auto:.2f} vs reference, {floor / t_auto:5.1%} of floor, "
        f"{out['auto_psnr_vs_reference_db']:.1f} dB vs fp32"
    )

    # Fidelity to ground truth: HR photo -> /4 (antialiased bicubic) -> x4 -> PSNR against HR.
    hr = real_image("coffee.png", (8, 100, args.hr, args.hr))
    lr = np.asarray(Image.fromarray(hr).resize((args.hr // 4, args.hr // 4), Image.Resampling.BICUBIC))
    fid_ref = psnr(to_image(forward(module, to_tensor(lr), torch.float32, False)), hr / 255)
    fid_auto = psnr(up.upscale_array(lr, plain).astype(np.float32) / 255, hr / 255)
    out["fidelity_reference_db"], out["fidelity_auto_db"] = fid_ref, fid_auto
    print(
        f"fidelity vs ground truth ({args.hr}px): reference {fid_ref:.3f} dB, auto {fid_auto:.3f} dB "
        f"(delta {fid_auto - fid_ref:+.3f} dB)"
    )

    # Candidates on the probe crop, each against the reference at the same size.
    xp = x[:, :, :probe, :probe]
    t_ref_p, ref_p = timed(lambda: forward(module, xp, torch.float32, False), args.repeat)
    ref_p_img = to_image(ref_p)
    cands: dict[str, Any] = {"probe": probe, "reference_s": t_ref_p}
    out["candidates"] = cands
    print(f"-- candidates on a {probe}x{probe} crop (reference {t_ref_p:.2f} s)")

    def candidate(label: str, seconds: float, img: np.ndarray | None, extra: str = "") -> None:
        db = psnr(img, ref_p_img) if img is not None else None
        cands[label] = {"s": seconds, "ratio": t_ref_p / seconds, "psnr_db": db}
        db_text = f"{db:6.1f} dB" if db is not None else "        "
        print(f"{label:34s} {seconds:8.2f} s   x{t_ref_p / seconds:5.2f}  {db_text} {extra}")

    with threads(1):
        t1, y = timed(lambda: forward(module, xp, torch.float32, False), args.repeat)
    candidate("fp32 NCHW, 1 thread", t1, to_image(y))
    m_cl = variant(module, torch.float32, True)
    forward(m_cl, xp[:, :, :16, :16], torch.float32, True)
    t, y = timed(lambda: forward(m_cl, xp, torch.float32, True), args.repeat)
    candidate("fp32 channels_last", t, to_image(y))
    m_cl = None  # free it before the bf16 copy (the lambda above has run)
    bf16_side = probe if cpu_has_native_bf16() else max(16, probe // 2)
    m_bf = variant(module, torch.bfloat16, True)
    xb = xp[:, :, :bf16_side, :bf16_side]
    forward(m_bf, xb[:, :, :16, :16], torch.bfloat16, True)
    t, y = timed(lambda: forward(m_bf, xb, torch.bfloat16, True), args.repeat)
    t_ref_b, y_ref_b = timed(lambda: forward(module, xb, torch.float32, False), args.repeat)
    db = psnr(to_image(y), to_image(y_ref_b))
    cands["bf16 channels_last"] = {"s": t, "side": bf16_side, "ratio": t_ref_b / t, "psnr_db": db}
    print(
        f"{'bf16 channels_last (' + ('native' if cpu_has_native_bf16() else 'emulated') + f', {bf16_side}px)':34s}"
        f" {t:8.2f} s   x{t_ref_b / t:5.2f}  {db:6.1f} dB (reference {t_ref_b:.2f} s at {bf16_side}px)"
    )
    m_bf = None
    if args.compile.get(key, False):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        dtype = pick_precision(torch.device("cpu"), "auto")
        cl = dtype is torch.bfloat16
        m_c = variant(module, dtype, cl)
        compiled = torch.compile(m_c)
        t_cold, _ = timed(lambda: forward(compiled, xp, dtype, cl))
        t_warm, y = timed(lambda: forward(compiled, xp, dtype, cl), args.repeat)
        cands["compile_cold_s"] = t_cold
        candidate(f"torch.compile freezing ({str(dtype)[6:]})", t_warm, to_image(y), f"cold start {t_cold:.1f} s")
        del compiled, m_c

    # Tile size vs overlap: model-input pixels per image pixel for a large texture (2048^2, overlap 16),
    # and the measured cost of tiling this crop.
    tiles: dict[str, Any] = {}
    out["tiles"] = tiles
    for tile in args.tiles:
        if key not in args.tile_models:
            plan = plan_tiles(2048, 2048, tile, 16, wrap=False)
            work = sum((t.cy1 - t.cy0) * (t.cx1 - t.cx0) for t in plan) / 2048**2
            tiles[str(tile)] = {"work_2048": work}
            print(f"tile {tile:4d} overlap 16: {work:5.3f}x pixels through the model on 2048^2")
            continue
        plan = plan_tiles(2048, 2048, tile, 16, wrap=False)
        work = sum((t.cy1 - t.cy0) * (t.cx1 - t.cx0) for t in plan) / 2048**2
        t, _ = timed(lambda: up.upscale_array(crop, UpscaleOptions(tile=tile, seamless="off")))  # noqa: B023 (timed now)
        tiles[str(tile)] = {"work_2048": work, "s": t}
        print(
            f"tile {tile:4d} overlap 16: {work:5.3f}x pixels through the model on 2048^2; "
            f"this crop {t:.2f} s (x{t_auto / t:.2f} vs auto)"
        )


def child_malloc(key: str, side: int) -> None:
    """Run in a child process: time the reference forward at ``side`` and print JSON."""
    module = load_pretrained(MODELS[key]).module.eval()
    x = to_tensor(real_image("coffee.png", (60, 150, side, side)))
    forward(module, x[:, :, :32, :32], torch.float32, False)
    t, _ = timed(lambda: forward(module, x, torch.float32, False), 2)
    print(json.dumps({"s": t}))


def malloc_effect(key: str, side: int, report: dict[str, Any]) -> None:
    results = {}
    for label, extra in (("default", {}), ("tuned", TUNED_MALLOC)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(extra)
        done = subprocess.run(
            [sys.executable, __file__, "--child-malloc", key, "--size", str(side)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])["s"]
    report.setdefault(key, {})["malloc"] = {"side": side, **results, "env": TUNED_MALLOC}
    print(
        f"\n{MODELS[key]} reference {side}px, glibc default {results['default']:.2f} s, "
        f"{' '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())} {results['tuned']:.2f} s "
        f"(x{results['default'] / results['tuned']:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64px crops, no compile, no malloc runs")
    parser.add_argument("--size", type=int, default=256, help="input side for reference vs auto (default 256)")
    parser.add_argument("--probe", type=int, default=64, help="input side for the candidate paths (default 64)")
    parser.add_argument("--hr", type=int, default=384, help="ground-truth crop side for fidelity (default 384)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="timed repeats, best kept (default 2: the first call of a new input shape also builds oneDNN primitives)",
    )
    parser.add_argument("--tile-models", default="compact", help="models whose tile sweep is timed (default compact)")
    parser.add_argument("--models", default="x4plus,compact", help="comma list of x4plus, compact")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile candidates")
    parser.add_argument("--compile-x4plus", action="store_true", help="also compile x4plus (minutes of compiling)")
    parser.add_argument("--tiles", default="64,128,256", help="tile sizes to compare (default 64,128,256)")
    parser.add_argument("--peak-only", action="store_true", help="only measure the conv peak")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--child-malloc", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_malloc:
        child_malloc(args.child_malloc, args.size)
        return 0
    if args.quick:
        args.size, args.probe, args.hr, args.repeat = 64, 32, 128, 1
    args.tile_models = set(args.tile_models.split(","))
    args.tiles = [int(t) for t in args.tiles.split(",") if t]
    args.compile = {"compact": not (args.no_compile or args.quick), "x4plus": args.compile_x4plus and not args.quick}
    report: dict[str, Any] = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "json"}}
    m = report["machine"]
    print(
        f"{m['cpu']} | {m['cores']} cores | flags {' '.join(m['flags'])} | torch {m['torch']} "
        f"({m['torch_cpu_capability']}, native bf16: {m['native_bf16']}) | load {m['loadavg'][0]:.2f}"
    )
    auto = pick_precision(torch.device("cpu"), "auto")
    # The floor uses the best layout at the auto precision: a path cannot beat the fastest convolution.
    report["conv_peak_nchw_flops"] = conv_peak(auto, False)
    report["conv_peak_channels_last_flops"] = conv_peak(auto, True)
    peak = max(report["conv_peak_nchw_flops"], report["conv_peak_channels_last_flops"])
    report["conv_peak_flops"] = peak
    print(
        f"conv peak (64->64 3x3 on 64x256x256, {str(auto)[6:]}): {peak / 1e9:.1f} GFLOP/s "
        f"(NCHW {report['conv_peak_nchw_flops'] / 1e9:.1f}, "
        f"channels_last {report['conv_peak_channels_last_flops'] / 1e9:.1f})"
    )
    if args.peak_only:
        return 0
    for key in [k for k in args.models.split(",") if k]:
        bench_model(key, args, peak, report)
    if not args.quick:
        malloc_effect("x4plus" if "x4plus" in args.models else "compact", 128, report)
    # A shared machine's speed drifts: measure the peak again and say so when the floor above is unreliable.
    best_layout = report["conv_peak_channels_last_flops"] >= report["conv_peak_nchw_flops"]
    report["conv_peak_end_flops"] = end = conv_peak(auto, best_layout)
    drift = end / peak - 1
    print(
        f"conv peak at the end: {end / 1e9:.1f} GFLOP/s ({drift:+.0%} vs the start)"
        + (
            "; the machine's speed changed during the run: fractions of the floor are unreliable"
            if abs(drift) > 0.15
            else ""
        )
    )
    report["machine"]["loadavg_after"] = os.getloadavg()
    print(f"\nload average after: {report['machine']['loadavg_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
