"""Texts that fit the sidebar (bridge/text_fit.py, bridge/health.py's panel lines): every line fits its
pixel budget, wrapping loses no word, shortened names keep their distinctive end, a worker error's fix is
always shown whole, and Upscale names the reason it is blocked. Plain pytest (no Blender); the bpy tests
draw the real panel with these and measure the drawn labels with Blender's own font code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge import client, health  # noqa: E402
from bridge.health import HealthReport, compact_status_lines, split_fix, upscale_blocked_reason  # noqa: E402
from bridge.text_fit import (  # noqa: E402
    DEFAULT_SIDEBAR_WIDTH,
    ELLIPSIS,
    Sidebar,
    fit_middle,
    text_width,
    wrap_lines,
)

# Widths Blender's blf.dimensions gave at 11 px (font 0): (Blender 5.0.1 Inter, Blender 3.4.1 DejaVu Sans).
MEASURED = {
    "brick_wall_diffuse_2k.png": (136, 127),
    "Worker: texup 0.1.0": (104, 100),
    "MMMMMMMMMM": (100, 90),
    "iiiiiiiiii": (30, 30),
}

ERRORS = [  # every "no usable worker" message the add-on makes, as its modules word them
    f"the worker Python '/nonexistent/python' does not exist: {client.SETTING_HINT}",
    f"the worker Python /bin is not an executable program: {client.SETTING_HINT}",
    "no texup worker: this copy of the add-on has no bundled engine (a source build, or Blender 3.x), "
    "TEXUP_PYTHON is not set and no texup command is on PATH. Install the texup extension zip for your "
    f"platform in Blender 4.2+, or name the python of an environment with texup installed: {client.SETTING_HINT}",
    'the Python at /usr/bin/python3 has no texup: install it there (`"/usr/bin/python3" -m pip install '
    f"PATH/TO/texup`, the source folder) or {client.SETTING_HINT}",
    "the worker Python '/x/python' does not exist: set 'Worker Python' in the texup preferences",
]

DEFAULT = Sidebar(DEFAULT_SIDEBAR_WIDTH, 1.0)


@pytest.mark.parametrize("text", sorted(MEASURED))
def test_the_estimate_is_never_narrower_than_blenders_fonts(text):
    assert text_width(text) >= max(MEASURED[text])
    assert text_width(text, 2.0) == 2 * text_width(text)
    assert text_width("漢字") >= 2 * 11  # outside the table: one em each


@pytest.mark.parametrize("width", [40, 90, 137, 300])
def test_wrapped_lines_fit_and_lose_no_word(width):
    text = (
        "texup: 7 upscaled, 1 failed (the worker did not stop within 5 s of the cancel and was restarted) "
        "/home/artist/projects/castle/textures_upscaled/brick_wall_diffuse_2k_x4.png"
    )
    lines = wrap_lines(text, width)
    assert len(lines) > 1
    assert all(text_width(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert wrap_lines("", width) == [] and wrap_lines("short", width) == ["short"]


def test_a_path_breaks_after_its_separators_and_max_lines_ends_in_an_ellipsis():
    lines = wrap_lines("/tmp/ui/very/long/folder/textures_upscaled", 100)
    assert lines[0].endswith("/") and all(text_width(line) <= 100 for line in lines)
    cut = wrap_lines("one two three four five six seven eight nine ten", 60, max_lines=2)
    assert len(cut) == 2 and cut[-1].endswith(ELLIPSIS) and all(text_width(line) <= 60 for line in cut)
    assert wrap_lines("a b c", 5, max_lines=0) == [ELLIPSIS]  # at least the sign that something is cut


def test_names_keep_their_distinctive_end():
    assert fit_middle("wall_x4", 100) == "wall_x4"  # fits: unchanged
    short = fit_middle("brick_wall_diffuse_2k.png", 90)
    assert short.startswith("brick") and short.endswith("_2k.png") and ELLIPSIS in short
    assert text_width(short) <= 90
    tight = fit_middle("T_Rock_Cliff_01_Normal_OpenGL.png", 100)
    assert tight.endswith("_OpenGL") and text_width(tight) <= 100  # the extension gives way to the part
    assert fit_middle("Material.001", 60).endswith(".001")
    assert fit_middle("x" * 40, 14) == ELLIPSIS and fit_middle("x" * 40, 5) == ""
    for width in range(12, 200, 7):
        name = "Castle_Gate_Wood_Planks_Roughness_4k.exr"
        assert text_width(fit_middle(name, width)) <= width


def test_the_list_row_gives_the_name_the_room_the_size_leaves():
    factor_square, room_square = DEFAULT.list_split("48")
    factor_wide, room_wide = DEFAULT.list_split("16000")
    assert 0.5 <= factor_wide < factor_square <= 0.9 and room_wide < room_square
    # The default sidebar's name column holds 11 characters of a typical name (the old panel cut after 7).
    assert room_square >= text_width("brick_wall_")
    assert Sidebar(400).list_split("48")[1] > room_square  # a wider sidebar: longer names
    assert Sidebar(440, 2.0).list_split("48")[1] == pytest.approx(2 * room_square, rel=0.01)


@pytest.mark.parametrize("error", ERRORS)
def test_the_fix_is_split_off_whole(error):
    problem, fix = split_fix(error)
    assert "Worker Python" in fix and "Worker Python" not in problem
    assert fix[0].isupper() and error.lower().endswith(fix.lower())
    assert problem and not problem.endswith(":")


def test_an_error_that_names_no_fix_gets_the_setting():
    problem, fix = split_fix("the worker (/usr/bin/python3) exited with code 1 before it was ready: boom")
    assert problem.endswith("boom") and "Worker Python" in fix and "Check Again" in fix


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("region", [DEFAULT_SIDEBAR_WIDTH, 300])
def test_the_panels_error_lines_fit_and_always_end_with_the_whole_fix(error, region):
    side = Sidebar(region)
    width = side.label(icon=True)
    lines = compact_status_lines(HealthReport(ok=False, error=error), width=width, measure=text_width, problem_lines=4)
    assert lines[0] == ("ERROR", "Worker not working:")
    assert all(text_width(text) <= width for _, text in lines)
    fix_at = next(i for i, (icon, _) in enumerate(lines) if icon == "PREFERENCES")
    fix = " ".join(text for _, text in lines[fix_at:])
    assert fix.replace(" ", "") == ("Fix: " + split_fix(error)[1]).replace(" ", "")  # whole, never cut
    assert 1 <= fix_at - 1 <= 4  # the problem: at most four lines
    assert all(icon != "CHECKMARK" for icon, _ in lines)


def test_the_ok_lines_fit_the_default_sidebar():
    from bridge.worker_protocol import DeviceInfo

    ok = HealthReport(
        ok=True,
        texup="0.1.0",
        torch="2.13.0+cu130",
        engines=("ncnn/vulkan:0/fp16",),
        devices=(DeviceInfo(key="vulkan:0", name="NVIDIA GeForce RTX 4090 Laptop GPU", engines=("ncnn",)),),
        auto="ncnn/vulkan:0/fp16",
    )
    width = DEFAULT.label(icon=True)
    lines = compact_status_lines(ok, width=width, measure=text_width)
    assert [icon for icon, _ in lines] == ["CHECKMARK", "BLANK1", "INFO"]
    assert all(text_width(text) <= width for _, text in lines)
    assert lines[2][1].startswith("Auto: ncnn on NVID") and lines[2][1].endswith(ELLIPSIS)


def test_upscale_is_blocked_only_by_a_finished_check_that_failed():
    bad = HealthReport(ok=False, error=ERRORS[0])
    assert upscale_blocked_reason(None) is None  # never checked (blender -b, or before the first draw)
    assert upscale_blocked_reason(bad, running=True) is None  # a new check is under way
    assert upscale_blocked_reason(HealthReport(ok=True, texup="0.1.0")) is None
    reason = upscale_blocked_reason(bad)
    assert reason is not None and "does not exist" in reason and "'Worker Python'" in reason
    fallback = upscale_blocked_reason(HealthReport(ok=False, error="boom"))
    assert fallback is not None and health.DEFAULT_FIX.split(",")[0][1:] in fallback
