"""Drive the real Blender UI (under Xvfb): open the texup panel in the 3D Viewport sidebar at its default
width, show it with a worker that does not work (screenshot ``OUT_worker_error.png``: the error wrapped,
its fix whole, Upscale greyed), run Upscale the way Repeat Last and scripts do (``execute``: it must start
the modal operator and return at once), wait for it, take a screenshot (``OUT.png``: long names shortened
in the middle, the last run's summary), then undo and redo a change to the scene and see the list drawn
anew each time. Usage::

    TEXUP_PYTHON=.venv/bin/python xvfb-run -a -s "-screen 0 1280x1024x24" blender --factory-startup \\
        --enable-event-simulate scene.blend --python tests/blender/ui_screenshot.py -- MODEL OUT.png

Two textures with long names are added to the scene first (``LONG_NAMES``). Every label the panel and
its list rows draw is recorded (a layout wrapper), and its width measured with Blender's own font code
(``blf``, the UI font at the interface scale) against the add-on's estimate (``text_fit.text_width``).

Blender 3.4 has no API for a sidebar's active tab, so the script shows the "texup" tab the way a user
does: it clicks down the tab strip at the sidebar's right edge until the texup panel is the one drawn
(the panel's draw function is wrapped to count its draws). Events are simulated with
``Window.event_simulate`` (needs ``--enable-event-simulate``). Everything runs from ``bpy.app.timers``,
so the modal operator gets its timer events like in a normal session. The add-on is registered after
the file loaded and nobody presses Refresh: the list must fill itself when the panel is first drawn.

Prints ``UI_DONE <json>`` (what happened: tab shown, modal states seen, final rows) and quits; exit
code 0 even when a step failed, the JSON says which (``error``).
"""

import json
import os
import sys
import time
import traceback

import bpy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scene_builder
import blender_addon  # noqa: E402
from blender_addon import setup_ops, ui  # noqa: E402
from blender_addon.bridge import text_fit  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1 :]
MODEL, OUT = args[0], os.path.abspath(args[1])
OUT_ERROR = os.path.splitext(OUT)[0] + "_worker_error.png"
CROP_MARGIN = 60  # pixels of viewport kept left of the sidebar in the picture
LONG_NAMES = ("brick_wall_diffuse_2k.png", "T_Rock_Cliff_01_Normal_OpenGL.png")
BROKEN_PYTHON = "/nonexistent/texup-env/bin/python3"
blender_addon.register()

state = {
    "phase": "start",
    "ticks": 0,
    "panel_draws": 0,
    "tab_clicks": 0,
    "messages": [],
    "seen_running": False,
    "invoke_seconds": None,
    "error": None,
    "labels": {},  # every label text drawn -> (icon shown, estimate px, blf px)
    "row_names": [],  # the list rows' names as drawn the last time
    "drawn": [],  # the labels of the last draw (panel and rows)
}

_draw_panel = ui._draw_panel
_draw_item = ui.TEXUP_UL_textures.draw_item


def _blf_width(text):
    """The width Blender's UI font draws ``text`` with at the interface scale (pixels)."""
    import blf

    size = text_fit.UI_POINTS * ui.ui_scale(bpy.context)
    try:
        blf.size(0, size)
    except TypeError:  # Blender 3.x: size, dpi
        blf.size(0, size, 72)
    return blf.dimensions(0, text)[0]


class RecordingLayout:
    """The real layout, with every ``label`` recorded (sub-layouts are wrapped too)."""

    def __init__(self, layout):
        self._layout = layout

    def __getattr__(self, name):
        return getattr(self._layout, name)

    def __setattr__(self, name, value):
        if name == "_layout":
            object.__setattr__(self, name, value)
        else:
            setattr(self._layout, name, value)

    def _wrap(self, method):
        def call(*args, **kwargs):
            return RecordingLayout(getattr(self._layout, method)(*args, **kwargs))

        return call

    def __getattribute__(self, name):
        if name in ("row", "column", "split", "box"):
            return object.__getattribute__(self, "_wrap")(name)
        return object.__getattribute__(self, name)

    def label(self, *, text="", icon="NONE", **kwargs):
        if text:
            estimate = text_fit.text_width(text, ui.ui_scale(bpy.context))
            state["labels"][text] = (icon, estimate, _blf_width(text))
            state["drawn"].append(text)
        return self._layout.label(text=text, icon=icon, **kwargs)


