"""texup.cluster against a real Ray cluster on this machine: a head node and a second node process
(`ray start --head`, then `ray start --address`), each with one CPU, as a farm of two machines would be."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ray")

from texup.cluster import local_cluster, run_on_ray  # noqa: E402
from texup.imageio import read_image, write_image  # noqa: E402
from texup.options import EngineChoice  # noqa: E402

pytestmark = pytest.mark.slow  # starts Ray clusters


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(nodes=2, cpus_per_node=1, temp_dir=str(tmp_path_factory.mktemp("ray"))) as address:
        yield address


def test_files_spread_over_two_nodes_one_warm_model_each_failures_per_file(cluster, tmp_path):
    rng = np.random.default_rng(0)
    tasks = []
    for i in range(7):
        src = tmp_path / "in" / f"t{i}.png"
        src.parent.mkdir(exist_ok=True)
        channels = 4 if i % 3 == 0 else 3
        write_image(src, (rng.random((18 + i, 21, channels)) * 255).astype(np.uint8))
        tasks.append((str(src), str(tmp_path / "out" / f"t{i}_x4.png")))
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    tasks.insert(3, (str(bad), str(tmp_path / "out" / "bad_x4.png")))
    seen = []

    outcomes = run_on_ray(
        tasks,
        model="realesr-animevideov3",
        choice=EngineChoice(engine="ncnn", device="cpu"),
        options={},
        address=cluster,
        on_outcome=seen.append,
    )

    assert [o.index for o in outcomes] == list(range(len(tasks))) and len(seen) == len(tasks)
    failed = [o for o in outcomes if not o.ok]
    assert [o.src for o in failed] == [str(bad)]
    assert failed[0].error.startswith(f"{bad}: ") and "\n" not in failed[0].error
    assert not (tmp_path / "out" / "bad_x4.png").exists()
    for (src, dst), outcome in zip(tasks, outcomes):
        if outcome.ok:
            image = read_image(dst)
            assert image.pixels.shape[:2] == tuple(4 * s for s in read_image(src).pixels.shape[:2])
    # Two nodes, one warm worker process each: every file ran in one of exactly two processes, on two nodes.
    assert len({o.node for o in outcomes}) == 2 and len({o.pid for o in outcomes}) == 2
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_texup_upscale_ray_uses_the_same_plan_manifest_and_error_lines(cluster, tmp_path):
    import json

    rng = np.random.default_rng(1)
    src = tmp_path / "lib"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        write_image(src / ("sub" if i % 2 else "") / f"t{i}.png", (rng.random((16, 20, 3)) * 255).astype(np.uint8))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "texup",
        "upscale",
        str(src),
        "-r",
        "-o",
        str(out),
        "--model",
        "realesr-animevideov3",
        "--engine",
        "ncnn",
        "--device",
        "cpu",
        "--ray",
        cluster,
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    errors = [ln for ln in first.stderr.splitlines() if ln.startswith("texup: error:")]
    assert len(errors) == 1 and f"{src / 'broken.png'}: " in errors[0] and errors[0].count(str(src / "broken.png")) == 1
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["sub/t1_x4.png", "sub/t3_x4.png", "t0_x4.png", "t2_x4.png", "t4_x4.png"]
    manifest = json.loads((out / ".texup" / "outputs.json").read_text())
    assert set(written) <= set(manifest["files"]) and all(manifest["files"][k]["source_sha256"] for k in written)
    # The same manifest as one machine's: a rerun (here without Ray) finds everything up to date.
    again = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300, env=env)
    assert "0 upscaled, 5 up to date" in again.stderr, again.stderr[-2000:]


def test_one_image_split_over_both_nodes_gives_the_one_machine_pixels(cluster, tmp_path):
    """A lone file with enough tiles runs on the driver's pipeline with its tiles on both nodes' actors (the
    split rule: fewer files than idle actors); its pixels are those of a local run with the same engine."""
    from realdata import real_image

    from texup.inference.pipeline import UpscaleOptions, Upscaler

    rgb = real_image("coffee.png", crop=(80, 140, 45, 37))
    yy, xx = np.mgrid[:45, :37]
    alpha = np.where((yy - 22) ** 2 + (xx - 18) ** 2 < 150, 65535, (yy * 1400 + xx * 350) % 65536).astype(np.uint16)
    images = {
        "rgba16": np.dstack([rgb.astype(np.uint16) * 257, alpha]),
        "rgb8": real_image("astronaut.png", crop=(30, 50, 41, 27)),
    }
    options = {"tile": 16, "overlap": 8}  # 9 and 6 tiles: at least two per actor
    local = Upscaler("realesr-animevideov3", engine="ncnn", device="cpu")
    for name, pixels in images.items():
        src, dst = tmp_path / "in" / f"{name}.png", tmp_path / "out" / f"{name}_x4.png"
        src.parent.mkdir(exist_ok=True)
        write_image(src, pixels)
        [outcome] = run_on_ray(
            [(str(src), str(dst))],
            model="realesr-animevideov3",
            choice=EngineChoice(engine="ncnn", device="cpu"),
            options=options,
            address=cluster,
        )
        assert outcome.ok, outcome.error
        assert outcome.pid == os.getpid() and outcome.workers == 2 and len(set(outcome.node.split(","))) == 2
        got = read_image(dst).pixels
        want = local.upscale_array(read_image(src).pixels, UpscaleOptions(**options))
        assert got.dtype == want.dtype == pixels.dtype and got.shape == want.shape == (
            4 * pixels.shape[0],
            4 * pixels.shape[1],
            pixels.shape[2],
        )
        top = float(np.iinfo(pixels.dtype).max)
        mse = float(np.mean((got.astype(np.float64) / top - want.astype(np.float64) / top) ** 2))
        assert mse == 0 or 10 * np.log10(1 / mse) >= 60, f"{name}: {10 * np.log10(1 / mse):.1f} dB"
    assert not list((tmp_path / "out").glob(".*.tmp"))
