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
    """A random x4 RRDBNet big enough that one 256x256 tile takes several seconds on a small CPU: 12 blocks took
    4.5 s in bf16 (8.6 s fp32) on a 2-vCPU EPYC Zen 4; 4 blocks (2.1 s) finished before the cancel there."""
    path = tmp_path_factory.mktemp("slow_model") / "slow_x4.safetensors"
    code = (
        "import sys, torch; torch.manual_seed(0); from texup.archs import RRDBNet; "
        "from texup.weights import save_model; "
        "save_model(RRDBNet(num_feat=64, num_block=12, num_grow_ch=32, scale=4), sys.argv[1])"
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
        if "running_at" in seen and not self.cancel_sent and time.monotonic() - seen["running_at"] > 1.0:
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
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))
    assert "cancelled" in bpy.context.window_manager.texup_runtime.last_summary
    service.stop_worker()


def test_the_engine_and_device_preferences_reach_the_workers_job(addon, tmp_path, monkeypatch):
    from blender_addon import preferences, properties, scene
    from blender_addon.operators import run_settings
    from blender_addon.upscale_run import UpscaleRun

    class Prefs:  # the AddonPreferences' fields run_settings reads
        device = "cpu"
        engine = "ncnn"
        output_dir = str(tmp_path / "out")
        default_model = "realesr-animevideov3"

    monkeypatch.setattr(properties, "get_preferences", lambda context=None: Prefs())
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
    assert [e[0] for e in preferences.ENGINES] == ["auto", "ncnn", "torch", "openvino"]  # options.ENGINE_LABELS' order


# --- the panel at the default sidebar width ---------------------------------------------------------------

LONG_NAMES = ("brick_wall_diffuse_2k.png", "T_Rock_Cliff_01_Normal_OpenGL.png")
# What Blender 3.4.1 gives a panel in its default sidebar, measured in its screenshots at scale 1 (the add-on's
# own budget, bridge/text_fit.py, keeps a little more room than these): content = region - 54, a list row =
# content - 19, a checkbox 20, an icon label's text 22 further in, text clipped 6 px before a label's end.
MODEL_CHROME, MODEL_LIST, MODEL_CHECKBOX, MODEL_ICON, MODEL_PAD, MODEL_BOX = 54, 19, 20, 22, 6, 10


