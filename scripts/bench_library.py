"""Benchmark ``texup upscale`` over a small library: first run, unchanged rerun, rerun after changing 10 files.

    python scripts/bench_library.py [--count 200] [--model realesr-animevideov3] [--engine ncnn] [--keep DIR]

Generates ``--count`` small mixed textures (PNG, JPEG, TGA; 24-64 px; a quarter RGBA), runs the real CLI as a
subprocess each time (so every figure includes the process start, imports and, when anything runs, the model
load) and prints one line per run with the machine's CPU. The unchanged rerun's wall time is the overhead of
an incremental run (hashing and the manifest; target: under 2 s); "vs first" is the first run's time.

``--manifest-entries N`` (default 100000; 0: skip) then times the output manifest alone at a studio library's
size: saving and loading ``.texup/outputs.json`` with N entries shaped like real ones, against a plain
``json.dump`` of the same data (the floor of any format rewritten whole), and the memory the loaded record holds.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from texup.imageio import write_image
from texup.machine import describe


def make_library(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ext = (".png", ".jpg", ".tga")[i % 3]
        channels = 4 if ext != ".jpg" and i % 4 == 0 else 3
        h, w = (int(v) for v in rng.integers(24, 65, 2))
        # smooth noise: a texture-like image rather than white noise (which compresses and upscales atypically)
        base = rng.random((h // 4 + 2, w // 4 + 2, channels))
        pixels = np.kron(base, np.ones((4, 4, 1)))[:h, :w] * 255
        path = folder / f"tex{i:04d}{ext}"
        write_image(path, pixels.astype(np.uint8))
        paths.append(path)
    return paths


def texup_run(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "texup", "upscale", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"texup upscale failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = [line for line in proc.stderr.splitlines() if "up to date" in line]
    return seconds, re.sub(r" into \S+", "", summary[-1]) if summary else ""


def manifest_at_scale(entries: int, work: Path) -> None:
    """Save and load an OutputRecord of ``entries`` outputs; peer: json.dump of the same dict."""
    from texup.outputs import OutputRecord

    root = work / "manifest"
    shutil.rmtree(root, ignore_errors=True)
    entry = {
        "source": "textures/props/wood/crate_planks_0001_basecolor.png",
        "source_size": 4_194_304,
        "source_mtime_ns": 1_700_000_000_000_000_000,
        "sha256": "0" * 64,
        "hashed_ns": 1_700_000_000_000_000_000,
        "model": "1" * 64,
        "texup": "0.2.0",
        "pixels": {"scale": 4.0, "size": None, "seamless": "auto", "role": "auto"},
        "size": 16_777_216,
        "mtime_ns": 1_700_000_000_000_000_000,
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = OutputRecord(root)
    for i in range(entries):
        record.put(f"props/wood/crate_planks_{i:06d}_basecolor_x4.png", dict(entry), save_every=1e9)
    start = time.perf_counter()
    record.save()
    saved = time.perf_counter() - start
    size = (root / ".texup" / "outputs.json").stat().st_size
    del record
    start = time.perf_counter()
    loaded = OutputRecord(root)
    load = time.perf_counter() - start
    held = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    payload = {"files": loaded._entries}
    start = time.perf_counter()
    with open(root / "peer.json", "w", encoding="utf-8") as f:
        json.dump(payload, f)
    peer = time.perf_counter() - start
    print(
        f"manifest, {entries} outputs: save {saved:5.2f} s (plain json.dump of the same: {peer:5.2f} s, "
        f"{saved / peer:.1f}x), load {load:5.2f} s, {size / 1e6:.0f} MB on disk, peak memory +{held:.0f} MB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--engine", default="ncnn")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--manifest-entries", type=int, default=100_000, help="0: skip the manifest-at-scale line")
    opts = parser.parse_args()

    work = opts.keep or Path(tempfile.mkdtemp(prefix="texup-bench-library-"))
    try:
        lib, out = work / "lib", work / "out"
        shutil.rmtree(out, ignore_errors=True)
        paths = make_library(lib, opts.count)
        time.sleep(2.1)  # sources older than the 2 s "racy" window, as in a library that is not being written
        common = [str(lib), "-o", str(out), "--model", opts.model, "--engine", opts.engine, "--device", "cpu"]
        print(f"machine: {describe()}")
        print(
            f"library: {opts.count} textures (PNG/JPEG/TGA, 24-64 px, 1 in 4 of the PNG/TGA RGBA); "
            f"model {opts.model}, engine {opts.engine}"
        )
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "texup", "--version"], capture_output=True, check=True)
        print(f"process start       {time.perf_counter() - start:7.2f} s   (python -m texup --version: the floor)")
        first, line = texup_run(common)
        print(f"first run           {first:7.2f} s   {line}")
        again, line = texup_run(common)
        print(f"unchanged rerun     {again:7.2f} s   {line}  ({again / first:.1%} of the first run)")
        dry, line = texup_run([*common, "--dry-run"])
        print(f"dry run             {dry:7.2f} s")
        rng = np.random.default_rng(1)
        for path in paths[:: max(1, len(paths) // opts.changed)][: opts.changed]:
            from texup.imageio import read_image

            image = read_image(path)
            flipped = image.pixels[::-1].copy()
            flipped[0, 0, 0] = np.uint8(rng.integers(0, 256))
            write_image(path, flipped)
        touched, line = texup_run(common)
        print(f"{opts.changed} files changed     {touched:7.2f} s   {line}")
        if opts.manifest_entries:
            manifest_at_scale(opts.manifest_entries, work)
    finally:
        if opts.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
