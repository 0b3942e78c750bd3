"""Peak memory of one x4 upscale against the size of its output, for 1024^2, 2048^2 and 4096^2 RGBA inputs.

    .venv/bin/python scripts/bench_memory.py                       # tiny network, 3 sizes, 3 malloc settings
    .venv/bin/python scripts/bench_memory.py --sizes 1024 --model compact
    .venv/bin/python scripts/bench_memory.py --core /tmp/old/core  # the same measurement on another checkout
    .venv/bin/python scripts/bench_memory.py --tile-peak x4plus    # activation peak of one real-model tile
    .venv/bin/python scripts/bench_memory.py --scale 2             # x2 from the x4 model (rows resampled as they come)

Each measurement runs in its own process: build the upscaler, make an RGBA uint8 input with a varying alpha
(so colour and alpha both go through the model: the worst case), warm up on a small crop, reset the peak
RSS (``/proc/self/clear_refs``), upscale with the defaults (tile 256, overlap 16), then read VmHWM. The
figure that matters is growth = VmHWM - VmRSS before the call, against the output's own size.

The network is a tiny SRVGGNetCompact (8 features, 2 body convolutions, x4) by default so that 4096^2 runs
in seconds: texup's buffers do not depend on the network, and the real models' per-tile activation peak is
a separate, size-independent figure (``--tile-peak``). glibc settings compared: the default;
MALLOC_MMAP_MAX_=0 / MALLOC_TRIM_THRESHOLD_ in the environment (keep freed memory instead of returning every
block over the mmap threshold to the kernel); and the same set with ``mallopt`` at start, which is what the
``texup`` command and the worker do (:mod:`texup._malloc`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(2**28)}
MIB = 2**20


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(side: int, model_name: str, scale: float) -> dict[str, Any]:
    """Runs inside the measured process; returns the figures as a dict."""
    import numpy as np
    import torch

    from texup.inference.pipeline import UpscaleOptions, Upscaler

    if model_name == "tiny":
        from types import SimpleNamespace

        from texup.archs.compact import SRVGGNetCompact

        torch.manual_seed(0)
        net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4, act_type="prelu")
        model: Any = SimpleNamespace(module=net, scale=4, input_multiple=1, name="tiny", hparams={}, arch="compact")
    else:
        from texup.weights.registry import load_pretrained

        model = load_pretrained({"compact": "realesr-animevideov3", "x4plus": "realesrgan-x4plus"}[model_name])
    up = Upscaler(model, device="cpu", precision="auto")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.empty((side, side, 4), np.uint8)
    image[..., 0] = (xx * 7 + yy) % 256
    image[..., 1] = (yy * 5) % 256
    image[..., 2] = rng.integers(0, 256, (side, side), dtype=np.uint8)
    image[..., 3] = np.where((xx // 64 + yy // 64) % 2 == 0, 255, 0)
    del yy, xx
    options = UpscaleOptions(seamless="off", scale=scale)
    up.upscale_array(image[:64, :64], options)
    _reset_peak()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    out = up.upscale_array(image, options)
    seconds = time.perf_counter() - t0
    return {"before": before, "peak": _status("VmHWM"), "out_bytes": out.nbytes, "seconds": seconds}


def child_tile_peak(model_name: str, tile: int, overlap: int) -> dict[str, Any]:
    """Peak RSS growth of one (tile + 2 overlap)^2 model input through the runner."""
    import numpy as np

    from texup.engines.torch_engine import TorchEngine as Runner
    from texup.weights.registry import load_pretrained

    model = load_pretrained({"compact": "realesr-animevideov3", "x4plus": "realesrgan-x4plus"}[model_name])
    runner = Runner(model, device="cpu", precision="auto")
    runner.run_tile(np.zeros((16, 16, 3), np.float32))
    side = tile + 2 * overlap
    x = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    _reset_peak()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    runner.run_tile(x)
    return {"before": before, "peak": _status("VmHWM"), "side": side, "seconds": time.perf_counter() - t0}


def run_child(args: list[str], core: Path, malloc: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(malloc)
    env["PYTHONPATH"] = str(core)
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096", help="input sides (default 1024,2048,4096)")
    parser.add_argument("--model", default="tiny", choices=["tiny", "compact", "x4plus"])
    parser.add_argument("--core", type=Path, default=ROOT / "core", help="the texup package root to measure")
    parser.add_argument(
        "--malloc",
        default="default,tuned,mallopt",
        help="glibc settings to compare: default, tuned (environment variables), mallopt (what the "
        "texup command and worker set: texup._malloc.keep_freed_memory)",
    )
    parser.add_argument("--tile-peak", choices=["compact", "x4plus"], help="measure one real-model tile instead")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--scale",
        type=float,
        default=4.0,
        help="output scale (default 4; 2 = x2 from the x4 model, resampled row by row)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-tile", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.mallopt:
            from texup._malloc import keep_freed_memory

            keep_freed_memory()
        print(json.dumps(child(int(args.child[0]), args.child[1], float(args.child[2]))))
        return 0
    if args.child_tile:
        print(json.dumps(child_tile_peak(args.child_tile[0], int(args.child_tile[1]), int(args.child_tile[2]))))
        return 0
    print(f"load average {os.getloadavg()[0]:.2f}; texup from {args.core}")
    rows: list[dict[str, Any]] = []
    if args.tile_peak:
        r = run_child(["--child-tile", args.tile_peak, "256", "16"], args.core, {})
        growth = (r["peak"] - r["before"]) / MIB
        print(
            f"{args.tile_peak}: one {r['side']}^2 tile (tile 256 + 2 x 16 overlap) peak growth {growth:.0f} MiB "
            f"({r['seconds']:.1f} s)"
        )
        rows.append({"tile_peak": args.tile_peak, **r, "growth_mib": growth})
    else:
        print(
            f"{'input':>10} {'malloc':>8} {'output MiB':>11} {'peak growth MiB':>16} {'over output MiB':>16} "
            f"{'seconds':>8}"
        )
        for side in [int(s) for s in args.sizes.split(",") if s]:
            for label in args.malloc.split(","):
                malloc = TUNED_MALLOC if label == "tuned" else {}
                child_args = ["--child", str(side), args.model, str(args.scale)]
                if label == "mallopt":
                    child_args.append("--mallopt")
                r = run_child(child_args, args.core, malloc)
                growth = (r["peak"] - r["before"]) / MIB
                out = r["out_bytes"] / MIB
                print(
                    f"{side:>5}^2 x{args.scale:g} {label:>8} {out:>11.0f} {growth:>16.0f} {growth - out:>16.0f} "
                    f"{r['seconds']:>8.1f}"
                )
                rows.append({"side": side, "malloc": label, **r, "growth_mib": growth, "out_mib": out})
    print(f"load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        figures = {"model": args.model, "scale": args.scale, "rows": rows, "malloc_env": TUNED_MALLOC}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
