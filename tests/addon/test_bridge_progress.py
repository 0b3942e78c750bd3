"""Progress and ETA of a running job (bridge.jobs.JobTracker) from fake worker events and a fake clock:
what the panel's bar, the status bar and the headless script's lines show."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge.jobs import (  # noqa: E402
    JobTracker,
    TextureInfo,
    build_job,
    estimate_eta,
    filter_reason,
    format_duration,
    sort_textures,
)
from bridge.worker_protocol import Done, JobOptions, Progress, Result  # noqa: E402

TileProgress = Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tex(name: str, path: str, size, **kw) -> TextureInfo:
    return TextureInfo(name=name, filepath=path, size=size, role="color", colorspace="sRGB", source="file", **kw)


@pytest.fixture
def plan(tmp_path):
    """A 512x512 texture, then a 256x256 one (a quarter of the pixels), then a 2-tile UDIM of 256x256."""
    for name in ("big.png", "small.png", "wall.1001.png", "wall.1002.png"):
        (tmp_path / name).write_bytes(b"img")
    textures = [
        tex("big", str(tmp_path / "big.png"), (512, 512)),
        tex("small", str(tmp_path / "small.png"), (256, 256)),
        TextureInfo(
            name="wall",
            filepath=str(tmp_path / "wall.<UDIM>.png"),
            size=(256, 256),
            role="color",
            colorspace="sRGB",
            source="udim",
            udim_tiles=(1001, 1002),
        ),
    ]
    return build_job(textures, JobOptions(), str(tmp_path / "out"))


def keys(plan) -> list[str]:
    return [item.key for item in plan.job.items]


def test_fraction_moves_within_a_tile_and_weighs_files_by_pixels(plan):
    big, small, wall1, wall2 = keys(plan)
    tracker = JobTracker(plan, job_id="j", clock=Clock())
    # 7 units of pixels: big 4, small 1, each wall tile 1.
    tracker.apply(TileProgress("j", big, 0, 4, 0, 1))
    assert tracker.fraction == 0.0
    tracker.apply(TileProgress("j", big, 0, 4, 0, 1, tile_fraction=0.5))  # one tile, half done
    assert tracker.fraction == pytest.approx(0.5 * 4 / 7)
    assert tracker.item_fraction == pytest.approx(0.5)
    tracker.apply(TileProgress("j", big, 0, 4, 0, 1, tile_fraction=0.25))  # an older report: never backwards
    assert tracker.fraction == pytest.approx(0.5 * 4 / 7)
    tracker.apply(Result("j", big, "big_x4.png", 2048, 2048, 3.0))
    assert tracker.fraction == pytest.approx(4 / 7) and tracker.item_fraction == 1.0
    tracker.apply(TileProgress("j", small, 1, 4, 1, 4, tile_fraction=0.5))
    assert tracker.fraction == pytest.approx((4 + 1.5 / 4) / 7)
    assert tracker.item_fraction == pytest.approx(1.5 / 4)  # a new file starts from its own progress
    tracker.apply(TileProgress("j", wall2, 3, 4, 2, 4))  # without tile_fraction: whole tiles only
    assert tracker.fraction == pytest.approx((6 + 0.5) / 7)
    tracker.apply(Done("j", 1, 0, True))
    assert tracker.fraction == 1.0 and tracker.finished


def test_eta_from_the_first_progress_event_none_until_meaningful(plan):
    big = keys(plan)[0]
    clock = Clock()
    tracker = JobTracker(plan, job_id="j", clock=clock)
    assert tracker.eta_s is None and tracker.elapsed == 0.0
    clock.now += 30.0  # the worker loads the model: not part of the estimate
    tracker.apply(TileProgress("j", big, 0, 4, 0, 1))
    clock.now += 0.5
    tracker.apply(TileProgress("j", big, 0, 4, 0, 1, tile_fraction=0.35))
    assert tracker.eta_s is None  # too early (under a second)
    clock.now += 1.5
    # 0.35 of 4/7 = 0.2 of the job took 2 s: 0.8 of it takes 8 s more.
    assert tracker.fraction == pytest.approx(0.2)
    assert tracker.eta_s == pytest.approx(8.0)
    clock.now += 2.0  # no news for 2 s: the estimate grows instead of counting down a stale rate
    assert tracker.eta_s == pytest.approx(4.0 * 0.8 / 0.2)
    tracker.abandon()
    assert tracker.eta_s == 0.0


def test_estimate_and_duration_format():
    assert estimate_eta(0.5, 0.5) is None  # too early
    assert estimate_eta(10.0, 0.005) is None  # too little progress
    assert estimate_eta(10.0, 0.25) == pytest.approx(30.0)
    assert estimate_eta(10.0, 0.6, start_fraction=0.5) == pytest.approx(40.0)
    assert estimate_eta(10.0, 1.0) == 0.0
    assert [format_duration(s) for s in (None, 0, 42.4, 65, 3599, 3725)] == [
        "--",
        "0s",
        "42s",
        "1m05s",
        "59m59s",
        "1h02m",
    ]


def test_status_text_and_log_line_name_the_file_its_progress_and_the_eta(plan):
    clock = Clock()
    big, small, wall1, wall2 = keys(plan)
    tracker = JobTracker(plan, job_id="j", clock=clock)
    assert tracker.progress_line() == "0/4 waiting for the worker (job 0%)"
    tracker.apply(TileProgress("j", wall1, 2, 4, 0, 5))
    clock.now += 4.0
    tracker.apply(TileProgress("j", wall1, 2, 4, 2, 5))  # 2/5 of a 1/7 file after 4 s -> 5/7+... of the job
    assert tracker.status_text().startswith("Upscaling wall (3/4, 40%) ETA ")
    assert tracker.progress_line().startswith("3/4 wall.1001.png 40% (job ")
    assert "ETA " in tracker.progress_line() and "--" not in tracker.progress_line()
    assert tracker.how_far() == f"{int(tracker.fraction * 100)}% of the job, 0 of 4 files written"


def test_abandon_keeps_what_was_written_and_cancels_the_rest(plan):
    big, small, _, _ = keys(plan)
    tracker = JobTracker(plan, job_id="j")
    tracker.apply(Result("j", big, "big_x4.png", 2048, 2048, 3.0))
    tracker.abandon()
    assert tracker.finished and tracker.cancelled
    assert {t: o.status for t, o in tracker.outcomes.items()} == {
        "big": "ok",
        "small": "cancelled",
        "wall": "cancelled",
    }
    tracker.apply(Result("j", small, "small_x4.png", 1024, 1024, 1.0))  # too late: ignored
    assert tracker.outcomes["small"].status == "cancelled"


def test_size_limit_is_at_most_n_everywhere(tmp_path):
    assert filter_reason((512, 256), "color", max_size=512) is None
    assert "513 px > 512 px" in filter_reason((513, 8), "color", max_size=512)
    assert "role data" in filter_reason((8, 8), "data", roles={"color"})
    textures = [tex("a", "", (512, 512)), tex("b", "", (513, 64))]
    chosen, left_out = sort_textures(textures, max_size=512)
    assert [t.name for t in chosen] == ["a"]
    assert [(t.name, r) for t, r in left_out] == [("b", filter_reason((513, 64), "color", max_size=512))]


def test_the_bridge_parses_tile_fraction_from_a_worker_line():
    from bridge.worker_protocol import parse_event

    event = parse_event(
        '{"type": "progress", "id": "j", "item": "a", "index": 0, "count": 1, "done": 2, '
        '"total": 4, "tile_fraction": 0.5}'
    )
    assert event.tile_fraction == 0.5
    assert (
        parse_event(
            '{"type": "progress", "id": "j", "item": "a", "index": 0, "count": 1, "done": 2, "total": 4}'
        ).tile_fraction
        is None
    )