def _counting_draw(layout, context):
    state["panel_draws"] += 1
    state["row_names"] = []
    state["drawn"] = []
    _draw_panel(RecordingLayout(layout), context)


def _recording_draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
    # The full signature: Blender passes as many arguments as the function names.
    _draw_item(self, context, RecordingLayout(layout), data, item, icon, active_data, active_propname, index, flt_flag)
    state["row_names"].append(item.name)


ui._draw_panel = _counting_draw  # TEXUP_PT_view3d.draw looks it up at draw time
ui.TEXUP_UL_textures.draw_item = _recording_draw_item  # Blender looks the method up on the class at draw time


def view3d():
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    regions = {r.type: r for r in area.regions}
    return window, area, regions["WINDOW"], regions["UI"]


def redraw_all():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            area.tag_redraw()


def simulate(kind, value, x, y):
    """One simulated input event (window coordinates, origin bottom left); handled after this timer returns."""
    window = bpy.context.window_manager.windows[0]
    window.event_simulate(type=kind, value=value, x=int(x), y=int(y))


def add_long_named_textures():
    """Two textures whose names are longer than the list's column, in a material of their own."""
    from scene_builder import write_png  # tests/blender, next to this script

    folder = os.path.dirname(bpy.data.filepath)
    mat = bpy.data.materials.new("Mat.Long")
    mat.use_nodes = True
    for index, name in enumerate(LONG_NAMES):
        image = bpy.data.images.load(write_png(os.path.join(folder, name), 16, 16, 3))
        node = mat.node_tree.nodes.new("ShaderNodeTexImage")
        node.image = image
        node.location = (-400, -300 * index)
    bpy.data.objects["Obj0"].data.materials.append(mat)


def wait_for_check(seconds):
    """Yield until the worker check running now has ended."""
    deadline = time.monotonic() + seconds
    while setup_ops.WORKER_CHECK.running:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker check did not end")
        yield 0.2


def check_worker(python, seconds):
    """A new worker check with ``TEXUP_PYTHON=python`` (what Test Worker does), waited for."""
    yield from wait_for_check(seconds)
    os.environ["TEXUP_PYTHON"] = python
    setup_ops.WORKER_CHECK.forget()
    setup_ops.start_worker_check(bpy.context)
    yield from wait_for_check(seconds)
    redraw_all()
    yield 1.0  # drawn with the result


def upscale_poll():
    window, area, main, sidebar = view3d()
    with bpy.context.temp_override(window=window, area=area, region=sidebar):
        return bpy.ops.texup.upscale.poll()


def screenshot(path):
    window, area, main, sidebar = view3d()
    with bpy.context.temp_override(window=window):
        bpy.ops.screen.screenshot(filepath=path, check_existing=False)
    # Keep the sidebar (with a strip of viewport) and the viewport header above it.
    crop_png(path, sidebar.x - CROP_MARGIN, sidebar.y, area.x + area.width, area.y + area.height)


def undo_redo(kind):
    """``ed.undo`` or ``ed.redo`` as the shortcut runs it (the 3D Viewport's context)."""
    window, area, main, sidebar = view3d()
    with bpy.context.temp_override(window=window, area=area, region=main):
        getattr(bpy.ops.ed, kind)()


def drawn_after(kind, draws_before, seconds=3.0):
    """Yield until the panel drew again after an undo or redo (nothing else asks for a redraw)."""
    deadline = time.monotonic() + seconds
    while state["panel_draws"] == draws_before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the panel was not drawn again after {kind}")
        yield 0.1
    yield 0.3  # the rest of the draw (the list rows)