class WidthLayout:
    """Stands in for ``bpy.types.UILayout``: records what is drawn as a tree, then gives every item the width
    Blender would (rows share their width, fixed-size checkboxes and icon buttons aside; splits by factor;
    boxes less their border), and says which labels' texts are wider than the room they get."""

    def __init__(self, kind: str = "column", factor: float = 0.5, fixed: float = 0.0) -> None:
        self.kind, self.factor, self.fixed = kind, factor, fixed
        self.children: list = []
        self.alignment, self.active, self.enabled, self.scale_y = "EXPAND", True, True, 1.0
        self.prop_name = ""

    def _add(self, kind: str, **kwargs) -> WidthLayout:
        child = WidthLayout(kind, **kwargs)
        self.children.append(child)
        return child

    def row(self, **_kwargs):
        return self._add("row")

    def column(self, **_kwargs):
        return self._add("column")

    def box(self):
        return self._add("box")

    def split(self, factor: float = 0.5, **_kwargs):
        return self._add("split", factor=factor)

    def label(self, *, text: str = "", icon: str = "NONE"):
        leaf = self._add("label", fixed=MODEL_CHECKBOX if not text and icon != "NONE" else 0.0)  # an icon alone
        leaf.text, leaf.icon = text, icon

    def prop(self, data, name, *, text=None, icon="NONE", **_kwargs):
        self._add("item", fixed=MODEL_CHECKBOX if text == "" else 0.0).prop_name = name

    def find_prop(self, name: str, enabled: bool = True):
        """``(found, enabled)``: whether property ``name`` is drawn, and whether every layout above it is enabled."""
        enabled = enabled and self.enabled
        if self.prop_name == name:
            return True, enabled
        for child in self.children:
            found = child.find_prop(name, enabled)
            if found[0]:
                return found
        return False, False

    def texts(self) -> list[str]:
        return ([self.text] if self.kind == "label" and self.text else []) + [
            t for child in self.children for t in child.texts()
        ]

    def operator(self, idname, *, text=None, icon="NONE", **_kwargs):
        self._add("item", fixed=MODEL_CHECKBOX if text == "" else 0.0)
        return type("OperatorProperties", (), {})()

    def progress(self, **_kwargs):
        self._add("item")

    def template_list(self, list_type, list_id, data, propname, active_data, active_propname, rows=5):
        from blender_addon import ui

        box = self._add("list")
        for index, item in enumerate(getattr(data, propname)):
            ui.TEXUP_UL_textures.draw_item(
                None, bpy.context, box.row(), data, item, 0, active_data, active_propname, index
            )

    def layout_widths(self, width: float, scale: float) -> list[tuple[str, str, float]]:
        """``(text, icon, room)`` of every label, this layout being ``width`` pixels wide."""
        out = []
        if self.kind == "label":
            if self.text:
                icon = MODEL_ICON if self.icon != "NONE" else 0
                out.append((self.text, self.icon, width - (MODEL_PAD + icon) * scale))
            return out
        inner = {"box": width - MODEL_BOX * scale, "list": width - MODEL_LIST * scale}.get(self.kind, width)
        if self.kind == "split":
            rest = max(1, len(self.children) - 1)
            widths = [inner * self.factor] + [inner * (1 - self.factor) / rest] * rest
        elif self.kind == "row":
            fixed = sum(c.fixed * scale for c in self.children)
            flexible = [c for c in self.children if not c.fixed]
            share = (inner - fixed) / max(1, len(flexible))
            widths = [c.fixed * scale if c.fixed else share for c in self.children]
        else:
            widths = [inner] * len(self.children)
        for child, child_width in zip(self.children, widths):
            out += child.layout_widths(child_width, scale)
        return out


def blf_width(text: str, scale: float) -> float:
    """The width Blender's own font code gives ``text`` in the UI font at ``scale``."""
    import blf

    blf.size(0, 11 * scale)
    return blf.dimensions(0, text)[0]


@pytest.fixture
def broken_worker(addon, monkeypatch):
    """The last worker check found no worker (what a wrong Worker Python gives)."""
    from blender_addon import setup_ops
    from blender_addon.bridge.client import SETTING_HINT
    from blender_addon.bridge.health import HealthCheck, HealthReport

    check = HealthCheck()
    error = f"the worker Python '/home/artist/envs/texup-gpu/bin/python3.11' does not exist: {SETTING_HINT}"
    check._result = HealthReport(ok=False, python="/home/artist/envs/texup-gpu/bin/python3.11", error=error)
    check.requested = True
    monkeypatch.setattr(setup_ops, "WORKER_CHECK", check)
    return check


def long_named_scene(tmp_path) -> None:
    scene_builder.build(str(tmp_path), with_missing=True)
    mat = bpy.data.materials["Mat.A"]
    for name in LONG_NAMES:
        image = bpy.data.images.load(scene_builder.write_png(str(tmp_path / name), 16, 16, 3))
        mat.node_tree.nodes.new("ShaderNodeTexImage").image = image
    bpy.ops.texup.refresh()


