"""Drive the real Blender UI (under Xvfb): open the texup panel in the 3D Viewport sidebar at its default
width, run Upscale the way Repeat Last and scripts do (``execute``: it must start the modal operator and
return at once), wait for it, take a screenshot. Usage::

    TEXUP_PYTHON=.venv/bin/python xvfb-run -a -s "-screen 0 1280x1024x24" blender --factory-startup \\
        --enable-event-simulate scene.blend --python tests/blender/ui_screenshot.py -- MODEL OUT.png

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
import blender_addon  # noqa: E402
from blender_addon import ui  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1 :]
MODEL, OUT = args[0], os.path.abspath(args[1])
CROP_MARGIN = 60  # pixels of viewport kept left of the sidebar in the picture
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
}

_draw_panel = ui._draw_panel


def _counting_draw(layout, context):
    state["panel_draws"] += 1
    _draw_panel(layout, context)


ui._draw_panel = _counting_draw  # TEXUP_PT_view3d.draw looks it up at draw time


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


def script():
    """The steps, as a generator: each ``yield`` gives Blender's event loop that many seconds."""
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
    textures.active_index = next(i for i, item in enumerate(textures.textures) if item.name == "wall_x4")
    redraw_all()
    yield 1.0  # let the panel redraw with the results

    state["phase"] = "shot"
    window, area, main, sidebar = view3d()
    with bpy.context.temp_override(window=window):
        bpy.ops.screen.screenshot(filepath=OUT, check_existing=False)
    # Keep the sidebar (with a strip of viewport) and the viewport header above it.
    crop_png(OUT, sidebar.x - CROP_MARGIN, sidebar.y, area.x + area.width, area.y + area.height)
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
            }
        ),
        flush=True,
    )
    blender_addon.unregister()
    bpy.ops.wm.quit_blender()
    return None


bpy.app.timers.register(tick, first_interval=1.0)
