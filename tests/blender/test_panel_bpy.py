"""The panel's data and the operators' run decisions inside Blender (the PyPI ``bpy`` module, background):
the texture list lives on the window manager (out of undo), fills itself on load and after undo, the
filters agree with the headless rule and name what they leave out, and a cancelled upscale ends within
2 s of the cancel with ``{'CANCELLED'}`` (the real worker, a model slow enough that one tile takes
several seconds).

Run with the bpy environment: ``TEXUP_PYTHON=$PWD/.venv/bin/python .venv-blender/bin/python -m pytest
tests/blender/test_panel_bpy.py``. Skipped where ``bpy`` cannot be imported (the main venv).
"""

from __future__ import annotations

import subprocess
import time

import pytest

bpy = pytest.importorskip("bpy")

import scene_builder  # noqa: E402  (tests/blender, put on sys.path by conftest)


@pytest.fixture(scope="module")
def addon():
    import blender_addon
    from blender_addon import service

    blender_addon.register()
    yield blender_addon
    service.stop_worker()
    blender_addon.unregister()


def rows() -> dict:
    return {item.name: item for item in bpy.context.window_manager.texup_list.textures}


def test_the_list_fills_itself_when_a_file_loads_and_a_saved_run_state_is_cleared(addon, tmp_path):
    scene_builder.build(str(tmp_path), with_missing=False)
    runtime = bpy.context.window_manager.texup_runtime
    runtime.running = True  # as a file saved during a run would say
    blend = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert rows() == {}  # the empty file's list: load_post refilled it (with nothing)
    bpy.ops.wm.open_mainfile(filepath=blend)  # no Refresh pressed
    listed = rows()
    assert {"color.png", "rough.png", "wall", "packed", "generated"} <= set(listed)
    assert listed["color.png"].width == 24 and listed["color.png"].role == "color"
    textures = bpy.context.window_manager.texup_list
    assert textures.scene_name == bpy.context.scene.name
    assert not bpy.context.window_manager.texup_runtime.running  # Upscale is not locked out


def test_rows_and_checkboxes_are_window_manager_data_that_undo_keeps(addon, tmp_path):
    """The checkboxes live on the window manager: Blender's UI pushes no undo step for window-manager
    properties, and undo restores the scene's data without touching them. (The bpy module cannot click a
    button, so the UI's own undo push is not driven here; what decides it -- the owner -- is checked.)"""
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.texup.refresh()
    wm = bpy.context.window_manager
    item = rows()["color.png"]
    assert item.id_data == wm and not hasattr(bpy.types.Scene.bl_rna.properties["texup"], "textures")
    settings = bpy.context.scene.texup
    bpy.ops.ed.undo_push(message="before")
    settings.tile = 64  # a run setting: scene data, undone
    rows()["rough.png"].selected = True  # a checkbox: not undone
    bpy.ops.ed.undo_push(message="after")
    bpy.ops.ed.undo()
    assert bpy.context.scene.texup.tile == 0
    after = rows()
    assert len(after) >= 8 and after["rough.png"].selected  # undo never empties the list


def test_the_list_follows_undo_of_a_change_to_the_scene(addon, tmp_path):
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.texup.refresh()
    bpy.ops.ed.undo_push(message="base")
    extra = bpy.data.images.load(scene_builder.write_png(str(tmp_path / "extra.png"), 8, 8, 3))
    node = bpy.data.materials["Mat.A"].node_tree.nodes.new("ShaderNodeTexImage")
    node.image = extra
    bpy.ops.ed.undo_push(message="extra texture")
    bpy.ops.texup.refresh()
    assert "extra.png" in rows()
    bpy.ops.ed.undo()  # the node and image are gone again: undo_post refreshed the list
    assert "extra.png" not in rows() and "color.png" in rows()


def test_panel_filters_use_the_headless_rule_and_name_what_they_leave_out(addon, tmp_path):
    from blender_addon import scene
    from blender_addon.bridge.jobs import sort_textures
    from blender_addon.operators import chosen_names, left_out, passes_filters

    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.texup.refresh()
    settings = bpy.context.scene.texup
    settings.use_size_filter, settings.max_size, settings.role_filter = True, 20, "color"
    shown = {item.name for item in bpy.context.window_manager.texup_list.textures if passes_filters(settings, item)}
    chosen, headless_left_out = sort_textures(scene.scan(), max_size=20, roles={"color"}, include_upscaled=True)
    assert shown == {t.name for t in chosen}
    assert dict(left_out(bpy.context)) == {t.name: why for t, why in headless_left_out}
    assert dict(left_out(bpy.context, short=True))["color.png"] == "24 > 20 px"
    assert "role data" in dict(left_out(bpy.context, short=True))["rough.png"]
    assert settings.max_size == max(bpy.data.images["grouptex.png"].size) + 8  # 12 px passes "at most 20"
    for item in bpy.context.window_manager.texup_list.textures:
        item.selected = True
    assert set(chosen_names(bpy.context, "")) == shown  # Upscale takes only what the filters show