@pytest.mark.parametrize("scale", [1.0, 1.25, 2.0])
def test_every_label_fits_the_default_sidebar_and_nothing_is_lost(addon, broken_worker, tmp_path, scale):
    """The whole panel, its list rows and its details at the default sidebar width (no region here: the
    default width at this scale): every label's text, measured with blf, fits the room Blender gives it;
    the worker's fix is drawn whole; long names keep both ends; the summary and the message wrap whole."""
    from blender_addon import ui
    from blender_addon.bridge.health import split_fix
    from blender_addon.bridge.text_fit import DEFAULT_SIDEBAR_WIDTH, text_width

    view = bpy.context.preferences.view
    old_scale = view.ui_scale
    view.ui_scale = scale
    try:
        assert ui.ui_scale(bpy.context) == pytest.approx(scale) and ui.ui_font(bpy.context) == "inter"
        long_named_scene(tmp_path)
        textures = bpy.context.window_manager.texup_list
        textures.active_index = next(i for i, t in enumerate(textures.textures) if t.name == LONG_NAMES[1])
        settings = bpy.context.scene.texup
        settings.use_size_filter, settings.max_size = True, 20  # some left out, listed with the reasons
        textures.show_left_out = True
        runtime = bpy.context.window_manager.texup_runtime
        summary = "texup: 9 upscaled, 1 failed (the worker did not stop within 5 s of the cancel and was restarted)"
        runtime.last_summary = summary
        drawn = []
        for running in (False, True):
            runtime.running = running
            runtime.message = "Upscaling T_Rock_Cliff_01_Normal_OpenGL.png (3/11, 40%)"
            for draw in (ui._draw_panel, ui._draw_details, ui._draw_finetune):
                layout = WidthLayout()
                draw(layout, bpy.context)
                drawn += layout.layout_widths(DEFAULT_SIDEBAR_WIDTH * scale - MODEL_CHROME * scale, scale)
        runtime.running, runtime.last_summary = False, ""
    finally:
        view.ui_scale = old_scale
        settings.use_size_filter = False

    texts = [text for text, _, _ in drawn]
    too_wide = {
        text: (round(blf_width(text, scale)), round(room)) for text, _, room in drawn if blf_width(text, scale) > room
    }
    assert not too_wide, too_wide
    assert all(text_width(text, scale, "inter") >= blf_width(text, scale) for text in texts)  # never narrower
    # The worker's fix, whole, on lines of its own after what went wrong.
    fix_at = texts.index(next(t for t in texts if t.startswith("Fix: ")))
    fix = "Fix: " + split_fix(broken_worker.result.error)[1]
    assert " ".join(texts[fix_at : fix_at + 6]).startswith(fix)
    assert "Check Again" not in texts  # a button, not a label
    assert "Upscale needs a working worker (see above)" in " ".join(texts)
    # Long names: their beginning and their distinctive end (list rows); the details wrap them whole.
    assert any(t.startswith("brick") and t.endswith(("_2k.png", "_2k")) and "…" in t for t in texts), texts
    assert any(t.startswith("T_Ro") and "…" in t and t.endswith(("GL", "GL.png")) for t in texts), texts
    details = "".join(t for t in texts if t in LONG_NAMES[1] and len(t) > 3)
    assert LONG_NAMES[1] in details or LONG_NAMES[1].replace(".png", "") in details
    # The summary and the progress message wrap over lines: every word drawn.
    assert " ".join(summary.removeprefix("texup: ").split()) in " ".join(texts)
    assert "(3/11, 40%)" in " ".join(texts)


def test_upscale_is_greyed_out_with_the_reason_while_the_worker_does_not_work(addon, broken_worker, monkeypatch):
    from blender_addon import operators
    from blender_addon.bridge.health import HealthReport

    assert bpy.ops.texup.upscale.poll()  # blender -b / the bpy module: a script's run reports it itself
    monkeypatch.setattr(operators, "runs_blocking", lambda background, windows: False)  # as in a UI session
    assert not bpy.ops.texup.upscale.poll()
    broken_worker._result = HealthReport(ok=True, texup="0.2.0")
    assert bpy.ops.texup.upscale.poll()
    broken_worker.forget()  # not checked: not held back either
    assert bpy.ops.texup.upscale.poll()


