"""scripts/bench_quality.py on tiny inputs (16-px, three textures, the smallest packaged model): it runs, measures
every method with and without the colour fix, and the fix does what the benchmark says it does."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quality_quick_measures_every_method_and_the_fix(tmp_path):
    out, grid = tmp_path / "quality.json", tmp_path / "grid.png"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_quality.py"),
            "--quick",
            "--json",
            str(out),
            "--grid",
            str(grid),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"] and report["models"] == ["realesr-animevideov3"] and report["blends"] == []
    rows = report["results"]
    images = {r["image"] for r in rows}
    assert images == {"coffee", "samples/coffee.jpg", "procedural bricks", "brick normal map"}
    for image in images:
        for kind in ("area", "bicubic"):
            methods = {(r["method"], r["color_fix"]) for r in rows if r["image"] == image and r["degradation"] == kind}
            assert methods == {
                ("truth", "-"),
                ("bicubic", "-"),
                ("realesr-animevideov3", "off"),
                ("realesr-animevideov3", "on"),
            }
    for r in rows:
        m = r["metrics"]
        assert all(math.isfinite(v) for k, v in m.items() if k != "psnr") and 0 <= m["ssim"] <= 1
        if r["method"] == "truth":
            assert m["psnr"] == math.inf and m["sharpness"] == 1.0
    by = {(r["image"], r["degradation"], r["color_fix"]): r["metrics"] for r in rows if r["method"] != "bicubic"}
    for (image, kind, fix), m in by.items():
        if fix == "on":  # the fix takes the drift out and brings PSNR up on every one of them
            off = by[(image, kind, "off")]
            assert m["de_mean"] < 0.5 * off["de_mean"] and m["psnr"] > off["psnr"]
    assert "angle" in by[("brick normal map", "area", "on")]
    assert set(report["roles"]) == {"color", "normal"} and report["roles"]["color"]["helps"]
    assert report["targets"]["realesr-animevideov3"]["cases"] == 6
    assert grid.stat().st_size > 1000
    assert "| color | realesr-animevideov3 | on |" in done.stdout
