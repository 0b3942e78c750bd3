"""Drive the real Blender UI (run under Xvfb): open the panel, press Upscale the way the button does,
wait for the modal operator, take a screenshot. Usage:
``xvfb-run -s "-screen 0 1280x800x24" blender --factory-startup scene.blend --python tests/blender/ui_screenshot.py -- MODEL OUT.png``
Prints UI_DONE <json> and quits. Needs TEXUP_PYTHON (worker)."""

import json
import os
import sys

import bpy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
import blender_addon  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1:]
MODEL, OUT = args[0], os.path.abspath(args[1])
blender_addon.register()
state = {"phase": "start", "ticks": 0, "seen_running": False}


def view3d():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                region = next(r for r in area.regions if r.type == "WINDOW")
                return window, area, region
    raise RuntimeError("no 3D viewport")


def tick():
    state["ticks"] += 1
    window, area, region = view3d()
    runtime = bpy.context.window_manager.texup_runtime
    if state["phase"] == "start":
        area.spaces[0].show_region_ui = True
        state["phase"] = "tab"
        return 0.5
    if state["phase"] == "tab":
        # Click the sidebar's "texup" tab (there is no API for the active tab in 3.4); needs
        # --enable-event-simulate. The tabs run down the sidebar's right edge.
        ui = next(r for r in area.regions if r.type == "UI")
        x, y = ui.x + ui.width - 10, ui.y + ui.height - 250
        if hasattr(window, "event_simulate") and bpy.app.use_event_simulate:
            window.event_simulate(type="MOUSEMOVE", value="NOTHING", x=x, y=y)
            window.event_simulate(type="LEFTMOUSE", value="PRESS", x=x, y=y)
            window.event_simulate(type="LEFTMOUSE", value="RELEASE", x=x, y=y)
        state["phase"] = "invoke"
        return 0.5
    if state["phase"] == "invoke":
        with bpy.context.temp_override(window=window, area=area, region=region):
            bpy.ops.texup.refresh()
            settings = bpy.context.scene.texup
            settings.model = MODEL
            for item in settings.textures:
                item.selected = item.source in {"file", "udim"}
            bpy.ops.texup.upscale("INVOKE_DEFAULT")  # what the panel's button does
        state["phase"] = "running"
        return 0.2
    if state["phase"] == "running":
        state["seen_running"] |= runtime.running
        if runtime.running and state["ticks"] < 600:
            return 0.2
        state["phase"] = "shot"
        with bpy.context.temp_override(window=window, area=area, region=region):
            bpy.ops.texup.refresh()
        return 1.0  # let the panel redraw with the results
    with bpy.context.temp_override(window=window):
        bpy.ops.screen.screenshot(filepath=OUT)
    rows = [(i.name, i.status, i.width, i.height) for i in bpy.context.scene.texup.textures]
    print("UI_DONE " + json.dumps({"seen_running": state["seen_running"], "rows": rows,
                                   "summary": runtime.last_summary}), flush=True)
    blender_addon.unregister()
    bpy.ops.wm.quit_blender()
    return None


bpy.app.timers.register(tick, first_interval=1.0)
