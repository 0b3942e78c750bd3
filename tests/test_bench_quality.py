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
            "--cache",
            str(tmp_path / "cache"),
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
    dial = ["partner (PSNR)", "blend @0.25", "blend @0.5", "blend @0.75", "realesr-animevideov3"]
    assert report["machine"] and report["models"] == ["realesr-animevideov3"] and report["dial"] == dial
    assert report["blends"] == dial[:-1] and report["partner"]["steps"] == 4
    assert (tmp_path / "cache" / "realesr-animevideov3-psnr-4" / "model.safetensors").is_file()
    rows = report["results"]
    images = {r["image"] for r in rows}
    assert images == {"coffee", "samples/coffee.jpg", "procedural bricks", "brick normal map"}
    for image in images:
        for kind in ("area", "bicubic"):
            methods = {(r["method"], r["color_fix"]) for r in rows if r["image"] == image and r["degradation"] == kind}
            assert methods == {("truth", "-"), ("bicubic", "-")} | {(m, fix) for m in dial for fix in ("off", "on")}
    for r in rows:
        m = r["metrics"]
        assert all(math.isfinite(v) for k, v in m.items() if k != "psnr") and 0 <= m["ssim"] <= 1
        if r["method"] == "truth":
            assert m["psnr"] == math.inf and m["sharpness"] == 1.0
    # the trained partner is another network than the model it started from: every output differs
    model_psnr = {
        (r["image"], r["degradation"], r["color_fix"]): r["metrics"]["psnr"] for r in rows if r["method"] == dial[-1]
    }
    for r in rows:
        if r["method"] == dial[0]:
            assert r["metrics"]["psnr"] != model_psnr[(r["image"], r["degradation"], r["color_fix"])]
    by = {
        (r["image"], r["degradation"], r["color_fix"]): r["metrics"]
        for r in rows
        if r["method"] in ("truth", "realesr-animevideov3")
    }
    for (image, kind, fix), m in by.items():
        if fix == "on":  # the fix takes the drift out and brings PSNR up on every one of them
            off = by[(image, kind, "off")]
            assert m["de_mean"] < 0.5 * off["de_mean"] and m["psnr"] > off["psnr"]
    assert "angle" in by[("brick normal map", "area", "on")]
    assert set(report["roles"]) == {"color", "normal"} and report["roles"]["color"]["helps"]
    assert report["targets"]["realesr-animevideov3"]["cases"] == 6
    assert grid.stat().st_size > 1000
    assert "| color | realesr-animevideov3 | on |" in done.stdout and "| color | blend @0.5 |" in done.stdout


def test_colorfix_frontier_quick_measures_each_variant_on_the_pipelines_own_output(tmp_path):
    out = tmp_path / "frontier.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "colorfix_frontier.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    cases = {"coffee (area)", "coffee (bicubic)", "samples/coffee.jpg (area)", "samples/coffee.jpg (bicubic)"}
    cases |= {"procedural bricks (area)", "procedural bricks (bicubic)"}
    assert set(report["pipeline"]) == cases and set(report["reachable"]) == cases
    texups = next(name for name in report["rows"] if "(texup's)" in name)
    # the variant named texup's, applied to the kept output, is what the pipeline wrote with the fix on (up to
    # how a value half-way between two 8-bit levels rounds)
    for row in report["rows"][texups]:
        for key in ("psnr", "de_mean", "de_p95", "sharpness"):
            assert math.isclose(row["metrics"][key], report["pipeline"][row["case"]][key], rel_tol=1e-3)
    # back-projection repeated converges on an output whose area-downscale is the source: less drift than one pass
    once = {r["case"]: r["metrics"]["de_mean"] for r in report["rows"]["back-projection x1"]}
    for row in report["rows"]["back-projection x3"]:
        assert row["metrics"]["de_mean"] < once[row["case"]] and row["metrics"]["de_mean"] < 0.1
    for summary in report["summary"].values():
        assert set(summary["misses"]) <= cases and summary["worst_de_mean"] >= 0
    assert f"| {texups} |" in done.stdout and "Variants that meet every target on every case:" in done.stdout
