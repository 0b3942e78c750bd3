"""Soak benchmark (issue 11): does memory stay flat over a long batch and a long-lived worker?

    .venv/bin/python scripts/bench_soak.py                 # 500 textures, 500 worker jobs
    .venv/bin/python scripts/bench_soak.py --count 100     # quicker

(a) ``texup upscale`` over a folder of ``--count`` small mixed textures (crops of real photos and
textures from tests/realdata.py, ``--sizes`` default 32-48 px; PNG 8-bit RGB/RGBA and 16-bit, JPEG, TGA,
half-float EXR) with
realesr-animevideov3 on the ncnn engine, in a subprocess whose VmRSS is read from /proc/<pid>/status every
``--interval`` seconds. Progress is taken from its ``->`` lines, so "the first 10 %" and "the last 10 %" are
the samples taken while the first and the last tenth of the files were being processed (start-up and model
load excluded); the peak RSS of each and their ratio are reported.
(b) one ``python -m texup worker`` serving ``--count`` upscale jobs of one item each (the same files), its
VmRSS read after job 50 (or a tenth of the jobs, when fewer) and after the last job; the growth is reported.

Memory is called flat when the later figure is at most ``--flat`` (default 1.10, i.e. 10 %) times the earlier one.
Everything is written under a temporary folder (its own TEXUP_HOME too), removed at the end. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from realdata import real_image  # noqa: E402

from texup.imageio import ImageInfo, srgb_to_linear, write_image  # noqa: E402
from texup.machine import describe as machine  # noqa: E402

MODEL = "realesr-animevideov3"
SOURCES = (
    "coffee.png",
    "astronaut.png",
    "brick.png",
    "gravel.png",
    "camera.png",
    "rocket.jpg",
    "chelsea.png",
    "grass.png",
    "rough-wall.png",
    "retina.jpg",
)


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def make_textures(folder: Path, count: int, seed: int = 0, sizes: tuple[int, int] = (32, 48)) -> list[Path]:
    """``count`` small textures of mixed formats, sides in ``sizes`` (inclusive), cut from the bundled real images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for name in SOURCES:
        try:
            images.append(real_image(name))
        except FileNotFoundError:
            continue
    paths = []
    for i in range(count):
        src = images[i % len(images)]
        h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        top, left = int(rng.integers(0, src.shape[0] - h)), int(rng.integers(0, src.shape[1] - w))
        crop = np.ascontiguousarray(src[top : top + h, left : left + w])
        rgb = np.repeat(crop, 3, axis=2) if crop.shape[2] == 1 else crop[:, :, :3]
        kind = i % 6
        if kind == 0:
            path = write_image(folder / f"t{i:04d}.png", rgb)
        elif kind == 1:
            alpha = rgb[:, :, :1] // 2 + 100
            path = write_image(folder / f"t{i:04d}_a.png", np.concatenate([rgb, alpha], axis=2))
        elif kind == 2:
            path = write_image(folder / f"t{i:04d}_16.png", rgb.astype(np.uint16) * 257)
        elif kind == 3:
            path = write_image(
                folder / f"t{i:04d}.jpg",
                rgb,
                like=ImageInfo(None, "jpeg", w, h, 3, "uint8", "srgb", {"jpeg_quality": 90}),
            )
        elif kind == 4:
            path = write_image(folder / f"t{i:04d}.tga", crop if crop.shape[2] == 1 else rgb)
        else:
            path = write_image(
                folder / f"t{i:04d}.exr", srgb_to_linear(rgb.astype(np.float32) / 255).astype(np.float16)
            )
        paths.append(path)
    return paths


