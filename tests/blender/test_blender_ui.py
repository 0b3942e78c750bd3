"""The real UI: Blender 3.4.1 with a window under Xvfb. ``ui_screenshot.py`` opens the texup tab of the 3D
Viewport sidebar at its default width, waits for the list to fill itself (no Refresh), shows a worker that
does not work, runs Upscale the way Repeat Last and scripts do (``execute``), waits for it, takes
screenshots, then undoes and redoes a change to the scene. Checked here: with a broken worker the panel
shows the fix whole and Upscale is greyed out; execute started the modal operator and returned at once (no
frozen UI), the panel showed "starting the texup worker" while the worker started and progress after, the
textures were upscaled and relinked; every label the panel drew is no wider than the add-on's estimate
(Blender's own font code measures it), long names keep their ends; the list is drawn anew after undo and
redo; the screenshots were written.

Skipped when ``blender`` or ``xvfb-run`` is missing (``apt-get install -y blender xvfb``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

BLENDER = shutil.which("blender")
XVFB_RUN = shutil.which("xvfb-run")
pytestmark = [
    pytest.mark.skipif(
        BLENDER is None or XVFB_RUN is None,
        reason="needs blender and xvfb-run on PATH (apt-get install -y blender xvfb)",
    ),
    pytest.mark.slow,  # a real Blender window under xvfb
]

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "ui_screenshot.py"
BUILDER = HERE / "scene_builder.py"


def png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_upscale_from_the_panel_in_a_real_window(tmp_path: Path, worker_python: str, tiny_model: str) -> None:
    scene_dir = tmp_path / "scene"
    built = subprocess.run(
        [BLENDER, "-b", "--factory-startup", "--python", str(BUILDER), "--", str(scene_dir), "--missing"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    shot = tmp_path / "panel.png"
    env = dict(os.environ, TEXUP_PYTHON=worker_python)
    proc = subprocess.run(
        [
            XVFB_RUN,
            "-a",
            "-s",
            "-screen 0 1280x1024x24",
            BLENDER,
            "--factory-startup",
            "--enable-event-simulate",
            str(scene_dir / "scene.blend"),
            "--python",
            str(DRIVER),
            "--",
            tiny_model,
            str(shot),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=str(tmp_path),
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("UI_DONE ")), None)
    assert line is not None, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    done = json.loads(line[len("UI_DONE ") :])
    assert done["error"] is None, done["error"]
    assert done["phase"] == "done"

    # The texup tab was shown (its panel drew) in the sidebar at its default width; the list filled itself.
    assert done["panel_draws"] > 0 and 200 <= done["sidebar_width"] <= 260
    assert done["rows_before"] == 11  # every image node's image, the missing one too (and the two long names)

    # A Worker Python that does not exist: the error, its fix whole on lines of its own, Upscale greyed out.
    assert done["broken_check_ok"] is False and done["upscale_poll_broken"] is False
    broken = done["labels_broken"]
    assert broken[0] == "Worker not working:"
    fix_at = next(i for i, text in enumerate(broken) if text.startswith("Fix: "))
    fix = " ".join(broken[fix_at : fix_at + 5])
    assert "'Worker Python' in the texup add-on preferences" in fix, broken
    assert done["good_check"][0] is True and done["upscale_poll_good"] is True  # working again: Upscale too
    # Long names keep their beginning and their distinctive end; short ones are drawn whole.
    assert any(t.startswith("brick") and t.endswith("_2k") and "…" in t for t in broken), broken
    assert "color.png" in broken and "generated" in broken
    # Every label drawn is no wider than the add-on's estimate of it (blf, the UI font at the UI scale).
    narrower = {text: (estimate, real) for text, (_, estimate, real) in done["labels"].items() if estimate < real}
    assert not narrower, narrower
    assert done["summary"].removeprefix("texup: ") in done["labels_done"]  # the last run's summary, whole
    # Undo and redo of a change to the scene: the panel draws the list anew each time.
    assert done["probe_drawn"] and not done["probe_drawn_after_undo"] and done["probe_drawn_after_redo"]
    # Repeat Last's path (execute): it started the modal operator and returned at once, leaving no
    # operator of its own behind; the worker's start and the job happened under the modal operator.
    assert done["invoke_seconds"] < 1.0 and done["execute_result"] == ["CANCELLED"]
    assert done["seen_running"]
    assert done["last_operator"] == "TEXUP_OT_upscale"  # the modal run, finished, is what Repeat Last repeats
    assert done["messages"][0] == "starting the texup worker"
    assert any(m.startswith("Upscaling") for m in done["messages"])
    # missing.png is reported ("failed", or "missing" where missing sources are told apart), the rest done.
    assert done["summary"] in ("texup: 9 upscaled, 1 failed", "texup: 9 upscaled, 1 missing"), done["summary"]

    rows = {name: (status, w, h) for name, status, w, h in done["rows"]}
    assert rows["color_x4"] == ("upscaled", 96, 80)
    assert rows["rough_x4"] == ("upscaled", 80, 64)
    assert rows["missing.png"][0] == "missing"
    assert done["nodes"] == {
        "Mat.A": ["color_x4", "normal_x4", "rough_x4"],
        "Mat.B": ["color_x4", "leaf_x4"],
        "Mat.C": ["packed_src_x4"],
        "Mat.D": ["missing.png", "wall_x4"],
        "Mat.Long": ["T_Rock_Cliff_01_Normal_OpenGL_x4", "brick_wall_diffuse_2k_x4", "undo_probe.png"],  # redone
    }
    out = scene_dir / "textures_upscaled"
    assert {"color_x4.png", "rough_x4.png", "wall_x4.1001.png", "wall_x4.1002.png"} <= {p.name for p in out.iterdir()}

    # The screenshot: the sidebar crop, a real picture (not a blank frame).
    width, height = png_size(shot)
    assert width == done["sidebar_width"] + 60 and 600 <= height <= 1024, (width, height)
    assert shot.stat().st_size > 20_000
    error_shot = tmp_path / "panel_worker_error.png"
    assert png_size(error_shot) == (width, height) and error_shot.stat().st_size > 20_000