def test_runs_block_only_in_background_or_without_a_window():
    from blender_addon.operators import runs_blocking

    assert runs_blocking(background=True, windows=1)  # blender -b, the bpy module
    assert runs_blocking(background=False, windows=0)
    assert not runs_blocking(background=False, windows=1)  # Repeat Last, scripts in a UI session: modal


def test_tooltips_explain_tile_zero_and_the_empty_model(addon):
    props = bpy.types.Scene.bl_rna.properties["texup"].fixed_type.properties
    assert "0: automatic" in props["tile"].description
    model = props["model"].description
    assert "Empty: the Default Model of the add-on preferences" in model and "realesrgan-x4plus" in model
    assert "at most" in props["use_size_filter"].description
    # No "Adjust Last Operation" panel that would re-run a whole upscale: its one property is hidden.
    assert bpy.ops.texup.upscale.get_rna_type().properties["images"].is_hidden


@pytest.fixture(scope="module")
def slow_model(worker_python: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random x4 RRDBNet big enough that one 256x256 tile takes several seconds on a small CPU."""
    path = tmp_path_factory.mktemp("slow_model") / "slow_x4.safetensors"
    code = (
        "import sys, torch; torch.manual_seed(0); from texup.archs import RRDBNet; "
        "from texup.weights import save_model; "
        "save_model(RRDBNet(num_feat=64, num_block=4, num_grow_ch=32, scale=4), sys.argv[1])"
    )
    subprocess.run([worker_python, "-c", code, str(path)], check=True, timeout=300)
    return str(path)


def test_cancel_mid_tile_ends_the_upscale_within_two_seconds_as_cancelled(
    addon, monkeypatch, worker_python, slow_model, tmp_path
):
    """One 256x256 tile of a slow model: the cancel is sent at once, the worker stops inside the tile,
    the operator returns CANCELLED (no redo panel) within 2 s, nothing is changed or left on disk."""
    from blender_addon import service
    from blender_addon import session as session_module

    monkeypatch.setenv("TEXUP_PYTHON", worker_python)
    service.stop_worker()
    scene_builder.build(str(tmp_path), with_missing=False)
    big = bpy.data.images.load(scene_builder.write_png(str(tmp_path / "big.png"), 256, 256, 3))
    mat = bpy.data.materials["Mat.D"]
    mat.node_tree.nodes.new("ShaderNodeTexImage").image = big
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    settings = bpy.context.scene.texup
    settings.model, settings.tile, settings.seamless = slow_model, 256, "off"

    seen: dict = {}
    step = session_module.UpscaleSession.step

    def step_then_cancel_inside_the_tile(self, wait: float = 0.0) -> bool:
        finished = step(self, wait)
        tracker = self.run.tracker
        if tracker is not None and tracker.current_item is not None and "running_at" not in seen:
            seen["running_at"] = time.monotonic()  # the tile has started
        if "running_at" in seen and not self.cancel_sent and time.monotonic() - seen["running_at"] > 1.5:
            seen["session"] = self
            seen["cancel_at"] = time.monotonic()
            self.request_cancel()  # what Esc and the Cancel button do
        return finished

    monkeypatch.setattr(session_module.UpscaleSession, "step", step_then_cancel_inside_the_tile)
    result = bpy.ops.texup.upscale(images="big.png")
    ended = time.monotonic()

    assert "cancel_at" in seen, "the job ended before the cancel"
    assert result == {"CANCELLED"}
    assert ended - seen["cancel_at"] < 2.0, f"the cancel took {ended - seen['cancel_at']:.1f} s"
    session = seen["session"]
    assert not session.worker_stopped  # the worker itself confirmed the cancel (done, cancelled)
    assert session.run.tracker.cancelled and session.run.rows[0]["status"] == "cancelled"
    assert "big_x4" not in bpy.data.images
    out = tmp_path / "textures_upscaled"
    assert not out.exists() or not any(out.iterdir())
    assert "cancelled" in bpy.context.window_manager.texup_runtime.last_summary
    service.stop_worker()


def test_the_engine_and_device_preferences_reach_the_workers_job(addon, tmp_path, monkeypatch):
    from blender_addon import preferences, scene
    from blender_addon.operators import run_settings
    from blender_addon.upscale_run import UpscaleRun

    class Prefs:  # the AddonPreferences' fields run_settings reads
        device = "cpu"
        engine = "ncnn"
        output_dir = str(tmp_path / "out")
        default_model = "realesr-animevideov3"

    monkeypatch.setattr(preferences, "get_preferences", lambda context=None: Prefs())
    scene_builder.build(str(tmp_path), with_missing=False)
    settings = run_settings(bpy.context)
    assert (settings.device, settings.engine, settings.model) == ("cpu", "ncnn", "realesr-animevideov3")
    color = next(info for info in scene.scan() if info.name == "color.png")
    run = UpscaleRun([color], settings)
    try:
        job = run.prepare()
        job.validate()
        sent = job.options.to_json()
    finally:
        run.cleanup()
    assert (sent["device"], sent["engine"]) == ("cpu", "ncnn") and "layout" not in sent  # "auto" is not sent
    assert [e[0] for e in preferences.ENGINES] == ["auto", "ncnn", "torch"]
