"""Operators: refresh the texture list, select, upscale and fine-tune (modal, never block), cancel, revert.

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
    if settings.use_size_filter and max(item.width, item.height) > settings.max_size:  # "at most", as --max-size
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
    return RunSettings(
        model=panel_model(context),
        scale=int(settings.scale),
        tile=settings.tile,
        seamless=settings.seamless,
        device=prefs.device if prefs is not None else "auto",
        out_dir=(prefs.output_dir if prefs is not None else "") or DEFAULT_OUT_DIR,
    )


def panel_model(context: bpy.types.Context) -> Optional[str]:
    """The panel's Model (a ``//`` path made absolute), else the preferences' default model, else ``None``."""
    from .preferences import get_preferences

    prefs = get_preferences(context)
    default_model = prefs.default_model if prefs is not None else DEFAULT_MODEL
    model = context.scene.texup.model.strip()
    if model.startswith("//"):
        model = bpy.path.abspath(model)
    return model or default_model or None


def finetune_settings(context: bpy.types.Context):
    """The :class:`~.finetune.FineTuneSettings` from the panel: it starts from the panel's model."""
    from .finetune import FineTuneSettings
    from .preferences import get_preferences

    settings = context.scene.texup
    prefs = get_preferences(context)
    config = settings.finetune_config.strip()
    return FineTuneSettings(
        steps=settings.finetune_steps,
        stage=settings.finetune_stage,
        pretrained=panel_model(context),
        config_file=bpy.path.abspath(config) if config else None,
        device=prefs.device if prefs is not None else "auto",
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


class _ModalSession:
    """invoke/modal shared by Upscale and Fine-tune: ``_begin`` returns a session that never blocks
    (``step``, ``progress``, ``message``, ``request_cancel``, ``finished``); a timer steps it, the panel
    and the status bar show its progress, Esc or the Cancel button stops it; ``_conclude`` ends it."""

    _timer = None
    _session = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not context.window_manager.texup_runtime.running

    def _chosen_infos(self, context: bpy.types.Context) -> Optional[list]:
        """The scanned TextureInfo of the chosen images (``self.images`` or the list's selection);
        ``None`` after reporting why there are none."""
        from . import scene

        names = chosen_names(context, self.images)
        if not names:
            self.report({"WARNING"}, "texup: no textures selected")
            return None
        by_name = {info.name: info for info in scene.scan()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            self.report({"ERROR"}, f"texup: not an image used by a texture node: {', '.join(unknown)}")
            return None
        return [by_name[n] for n in names]

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Blocking variant (scripts, background mode): the same session, waited for here."""
        session = self._begin(context)
        if session is None:
            return {"CANCELLED"}
        while not session.step(wait=0.1):
            pass
        return self._conclude(context, session)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if bpy.app.background:
            return self.execute(context)
        session = self._begin(context)  # returns at once: the worker's hello is awaited in modal()
        if session is None:
            return {"CANCELLED"}
        self._session = session
        runtime = context.window_manager.texup_runtime
        runtime.running = True
        runtime.cancel_requested = False
        runtime.progress = 0.0
        runtime.message = session.message
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        _redraw(context)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        runtime = context.window_manager.texup_runtime
        session = self._session
        if event.type == "ESC" and event.value == "PRESS":
            session.request_cancel()
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        if runtime.cancel_requested:
            session.request_cancel()
        session.step()
        runtime.progress = session.progress
        runtime.message = session.message
        context.workspace.status_text_set(f"texup: {runtime.message}  ({session.progress:.0%})  Esc: cancel")
        _redraw(context)
        if not session.finished:
            return {"RUNNING_MODAL"} if event.type == "ESC" else {"PASS_THROUGH"}
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        self._timer = None
        context.workspace.status_text_set(None)
        runtime.running = False
        runtime.cancel_requested = False
        runtime.message = ""
        self._session = None
        return self._conclude(context, session)


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


class TEXUP_OT_upscale(_ModalSession, bpy.types.Operator):
    bl_idname = "texup.upscale"
    bl_label = "Upscale Selected"
    bl_description = ("Upscale the selected textures with texup and use the results in every node that used "
                      "the originals (originals are kept; Revert restores them)")
    bl_options = {"REGISTER", "UNDO"}

    images: StringProperty(
        name="Images", description="Comma-separated image names; empty: the selected rows of the list",
        default="", options={"SKIP_SAVE"})

    def _begin(self, context: bpy.types.Context):
        """Scan and begin an :class:`~.session.UpscaleSession` (never waits for the worker); ``None``
        after reporting why not."""
        from .session import SessionError, UpscaleSession

        infos = self._chosen_infos(context)
        if infos is None:
            return None
        try:
            return UpscaleSession.begin(infos, run_settings(context), _worker_preference(context))
        except SessionError as err:
            self.report({"ERROR"}, f"texup: {err}")
            return None

    def _conclude(self, context: bpy.types.Context, session: Any) -> set[str]:
        """Apply the results, refresh the list and report (shared by execute and modal)."""
        session.finish()
        refresh_list(context)
        context.window_manager.texup_runtime.last_summary = session.summary()
        _redraw(context)
        if session.failure is not None:
            self.report({"ERROR"}, f"texup: {session.failure}; nothing was changed")
            return {"CANCELLED"}
        if session.cancelled_before_start:
            self.report({"INFO"}, session.summary())
            return {"CANCELLED"}
        report_outcomes(self, session.run)
        return {"FINISHED"}


class TEXUP_OT_finetune(_ModalSession, bpy.types.Operator):
    bl_idname = "texup.finetune"
    bl_label = "Fine-tune on These Textures"
    bl_description = ("Train the panel's model on the selected textures (exported next to the .blend under "
                      "texup_training/) in the texup worker, then set Model to the result so Upscale uses it")
    bl_options = {"REGISTER"}

    images: StringProperty(
        name="Images", description="Comma-separated image names; empty: the selected rows of the list",
        default="", options={"SKIP_SAVE"})

    def _begin(self, context: bpy.types.Context):
        """Export the dataset and begin a :class:`~.finetune.FineTuneSession`; ``None`` after reporting why not."""
        from .finetune import FineTuneSession
        from .session import SessionError

        infos = self._chosen_infos(context)
        if infos is None:
            return None
        try:
            session = FineTuneSession.begin(infos, finetune_settings(context), _worker_preference(context))
        except SessionError as err:
            self.report({"ERROR"}, f"texup: {err}")
            return None
        for name, why in session.failures:
            self.report({"WARNING"}, f"texup: {name} left out of the dataset: {why}")
        return session

    def _conclude(self, context: bpy.types.Context, session: Any) -> set[str]:
        for note in session.tracker.notes:  # the trainer's notes: data found, files skipped, fallbacks
            self.report({"INFO"}, f"texup: {note}")
        model = session.finish(context.scene)
        summary = session.summary()
        context.window_manager.texup_runtime.last_summary = summary
        _redraw(context)
        if session.failure is not None:
            self.report({"ERROR"}, summary)
            return {"CANCELLED"}
        if model is None:  # cancelled
            self.report({"INFO"}, summary)
            return {"CANCELLED"}
        self.report({"INFO"}, f"{summary}; Model is now {context.scene.texup.model}")
        return {"FINISHED"}


class TEXUP_OT_cancel(bpy.types.Operator):
    bl_idname = "texup.cancel"
    bl_label = "Cancel"
    bl_description = "Stop the running upscale after the current tile, or fine-tuning after the current step (same as Esc)"

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


CLASSES = (TEXUP_OT_refresh, TEXUP_OT_select, TEXUP_OT_upscale, TEXUP_OT_finetune, TEXUP_OT_cancel, TEXUP_OT_revert)
