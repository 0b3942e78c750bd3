"""Fine-tuning's Blender-free parts: run folders, the dataset plan, and following a train job's events."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge.jobs import TextureInfo  # noqa: E402
from bridge.train_plan import TrainTracker, plan_dataset, run_folders, run_name  # noqa: E402
from bridge.worker_protocol import Crashed, Done, Error, Message, Progress, Result  # noqa: E402


def tex(name: str, path: str = "", source: str = "file", **kw) -> TextureInfo:
    return TextureInfo(name=name, filepath=path, size=(64, 64), role="color", colorspace="sRGB", source=source, **kw)


def test_run_names_are_dated_and_never_reused(tmp_path):
    first = run_name(now=0.0)
    assert first.startswith("run_") and len(first) == len("run_YYYYmmdd_HHMMSS")
    assert run_name(now=0.0, existing={first}) == first + "_2"
    assert run_name(now=0.0, existing={first, first + "_2"}) == first + "_3"
    data, model = run_folders(str(tmp_path / "texup_training"), first)
    assert data == os.path.join(str(tmp_path), "texup_training", first, "data")
    assert model == os.path.join(str(tmp_path), "texup_training", first, "model")


def test_dataset_plan_names_every_usable_texture_once(tmp_path):
    data = str(tmp_path / "data")
    infos = [
        tex("Brick", "/tex/brick.png"),
        tex("Brick.001", "/other/brick.PNG"),  # same stem from another folder: renamed, not overwritten
        tex("Wall", "/tex/wall.<UDIM>.tif", source="udim", udim_tiles=(1001, 1002)),
        tex("Ziegel/Ä", "", source="packed"),
        tex("Noise", "", source="generated"),
        tex("Gone", "/tex/gone.png", source="missing", status="missing"),
        tex("Rough", "/tex/rough.exr"),
    ]
    plan = plan_dataset(infos, data)
    rows = [(f.texture, f.src, os.path.basename(f.dst)) for f in plan.files]
    assert rows == [
        ("Brick", "/tex/brick.png", "brick.png"),
        ("Brick.001", "/other/brick.PNG", "brick_2.png"),
        ("Wall", "/tex/wall.1001.tif", "wall_1001.tif"),
        ("Wall", "/tex/wall.1002.tif", "wall_1002.tif"),
        ("Ziegel/Ä", "", "Ziegel_Ä.png"),
        ("Noise", "", "Noise.png"),
        ("Rough", "/tex/rough.exr", "rough.exr"),
    ]
    assert all(os.path.dirname(f.dst) == data for f in plan.files)
    assert plan.skipped == [("Gone", "its file is missing")]
    assert plan.textures == ["Brick", "Brick.001", "Wall", "Ziegel/Ä", "Noise", "Rough"]


def test_tracker_follows_progress_to_a_model():
    tracker = TrainTracker("t", steps=300)
    assert tracker.progress == 0.0 and "preparing" in tracker.message
    tracker.handle(Progress("other", "train", 0, 1, 200, 300, loss=1.0))  # another job: ignored
    tracker.handle(Message("t", "data: 5 training and 0 held-out images from /d (1 tileable)"))
    tracker.handle(Message("other", "not ours"))
    assert tracker.notes == ["data: 5 training and 0 held-out images from /d (1 tileable)"]
    tracker.handle(Progress("t", "train", 0, 1, 1, 300, loss=0.25))
    assert "step 1/300" in tracker.message and "loss 0.25" in tracker.message and "left" not in tracker.message
    tracker.handle(Progress("t", "train", 0, 1, 75, 300, loss=0.125, eta_s=125.0))
    assert tracker.progress == 0.25 and "about 2 min 05 s left" in tracker.message
    tracker.handle(
        Result("t", "train", "/run/model/model.safetensors", 0, 0, 40.0, steps=300, psnr_before=24.0, psnr_after=25.5)
    )
    assert not tracker.finished and not tracker.succeeded
    tracker.handle(Done("t", 1, 0, False))
    assert tracker.succeeded and tracker.model_path == "/run/model/model.safetensors" and tracker.progress == 1.0
    assert tracker.summary() == ("texup: fine-tuned 300 steps -> model.safetensors (held-out PSNR 24.00 -> 25.50 dB)")


def test_tracker_cancel_error_and_crash_give_no_model():
    cancelled = TrainTracker("t", steps=300)
    cancelled.handle(Progress("t", "train", 0, 1, 12, 300, loss=0.5))
    cancelled.handle(Result("t", "train", "/run/model.safetensors", 0, 0, 3.0, steps=12))
    cancelled.handle(Done("t", 1, 0, True))
    assert cancelled.finished and not cancelled.succeeded and "cancelled at step 12" in cancelled.summary()

    failed = TrainTracker("t", steps=10)
    failed.handle(Error("t", None, "ValueError", "/data: no usable training images (0 image files found)"))
    failed.handle(Done("t", 0, 1, False))
    assert not failed.succeeded and "no usable training images" in failed.summary()

    crashed = TrainTracker("t", steps=10)
    crashed.handle(Crashed(returncode=-9, stderr_tail="Killed"))
    assert crashed.finished and not crashed.succeeded and "exit code -9" in crashed.summary()