def script():
    """The steps, as a generator: each ``yield`` gives Blender's event loop that many seconds."""
    good_python = os.environ.get("TEXUP_PYTHON", "")
    add_long_named_textures()
    state["phase"] = "maximize"  # the 3D Viewport fills the window (header and status bar stay)
    window, area, main, sidebar = view3d()
    with bpy.context.temp_override(window=window, area=area, region=main):
        bpy.ops.screen.screen_full_area()
    yield 0.5
    window, area, main, sidebar = view3d()
    area.spaces[0].show_region_ui = True
    if hasattr(area.spaces[0], "show_region_toolbar"):
        area.spaces[0].show_region_toolbar = False
    yield 0.5

    state["phase"] = "tab"  # click down the tab strip at the sidebar's right edge until texup draws
    window, area, main, sidebar = view3d()
    state["panel_draws"] = 0
    x = sidebar.x + sidebar.width - 12
    for y in range(sidebar.y + sidebar.height - 20, sidebar.y + 20, -20):
        simulate("MOUSEMOVE", "NOTHING", x, y)
        yield 0.1
        simulate("LEFTMOUSE", "PRESS", x, y)
        yield 0.1
        simulate("LEFTMOUSE", "RELEASE", x, y)
        state["tab_clicks"] += 1
        redraw_all()
        yield 0.3
        if state["panel_draws"]:
            break
    else:
        raise RuntimeError("no tab of the sidebar showed the texup panel")
    simulate("MOUSEMOVE", "NOTHING", sidebar.x - 200, sidebar.y + 40)  # the pointer out of the picture's way

    state["phase"] = "list"  # nobody presses Refresh: the first draw asked a timer to fill the list
    deadline = time.monotonic() + 5
    while not len(bpy.context.window_manager.texup_list.textures):
        if time.monotonic() > deadline:
            raise RuntimeError("the texture list did not fill itself")
        redraw_all()
        yield 0.1
    state["rows_before"] = len(bpy.context.window_manager.texup_list.textures)

    state["phase"] = "worker error"  # a Worker Python that does not exist: the error, its fix, Upscale greyed
    for item in bpy.context.window_manager.texup_list.textures:
        item.selected = item.name in LONG_NAMES
    yield from check_worker(BROKEN_PYTHON, 120)
    report = setup_ops.WORKER_CHECK.result
    state["broken_check_ok"] = None if report is None else report.ok
    state["upscale_poll_broken"] = upscale_poll()
    state["labels_broken"] = list(state["drawn"])
    screenshot(OUT_ERROR)
    yield from check_worker(good_python, 180)  # the worker works again: Upscale too
    report = setup_ops.WORKER_CHECK.result
    state["good_check"] = None if report is None else (report.ok, report.error)
    state["upscale_poll_good"] = upscale_poll()

    state["phase"] = "execute"  # Repeat Last / a script: execute() in a UI session must not block
    window, area, main, sidebar = view3d()
    with bpy.context.temp_override(window=window, area=area, region=sidebar):
        settings = bpy.context.scene.texup
        settings.model = MODEL
        for item in bpy.context.window_manager.texup_list.textures:
            item.selected = item.source in {"file", "udim", "packed", "missing"}
        started = time.monotonic()
        result = bpy.ops.texup.upscale()
        state["invoke_seconds"] = time.monotonic() - started
    state["execute_result"] = sorted(result)
    if not bpy.context.window_manager.texup_runtime.running:
        raise RuntimeError(f"Upscale did not start its modal operator: {result}")

    state["phase"] = "running"
    runtime = bpy.context.window_manager.texup_runtime
    deadline = time.monotonic() + 240
    while runtime.running:
        state["seen_running"] = True
        message = runtime.message.split(" (")[0]
        if message and message not in state["messages"]:
            state["messages"].append(message)
        if time.monotonic() > deadline:
            raise RuntimeError("the modal operator did not finish in time")
        yield 0.1
    state["last_operator"] = (
        bpy.context.window_manager.operators[-1].bl_idname if len(bpy.context.window_manager.operators) else None
    )
    # The picture: a size limit that leaves some textures out (listed under the list), a row active.
    settings = bpy.context.scene.texup
    settings.model = ""
    settings.use_size_filter, settings.max_size = True, 64
    textures = bpy.context.window_manager.texup_list
    textures.show_left_out = True
    textures.active_index = next(
        i for i, item in enumerate(textures.textures) if item.name == "brick_wall_diffuse_2k_x4"
    )
    redraw_all()
    yield 1.0  # let the panel redraw with the results

    state["phase"] = "shot"
    screenshot(OUT)
    state["labels_done"] = list(state["drawn"])
    state["rows_drawn"] = list(state["row_names"])

    state["phase"] = "undo"  # a texture added to the scene, undone, redone: the list follows, drawn anew
    from scene_builder import write_png

    settings.use_size_filter = False
    redraw_all()
    yield 0.5
    bpy.ops.ed.undo_push(message="before the probe")
    probe = bpy.data.images.load(write_png(os.path.join(os.path.dirname(bpy.data.filepath), "undo_probe.png"), 8, 8, 3))
    bpy.data.materials["Mat.Long"].node_tree.nodes.new("ShaderNodeTexImage").image = probe
    bpy.ops.ed.undo_push(message="probe texture")
    bpy.ops.texup.refresh()
    textures = bpy.context.window_manager.texup_list
    textures.active_index = next(i for i, item in enumerate(textures.textures) if item.name == "undo_probe.png")
    redraw_all()  # the list scrolls to its active row: the probe's is drawn (a list draws the rows it shows)
    yield 0.5
    state["probe_drawn"] = "undo_probe.png" in state["row_names"]
    draws = state["panel_draws"]
    undo_redo("undo")
    yield from drawn_after("undo", draws)
    state["probe_drawn_after_undo"] = "undo_probe.png" in state["row_names"]
    state["rows_drawn_after_undo"] = len(state["row_names"])
    draws = state["panel_draws"]
    undo_redo("redo")
    yield from drawn_after("redo", draws)
    state["probe_drawn_after_redo"] = "undo_probe.png" in state["row_names"]
    state["phase"] = "done"


