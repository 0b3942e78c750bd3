"""Choosing textures, building worker jobs, following events, and the headless report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge.client import WorkerClient  # noqa: E402
from bridge.jobs import (  # noqa: E402
    JobTracker,
    TextureInfo,
    build_job,
    choose_textures,
    exit_code,
    left_out_rows,
    report_document,
    report_rows,
    sort_textures,
    unknown_names,
    write_report,
)
from bridge.worker_protocol import Crashed, Done, Error, JobOptions, Progress, Result  # noqa: E402

FAKE = str(Path(__file__).with_name("fake_worker.py"))


def tex(name: str, path: str = "", size=(512, 512), role="color", source="file", **kw) -> TextureInfo:
    return TextureInfo(name=name, filepath=path, size=size, role=role, colorspace="sRGB", source=source, **kw)


@pytest.fixture
def scene(tmp_path):
    """A scanned scene: files on disk, a UDIM image with 2 tiles, a missing file, packed and generated images."""
    folder = tmp_path / "textures"
    (folder / "other").mkdir(parents=True)
    for name in ("wall.png", "other/wall.png", "rough.tga", "tiles.1001.png", "tiles.1002.png"):
        (folder / name).write_bytes(b"img")
    return [
        tex("Wall", str(folder / "wall.png"), (1024, 512)),
        tex("Wall.001", str(folder / "other" / "wall.png"), (256, 256)),
        tex("Rough", str(folder / "rough.tga"), (512, 2048), role="data"),
        tex("Normal", str(folder / "gone_normal.png"), (0, 0), role="normal", source="missing", status="missing"),
        tex("Tiles", str(folder / "tiles.<UDIM>.png"), (128, 128), source="udim", udim_tiles=(1001, 1002)),
        tex("Packed", "", (64, 64), source="packed"),
        tex("Noise", "", (64, 64), source="generated"),
        tex("Wall_x4", str(folder / "wall_x4.png"), (4096, 2048), status="upscaled"),
    ]


def names(textures) -> list[str]:
    return [t.name for t in textures]


def test_texture_info_refuses_unknown_role_source_status():
    with pytest.raises(ValueError, match="role"):
        tex("a", role="albedo")
    with pytest.raises(ValueError, match="source"):
        tex("a", source="movie")
    with pytest.raises(ValueError, match="status"):
        tex("a", status="done")


def test_choose_filters(scene):
    # "At most": a 512 px image passes a 512 limit, in the panel and in --max-size alike.
    assert names(choose_textures(scene, max_size=511)) == ["Wall.001", "Normal", "Tiles", "Packed", "Noise"]
    assert names(choose_textures(scene, max_size=512)) == ["Wall.001", "Normal", "Tiles", "Packed", "Noise"]
    assert names(choose_textures(scene, max_size=1024, roles={"color"})) == [
        "Wall",
        "Wall.001",
        "Tiles",
        "Packed",
        "Noise",
    ]
    assert names(choose_textures(scene, roles=["data", "normal"])) == ["Rough", "Normal"]
    assert names(choose_textures(scene, names={"Rough", "Wall"})) == ["Wall", "Rough"]
    assert "Wall_x4" in names(choose_textures(scene, include_upscaled=True))
    assert "Wall_x4" not in names(choose_textures(scene))
    with pytest.raises(ValueError, match="alpha"):
        choose_textures(scene, roles={"alpha"})
    assert unknown_names(scene, ["Wall", "Nope"]) == ["Nope"]


def test_build_job_items_names_and_skips(scene, tmp_path):
    out = tmp_path / "out"
    plan = build_job(choose_textures(scene), JobOptions(model="m", scale=4), str(out))
    by_tex = {o.texture: o for o in plan.outputs}
    # same file name in two folders -> two distinct outputs
    assert by_tex["Wall"].dst == str(out / "wall_x4.png")
    assert by_tex["Wall.001"].dst == str(out / "wall_x4_2.png")
    assert by_tex["Rough"].dst == str(out / "rough_x4.tga")
    # UDIM: one item per tile, result is a UDIM pattern with the same tile numbers
    assert by_tex["Tiles"].dst == str(out / "tiles_x4.<UDIM>.png")
    tiles = [i for i in plan.job.items if i.key in by_tex["Tiles"].item_keys]
    assert [(Path(i.src).name, Path(i.dst).name) for i in tiles] == [
        ("tiles.1001.png", "tiles_x4.1001.png"),
        ("tiles.1002.png", "tiles_x4.1002.png"),
    ]
    assert {i.role for i in plan.job.items if i.key in by_tex["Rough"].item_keys} == {"data"}
    skipped = {s.texture: s.reason for s in plan.skipped}
    assert set(skipped) == {"Normal", "Packed", "Noise"}
    assert "gone_normal.png" in skipped["Normal"]
    assert len({i.key for i in plan.job.items}) == len(plan.job.items) == 5


def test_packed_and_generated_use_extracted_files(scene, tmp_path):
    tmp = tmp_path / "extract"
    tmp.mkdir()
    (tmp / "packed.exr").write_bytes(b"x")
    (tmp / "noise.png").write_bytes(b"x")
    chosen = choose_textures(scene, names={"Packed", "Noise"})
    plan = build_job(
        chosen,
        JobOptions(),
        str(tmp_path / "o"),
        name_scale=2,
        extracted={"Packed": str(tmp / "packed.exr"), "Noise": str(tmp / "noise.png")},
    )
    assert plan.skipped == ()
    assert [Path(o.dst).name for o in plan.outputs] == ["Packed_x2.exr", "Noise_x2.png"]
    assert [i.src for i in plan.job.items] == [str(tmp / "packed.exr"), str(tmp / "noise.png")]


def test_a_file_that_vanished_since_the_scan_is_skipped(scene, tmp_path):
    Path(scene[2].filepath).unlink()
    plan = build_job(choose_textures(scene, names={"Rough", "Tiles"}), JobOptions(), str(tmp_path / "o"))
    assert [s.texture for s in plan.skipped] == ["Rough"] and "rough.tga" in plan.skipped[0].reason
    Path(scene[4].filepath.replace("<UDIM>", "1002")).unlink()
    plan = build_job(choose_textures(scene, names={"Tiles"}), JobOptions(), str(tmp_path / "o"))
    assert [s.texture for s in plan.skipped] == ["Tiles"] and "tiles.1002.png" in plan.skipped[0].reason


def _plan(scene, tmp_path):
    return build_job(choose_textures(scene, names={"Wall", "Tiles"}), JobOptions(), str(tmp_path / "o"))


def test_tracker_udim_is_ok_only_when_every_tile_is_written(scene, tmp_path):
    plan = _plan(scene, tmp_path)
    wall, tiles = plan.outputs
    tracker = JobTracker(plan, job_id="j")
    tracker.apply(Progress("j", wall.item_keys[0], 0, 3, 1, 2))
    assert 0 < tracker.fraction < 1 and "Wall" in tracker.status_text()
    tracker.apply(Result("j", wall.item_keys[0], wall.dst, 4096, 2048, 1.5))
    tracker.apply(Result("other-job", tiles.item_keys[0], "x", 1, 1, 1.0))  # not ours: ignored
    tracker.apply(Result("j", tiles.item_keys[0], "t1", 512, 512, 1.0))
    tracker.apply(Error("j", tiles.item_keys[1], "ImageReadError", "tiles.1002.png: truncated"))
    tracker.apply(Done("j", 2, 1, False))
    assert tracker.finished and tracker.fraction == 1.0
    assert tracker.outcomes["Wall"].status == "ok" and tracker.outcomes["Wall"].width == 4096
    assert tracker.outcomes["Tiles"].status == "failed"
    assert "truncated" in tracker.outcomes["Tiles"].errors[0]


def test_tracker_cancel_crash_and_job_errors(scene, tmp_path):
    plan = _plan(scene, tmp_path)
    cancelled = JobTracker(plan, job_id="j")
    cancelled.apply(Result("j", plan.outputs[0].item_keys[0], "w", 4, 4, 0.1))
    cancelled.apply(Done("j", 1, 0, True))
    assert [o.status for o in cancelled.outcomes.values()] == ["ok", "cancelled"]
    assert "cancelled" in cancelled.status_text()

    crashed = JobTracker(plan, job_id="j")
    crashed.apply(Crashed(returncode=-9, stderr_tail="Killed"))
    assert {o.status for o in crashed.outcomes.values()} == {"failed"}
    assert "exit code -9" in crashed.outcomes["Wall"].errors[0]

    no_model = JobTracker(plan, job_id="j")
    no_model.apply(Error("j", None, "UnknownModelError", "no model named 'x'"))
    no_model.apply(Done("j", 0, 3, False))
    assert all("no model named" in o.errors[0] for o in no_model.outcomes.values())


def test_report_rows_exit_code_and_file(scene, tmp_path):
    chosen = choose_textures(scene, names={"Wall", "Normal"})
    plan = build_job(chosen, JobOptions(), str(tmp_path / "o"))
    tracker = JobTracker(plan, job_id="j")
    tracker.apply(Result("j", plan.outputs[0].item_keys[0], plan.outputs[0].dst, 4096, 2048, 2.25))
    tracker.apply(Done("j", 1, 0, False))
    rows = report_rows(chosen, tracker, plan)
    assert rows[0] == {
        "name": "Wall",
        "role": "color",
        "source": "file",
        "input_size": [1024, 512],
        "output_size": [4096, 2048],
        "output_path": plan.outputs[0].dst,
        "seconds": 2.25,
        "status": "ok",
        "error": None,
    }
    # Normal's file was already missing: a known gap (skipped), not a failure -- unless the run is strict
    assert rows[1]["status"] == "skipped" and rows[1]["missing"] and "gone_normal.png" in rows[1]["error"]
    assert exit_code(rows) == 0 and exit_code(rows, strict=True) == 1 and exit_code(rows[:1], strict=True) == 0
    assert exit_code([*rows, dict(rows[0], status="failed")]) == 1
    assert exit_code([dict(rows[0], status="up_to_date")], strict=True) == 0
    path = write_report(str(tmp_path / "r" / "report.json"), report_document(rows, blend_file="scene.blend"))
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    assert (doc["ok"], doc["failed"], doc["skipped"], doc["blend_file"]) == (1, 0, 1, "scene.blend")
    assert [r["name"] for r in doc["images"]] == ["Wall", "Normal"]
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["report.json"]


def test_plan_to_fake_worker_to_report(scene, tmp_path):
    """The whole bpy-free path: scan result -> job -> worker events -> outcomes -> report."""
    chosen = choose_textures(scene, names={"Wall", "Tiles", "Normal"})
    plan = build_job(chosen, JobOptions(scale=4), str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    with WorkerClient(sys.executable, args=(FAKE, "normal")) as client:
        client.start(timeout=20)
        tracker = JobTracker(plan, job_id=client.submit(plan.job))
        deadline = time.monotonic() + 20
        while not tracker.finished and time.monotonic() < deadline:
            for event in client.poll(timeout=0.2):
                tracker.apply(event)
    assert tracker.finished
    rows = {r["name"]: r for r in report_rows(chosen, tracker, plan)}
    assert rows["Wall"]["status"] == rows["Tiles"]["status"] == "ok"
    assert rows["Normal"]["status"] == "skipped" and rows["Normal"]["missing"]
    assert rows["Tiles"]["output_path"].endswith("tiles_x4.<UDIM>.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "tiles_x4.1001.png",
        "tiles_x4.1002.png",
        "wall_x4.png",
    ]


def test_everything_a_filter_leaves_out_is_reported_with_the_reason(scene, tmp_path):
    chosen, left_out = sort_textures(scene, max_size=512, roles={"color", "normal"})
    assert names(chosen) == ["Wall.001", "Normal", "Tiles", "Packed", "Noise"]
    reasons = {t.name: r for t, r in left_out}
    assert set(reasons) == {"Wall", "Rough", "Wall_x4"}  # every scanned texture is either chosen or reported
    assert "1024 px > 512 px" in reasons["Wall"] and "2048 px > 512 px" in reasons["Rough"]
    assert "already the result" in dict((t.name, r) for t, r in sort_textures(scene)[1])["Wall_x4"]
    assert names(sort_textures(scene, max_size=512)[0]) == names(choose_textures(scene, max_size=512))
    rows = left_out_rows(left_out)
    doc = report_document(rows)
    assert doc["skipped"] == 3 and doc["failed"] == 0 and exit_code(rows) == 0
    assert rows[0] == {"name": "Wall", "status": "skipped", "reason": reasons["Wall"], "size": [1024, 512]}


def test_reports_get_normal_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_report(str(tmp_path / "r" / "report.json"), report_document([]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["report.json"]  # no temp file left
