"""Operators: refresh the texture list, select, upscale (modal, never blocks), cancel, revert.

Heavy modules (the scan, the pipeline, the worker client) are imported inside the operators, so
enabling the add-on costs nothing.
"""

from __future__ import annotations

from typing import Any, Optional

import bpy
from bpy.props import EnumProperty, StringProperty

from .defaults import DEFAULT_MODEL, DEFAULT_OUT_DIR

TIMER_INTERVAL = 0.1


def passes_filters(settings: Any, item: Any) -> bool:
    """True when a list row is visible under the panel's filters (size, role)."""
    if settings.use_size_filter and max(item.width, item.height) >= settings.max_size:
        return False
    if settings.role_filter != "ALL" and item.role != settings.role_filter:
        return False
    return True


def refresh_list(context: bpy.types.Context) -> int:
    """Scan the file and refill the scene's texture list, keeping each image's selection. Returns the count."""
    from . import scene

    settings = context.scene.texup
    selected = {item.name for item in settings.textures if item.selected}
    settings.textures.clear()
    infos = scene.scan()
    for info in infos:
        item = settings.textures.add()
        item.name = info.name
        item.selected = info.name in selected
        item.width, item.height = info.size
        item.role = info.role
        item.colorspace = info.colorspace
        item.source = info.source
        item.users = info.users
        item.udim_tiles = len(info.udim_tiles)
        item.has_alpha = info.has_alpha
        item.status = info.status
        item.filepath = info.filepath
    settings.active_index = min(settings.active_index, max(0, len(infos) - 1))
    return len(infos)


def run_settings(context: bpy.types.Context):
    """The :class:`~.pipeline.RunSettings` from the panel and the preferences."""
    from .pipeline import RunSettings
    from .preferences import get_preferences

    settings = context.scene.texup
    prefs = get_preferences(context)
    default_model = prefs.default_model if prefs is not None else DEFAULT_MODEL
    return RunSettings(
        model=settings.model.strip() or default_model or None,
        scale=int(settings.scale),
        tile=settings.tile,
        seamless=settings.seamless,
        device=prefs.device if prefs is not None else "auto",
        out_dir=(prefs.output_dir if prefs is not None else "") or DEFAULT_OUT_DIR,
    )


def chosen_names(context: bpy.types.Context, names: str) -> list[str]:
    """Image names given to an operator (comma-separated), else the list's selected, visible rows."""
    if names.strip():
        return [n.strip() for n in names.split(",") if n.strip()]
    settings = context.scene.texup
    return [item.name for item in settings.textures if item.selected and passes_filters(settings, item)]


def _worker_preference(context: bpy.types.Context) -> Optional[str]:
    from .preferences import get_preferences

    prefs = get_preferences(context)
    return prefs.worker_python if prefs is not None else None


def _redraw(context: bpy.types.Context) -> None:
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


def report_outcomes(operator: bpy.types.Operator, run: Any) -> None:
    """One report per failed image, and a summary line."""
    for row in run.failed:
        operator.report({"WARNING"}, f"texup: {row['name']}: {row['error']}")
    operator.report({"INFO"}, run.summary())


class TEXUP_OT_refresh(bpy.types.Operator):
    bl_idname = "texup.refresh"
    bl_label = "Refresh Textures"
    bl_description = "List every image used by an Image Texture node (materials, node groups, world)"

    def execute(self, context: bpy.types.Context) -> set[str]:
        count = refresh_list(context)
        self.report({"INFO"}, f"texup: {count} texture(s)")
        return {"FINISHED"}


class TEXUP_OT_select(bpy.types.Operator):
    bl_idname = "texup.select"
    bl_label = "Select Textures"
    bl_description = "Select or deselect every texture the filters show"

    action: EnumProperty(items=[("ALL", "All", "Select all"), ("NONE", "None", "Deselect all")], default="ALL")

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.texup
        for item in settings.textures:
            if passes_filters(settings, item):
                item.selected = self.action == "ALL"
        return {"FINISHED"}