def crop_png(path, x0, y0, x1, y1):
    """Crop a PNG in place to window pixels [x0, x1) x [y0, y1) (origin bottom left, like Blender images)."""
    from array import array

    shot = bpy.data.images.load(path, check_existing=False)
    try:
        width, height = shot.size
        x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1))
        pixels = array("f", bytes(4 * 4 * width * height))
        shot.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(shot)
    rows = [pixels[4 * (y * width + x0) : 4 * (y * width + x1)] for y in range(y0, y1)]
    cropped = bpy.data.images.new("texup_screenshot", x1 - x0, y1 - y0, alpha=False)
    try:
        cropped.pixels.foreach_set(array("f", b"".join(row.tobytes() for row in rows)))
        cropped.filepath_raw = path
        cropped.file_format = "PNG"
        cropped.save()
    finally:
        bpy.data.images.remove(cropped)


_steps = script()


def step():
    """Run the script to its next ``yield``; the seconds to wait, or None when it ended."""
    try:
        return next(_steps)
    except StopIteration:
        return None


def tick():
    state["ticks"] += 1
    try:
        delay = step()
    except Exception as err:  # reported in UI_DONE (the test fails on it), then Blender quits
        state["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        delay = None
    if delay is not None:
        return delay
    runtime = bpy.context.window_manager.texup_runtime
    rows = [(i.name, i.status, i.width, i.height) for i in bpy.context.window_manager.texup_list.textures]
    nodes = {}
    for mat in bpy.data.materials:
        if mat.node_tree:
            nodes[mat.name] = sorted(n.image.name for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image)
    _, _, _, sidebar = view3d()
    print(
        "UI_DONE "
        + json.dumps(
            {
                "error": state["error"],
                "phase": state["phase"],
                "tab_clicks": state["tab_clicks"],
                "panel_draws": state["panel_draws"],
                "sidebar_width": sidebar.width,
                "seen_running": state["seen_running"],
                "messages": state["messages"],
                "invoke_seconds": state["invoke_seconds"],
                "rows": rows,
                "nodes": nodes,
                "summary": runtime.last_summary,
                "rows_before": state.get("rows_before"),
                "execute_result": state.get("execute_result"),
                "last_operator": state.get("last_operator"),
                "sidebar_height": sidebar.height,
                "ui_scale": ui.ui_scale(bpy.context),
                "labels": state["labels"],
                **{
                    key: state.get(key)
                    for key in (
                        "broken_check_ok",
                        "upscale_poll_broken",
                        "good_check",
                        "upscale_poll_good",
                        "labels_broken",
                        "labels_done",
                        "rows_drawn",
                        "probe_drawn",
                        "probe_drawn_after_undo",
                        "rows_drawn_after_undo",
                        "probe_drawn_after_redo",
                    )
                },
            }
        ),
        flush=True,
    )
    blender_addon.unregister()
    bpy.ops.wm.quit_blender()
    return None


bpy.app.timers.register(tick, first_interval=1.0)