def test_undo_and_redo_refill_the_list_and_redraw_the_sidebars(addon, tmp_path, monkeypatch):
    from blender_addon import properties

    redraws = []
    monkeypatch.setattr(properties, "redraw_panels", lambda context: redraws.append(len(rows())))
    scene_builder.build(str(tmp_path), with_missing=False)
    bpy.ops.texup.refresh()
    bpy.ops.ed.undo_push(message="base")
    extra = bpy.data.images.load(scene_builder.write_png(str(tmp_path / "extra.png"), 8, 8, 3))
    bpy.data.materials["Mat.A"].node_tree.nodes.new("ShaderNodeTexImage").image = extra
    bpy.ops.ed.undo_push(message="extra texture")
    bpy.ops.texup.refresh()
    count = len(rows())
    redraws.clear()
    bpy.ops.ed.undo()
    assert "extra.png" not in rows() and redraws == [count - 1]  # refilled, then redrawn with the new list
    bpy.ops.ed.redo()
    assert "extra.png" in rows() and redraws == [count - 1, count]


def test_the_detail_slider_is_live_with_a_partner_and_greyed_with_the_reason_without(
    addon, broken_worker, tmp_path, monkeypatch
):
    """Detail (ESRGAN's network interpolation) for models with a partner: the registry's published pairs or a
    texup .safetensors naming one (a GAN-stage fine-tune); greyed with one line saying why otherwise; the job's
    model is the blend of the partner and the model at the slider's value."""
    import json
    import struct

    from blender_addon import properties, ui
    from blender_addon.operators import run_settings
    from blender_addon.upscale_run import UpscaleRun

    class Prefs:
        device, engine, output_dir, default_model = "cpu", "auto", str(tmp_path / "out"), ""

    monkeypatch.setattr(properties, "get_preferences", lambda context=None: Prefs())
    scene_builder.build(str(tmp_path), with_missing=False)  # a new file: take its settings after
    settings = bpy.context.scene.texup

    def panel(model: str) -> tuple[tuple[bool, bool], list[str]]:
        settings.model = model
        layout = WidthLayout()
        ui._draw_panel(layout, bpy.context)
        return layout.find_prop("detail"), layout.texts()

    (found, live), texts = panel("realesrgan-x4plus")
    assert found and live and not any(t.startswith("Detail:") for t in texts)
    (found, live), texts = panel("realesr-animevideov3")
    assert found and not live
    assert "Detail: realesr-animevideov3 has no partner model" in " ".join(texts)

    # A fine-tuned GAN model whose provenance names its PSNR partner (what texup train --stage gan writes).
    gan = tmp_path / "models" / "model.safetensors"
    gan.parent.mkdir()
    meta = {"texup.provenance": json.dumps({"partner": {"file": "model.psnr.safetensors", "stage": "psnr"}})}
    header = json.dumps({"__metadata__": meta}).encode()
    gan.write_bytes(struct.pack("<Q", len(header)) + header)
    (found, live), texts = panel(str(gan))
    assert found and not live and "Detail: its partner model.psnr.safetensors is missing" in " ".join(texts)
    (gan.parent / "model.psnr.safetensors").write_bytes(gan.read_bytes())
    (found, live), _ = panel(str(gan))
    assert found and live

    from blender_addon import scene

    color = next(info for info in scene.scan() if info.name == "color.png")
    sent = {}
    for model, detail in (("realesrgan-x4plus", 0.25), ("realesrgan-x4plus", 1.0), ("realesr-animevideov3", 0.5)):
        settings.model, settings.detail = model, detail
        run = UpscaleRun([color], run_settings(bpy.context))
        try:
            sent[(model, detail)] = run.prepare().options.model
        finally:
            run.cleanup()
    settings.model, settings.detail = "", 1.0
    assert sent == {
        ("realesrgan-x4plus", 0.25): "blend:realesrnet-x4plus,realesrgan-x4plus@0.25",
        ("realesrgan-x4plus", 1.0): "realesrgan-x4plus",
        ("realesr-animevideov3", 0.5): "realesr-animevideov3",  # no partner: the slider is greyed, the model runs
    }