class TEXUP_OT_upscale(bpy.types.Operator):
    bl_idname = "texup.upscale"
    bl_label = "Upscale Selected"
    bl_description = ("Upscale the selected textures with texup and use the results in every node that used "
                      "the originals (originals are kept; Revert restores them)")
    bl_options = {"REGISTER", "UNDO"}

    images: StringProperty(
        name="Images", description="Comma-separated image names; empty: the selected rows of the list",
        default="", options={"SKIP_SAVE"})

    _timer = None
    _run = None
    _client = None
    _job_id: Optional[str] = None
    _cancel_sent = False

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not context.window_manager.texup_runtime.running

    def _start(self, context: bpy.types.Context):
        """Scan, prepare and submit; returns (client, run, job_id) or None after reporting why not."""
        from . import scene, service
        from .bridge.client import WorkerError, WorkerStartError
        from .bridge.protocol import ProtocolError
        from .pipeline import RunError, UpscaleRun

        names = chosen_names(context, self.images)
        if not names:
            self.report({"WARNING"}, "texup: no textures selected")
            return None
        by_name = {info.name: info for info in scene.scan()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            self.report({"ERROR"}, f"texup: not an image used by a texture node: {', '.join(unknown)}")
            return None
        run = UpscaleRun([by_name[n] for n in names], run_settings(context))
        try:
            client = service.get_client(_worker_preference(context))
            job = run.prepare()
            job_id = client.submit(job)
            run.started(job_id)
        except (WorkerStartError, WorkerError, ProtocolError, RunError) as err:
            run.cleanup()
            self.report({"ERROR"}, f"texup: {err}")
            return None
        return client, run, job_id

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Blocking variant (scripts, background mode): same run, waited for here."""
        from .pipeline import run_blocking_started

        started = self._start(context)
        if started is None:
            return {"CANCELLED"}
        client, run, job_id = started
        run_blocking_started(client, run, job_id)
        refresh_list(context)
        if run.crashed:
            self.report({"ERROR"}, f"texup: {run.crashed}; nothing was changed")
            return {"CANCELLED"}
        report_outcomes(self, run)
        return {"FINISHED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        runtime = context.window_manager.texup_runtime
        runtime.message = "starting the texup worker..."
        started = self._start(context)
        if started is None:
            runtime.message = ""
            return {"CANCELLED"}
        self._client, self._run, self._job_id = started
        self._cancel_sent = False
        runtime.running = True
        runtime.cancel_requested = False
        runtime.progress = 0.0
        runtime.message = self._run.message
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _cancel(self) -> None:
        from .bridge.client import WorkerError

        if not self._cancel_sent:
            self._cancel_sent = True
            try:
                self._client.cancel(self._job_id)
            except WorkerError:
                pass  # the worker is gone; poll() reports the crash


    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        runtime = context.window_manager.texup_runtime
        if event.type == "ESC" and event.value == "PRESS":
            self._cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if runtime.cancel_requested:
            self._cancel()
        for ev in self._client.poll():
            self._run.handle(ev)
        runtime.progress = self._run.progress
        runtime.message = self._run.message + (" - cancelling after this tile" if self._cancel_sent else "")
        context.workspace.status_text_set(f"texup: {runtime.message}  ({self._run.progress:.0%})  Esc: cancel")
        _redraw(context)
        if not self._run.finished:
            return {"PASS_THROUGH"}
        return self._finish(context)

    def _finish(self, context: bpy.types.Context) -> set[str]:
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        self._timer = None
        context.workspace.status_text_set(None)
        runtime = wm.texup_runtime
        runtime.running = False
        runtime.cancel_requested = False
        self._run.apply()
        refresh_list(context)
        runtime.last_summary = self._run.summary()
        runtime.message = ""
        _redraw(context)
        if self._run.crashed:
            self.report({"ERROR"}, f"texup: {self._run.crashed}; nothing was changed")
            return {"CANCELLED"}
        report_outcomes(self, self._run)
        return {"FINISHED"}


class TEXUP_OT_cancel(bpy.types.Operator):
    bl_idname = "texup.cancel"
    bl_label = "Cancel Upscale"
    bl_description = "Stop the running upscale after the current tile (same as Esc)"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.window_manager.texup_runtime.running

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.window_manager.texup_runtime.cancel_requested = True
        return {"FINISHED"}


class TEXUP_OT_revert(bpy.types.Operator):
    bl_idname = "texup.revert"
    bl_label = "Revert Selected"
    bl_description = "Use the original images again in every node that uses the selected upscaled images"
    bl_options = {"REGISTER", "UNDO"}

    images: StringProperty(
        name="Images", description="Comma-separated image names; empty: the selected rows of the list",
        default="", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        from . import relink

        reverted = 0
        for name in chosen_names(context, self.images):
            image = bpy.data.images.get(name)
            if image is None or relink.ORIGINAL_PROP not in image.keys():
                continue
            try:
                relink.revert(image)
            except relink.RevertError as err:
                self.report({"WARNING"}, f"texup: {err}")
                continue
            reverted += 1
        refresh_list(context)
        if not reverted:
            self.report({"WARNING"}, "texup: no upscaled textures selected")
            return {"CANCELLED"}
        self.report({"INFO"}, f"texup: {reverted} texture(s) reverted")
        return {"FINISHED"}


CLASSES = (TEXUP_OT_refresh, TEXUP_OT_select, TEXUP_OT_upscale, TEXUP_OT_cancel, TEXUP_OT_revert)
