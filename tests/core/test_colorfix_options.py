"""The colour fix option (--color-fix, the worker's color_fix) reaches the pipeline and the output manifest."""

from __future__ import annotations

import numpy as np
import pytest
from realdata import real_image
from test_colorfix import _block_drift


@pytest.fixture(scope="module")
def drifting_model(tmp_path_factory):
    """A small random x4 RRDBNet: its output's colour is far from its input's, as a real model's drifts less."""
    import torch

    from texup.archs.rrdbnet import RRDBNet
    from texup.weights import save_model

    torch.manual_seed(3)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    return save_model(net, tmp_path_factory.mktemp("model") / "drift_x4.safetensors")


@pytest.fixture()
def wall(tmp_path):
    from texup.imageio import write_image

    return write_image(tmp_path / "wall.png", real_image("brick.png", crop=(0, 0, 32, 40)))


def _drift_of(path, source_path) -> float:
    from texup.imageio import read_image

    out = read_image(path).pixels.astype(np.float64) / 255
    src = read_image(source_path).pixels.astype(np.float64) / 255
    return _block_drift(out if out.ndim == 3 else out[:, :, None], src if src.ndim == 3 else src[:, :, None])


def test_the_cli_option_reaches_the_pipeline_and_the_manifest(drifting_model, wall, tmp_path):
    import json

    from texup.cli.main import main

    out = tmp_path / "out"
    base = ["upscale", str(wall), "-o", str(out), "--model", str(drifting_model), "--engine", "torch"]
    assert main([*base, "--color-fix", "off"]) == 0
    drift_off = _drift_of(out / "wall_x4.png", wall)
    entry = json.loads((out / ".texup" / "outputs.json").read_text())["files"]["wall_x4.png"]
    assert entry["options"]["color_fix"] == "off"
    assert main([*base, "--color-fix", "on"]) == 0  # a pixel option changed: redone in place
    entry = json.loads((out / ".texup" / "outputs.json").read_text())["files"]["wall_x4.png"]
    assert entry["options"]["color_fix"] == "on"
    drift_on = _drift_of(out / "wall_x4.png", wall)
    assert drift_off > 0.02 and drift_on < 0.25 * drift_off
    with pytest.raises(SystemExit):
        main([*base, "--color-fix", "sometimes"])


def test_the_worker_option_reaches_the_pipeline(drifting_model, wall, tmp_path):
    import sys
    from pathlib import Path

    from workerutil import collect

    from texup.worker.protocol import ProtocolError, parse_options

    assert parse_options({"color_fix": "off"}).color_fix == "off" and parse_options({}).color_fix == "auto"
    with pytest.raises(ProtocolError, match="color_fix"):
        parse_options({"color_fix": "sometimes"})

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "blender_addon"))
    from bridge.client import WorkerClient
    from bridge.worker_protocol import Done, Job, JobItem, JobOptions, Result

    client = WorkerClient(sys.executable, args=("-m", "texup", "worker", "--device", "cpu"))
    client.start(timeout=120)
    try:
        drift = {}
        for fix in ("off", "on"):
            dst = tmp_path / fix / "wall_x4.png"
            dst.parent.mkdir()
            options = JobOptions(model=str(drifting_model), engine="torch", color_fix=fix)
            assert options.to_json().get("color_fix") == fix
            job_id = client.submit(Job(options=options, items=(JobItem("wall", str(wall), str(dst)),)))
            events = collect(client, lambda e, job_id=job_id: isinstance(e, Done) and e.id == job_id, timeout=120)
            assert [e.item for e in events if isinstance(e, Result)] == ["wall"], events
            drift[fix] = _drift_of(dst, wall)
    finally:
        client.stop()
    assert drift["off"] > 0.02 and drift["on"] < 0.25 * drift["off"]
    assert "color_fix" not in JobOptions().to_json()  # "auto" is not sent: older workers take the job