def soak_cli(inputs: Path, out: Path, count: int, interval: float, env: dict[str, str]) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "texup",
        "upscale",
        str(inputs),
        "-o",
        str(out),
        "--model",
        MODEL,
        "--engine",
        "ncnn",
        "--device",
        "cpu",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    done = [0]

    def count_lines() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " -> " in line:
                done[0] += 1

    reader = threading.Thread(target=count_lines, daemon=True)
    reader.start()
    samples: list[tuple[float, int, int]] = []  # (seconds, files done, RSS kB)
    while proc.poll() is None:
        kb = rss_kb(proc.pid)
        if kb is not None:
            samples.append((time.monotonic() - started, done[0], kb))
        time.sleep(interval)
    reader.join(10)
    err = proc.stderr.read() if proc.stderr else ""
    seconds = time.monotonic() - started
    if proc.returncode != 0 or done[0] != count:
        raise RuntimeError(f"texup upscale exited {proc.returncode} after {done[0]} of {count} files:\n{err[-2000:]}")
    tenth = max(1, count // 10)
    first = [kb for _, n, kb in samples if 1 <= n <= tenth]
    last = [kb for _, n, kb in samples if n >= count - tenth]
    if not first or not last:
        raise RuntimeError(f"too few RSS samples ({len(samples)}): use a larger --count or a smaller --interval")
    deciles = [max((kb for _, n, kb in samples if d * tenth < n <= (d + 1) * tenth), default=0) for d in range(10)]
    return {
        "files": count,
        "seconds": round(seconds, 1),
        "samples": len(samples),
        "peak_by_tenth_mb": [round(kb / 1024, 1) for kb in deciles],
        "peak_first_10pct_mb": round(max(first) / 1024, 1),
        "peak_last_10pct_mb": round(max(last) / 1024, 1),
        "peak_overall_mb": round(max(kb for _, _, kb in samples) / 1024, 1),
        "ratio": round(max(last) / max(first), 3),
        "samples_first": len(first),
        "samples_last": len(last),
    }


def soak_worker(paths: list[Path], out: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "texup", "worker", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    hello = json.loads(proc.stdout.readline())
    assert hello.get("type") == "hello", hello
    early_at = min(50, max(1, len(paths) // 10))
    rss: dict[int, int] = {}
    started = time.monotonic()
    failed = 0
    for i, src in enumerate(paths, 1):
        job = {
            "type": "upscale",
            "id": f"j{i}",
            "options": {"model": MODEL, "engine": "ncnn", "device": "cpu"},
            "items": [
                {"key": src.name, "src": str(src), "dst": str(out / f"{src.stem}_x4{src.suffix}"), "overwrite": True}
            ],
        }
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("type") == "error":
                failed += 1
            if event.get("type") == "done" and event.get("id") == f"j{i}":
                break
        else:
            raise RuntimeError(f"the worker closed its output during job {i}")
        if i in (1, early_at, len(paths)) or i % max(1, len(paths) // 10) == 0:
            rss[i] = rss_kb(proc.pid) or 0
    seconds = time.monotonic() - started
    peak = rss_kb(proc.pid, "VmHWM") or 0
    proc.stdin.close()
    proc.wait(timeout=60)
    if failed:
        raise RuntimeError(f"{failed} worker jobs failed")
    early, late = rss[early_at], rss[len(paths)]
    return {
        "jobs": len(paths),
        "seconds": round(seconds, 1),
        "rss_after_job_1_mb": round(rss[1] / 1024, 1),
        "early_job": early_at,
        "rss_after_early_mb": round(early / 1024, 1),
        "rss_after_last_mb": round(late / 1024, 1),
        "growth_mb": round((late - early) / 1024, 1),
        "ratio": round(late / early, 3),
        "peak_mb": round(peak / 1024, 1),
        "rss_series_mb": {str(k): round(v / 1024, 1) for k, v in sorted(rss.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--count", type=int, default=500, help="textures in the batch and jobs for the worker (default 500)"
    )
    parser.add_argument("--sizes", default="32,48", help="smallest,largest texture side in px (default 32,48)")
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between RSS samples of the batch (default 0.2)"
    )
    parser.add_argument(
        "--flat", type=float, default=1.10, help="largest late/early RSS ratio called flat (default 1.10)"
    )
    parser.add_argument("--skip", choices=("cli", "worker"), action="append", default=[], help="leave one part out")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.count < 10:
        parser.error("--count must be at least 10")
    report: dict[str, Any] = {
        "machine": machine(),
        "count": args.count,
        "model": MODEL,
        "engine": "ncnn",
        "flat_ratio": args.flat,
    }
    print(f"texup soak on {report['machine']}; load average {os.getloadavg()[0]:.2f}; {MODEL} on ncnn (CPU)")
    ok = True
    with tempfile.TemporaryDirectory(prefix="texup-soak-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "core"), "TEXUP_HOME": str(work / "home")}
        low, high = (int(v) for v in args.sizes.split(","))
        report["sizes"] = [low, high]
        paths = make_textures(work / "in", args.count, sizes=(low, high))
        if "cli" not in args.skip:
            cli = soak_cli(work / "in", work / "out-cli", args.count, args.interval, env)
            cli["flat"] = cli["ratio"] <= args.flat
            ok &= cli["flat"]
            report["cli"] = cli
            print(
                f"(a) texup upscale, {cli['files']} files ({low}-{high} px; PNG/PNG16/RGBA/JPEG/TGA/EXR)"
                f" in {cli['seconds']} s,"
                f" {cli['samples']} RSS samples every {args.interval} s: peak RSS {cli['peak_first_10pct_mb']} MB over"
                f" the first 10 % of the files, {cli['peak_last_10pct_mb']} MB over the last 10 % (ratio"
                f" {cli['ratio']}); overall peak {cli['peak_overall_mb']} MB -> {'flat' if cli['flat'] else 'GROWING'}"
            )
            print("    peak RSS by tenth of the files: " + ", ".join(str(v) for v in cli["peak_by_tenth_mb"]) + " MB")
        if "worker" not in args.skip:
            wk = soak_worker(paths, work / "out-worker", env)
            wk["flat"] = wk["ratio"] <= args.flat
            ok &= wk["flat"]
            report["worker"] = wk
            print(
                f"(b) texup worker, {wk['jobs']} jobs of one file in {wk['seconds']} s:"
                f" RSS {wk['rss_after_job_1_mb']} MB"
                f" after job 1, {wk['rss_after_early_mb']} MB after job {wk['early_job']}, {wk['rss_after_last_mb']} MB"
                f" after job {wk['jobs']} (growth {wk['growth_mb']:+} MB, ratio {wk['ratio']}); peak"
                f" {wk['peak_mb']} MB -> {'flat' if wk['flat'] else 'GROWING'}"
            )
            print("    RSS after job: " + ", ".join(f"{k}: {v}" for k, v in wk["rss_series_mb"].items()) + " MB")
    print(f"flat means: the later RSS is at most {args.flat:.2f}x the earlier one")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
