"""Operators: refresh the texture list, select, upscale and fine-tune (modal, never block), cancel, revert.

Heavy modules (the scan, the pipeline, the worker client) are imported inside the operators, so
enabling the add-on costs nothing.
"""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import EnumProperty, StringProperty

from .bridge.scene_options import scene_values
from .bridge.worker_protocol import TILE_MIN
from .defaults import DEFAULT_MODEL, DEFAULT_OUT_DIR
from .properties import redraw_panels, refresh_list, texture_list

TIMER_INTERVAL = 0.1


def filter_reasons(settings: Any, item: Any, *, short: bool = False) -> str | None:
    """Why the panel's filters (size limit, role) hide a list row, else ``None``: the headless script's
    rule (``bridge.jobs.filter_reason``; "at most N px" keeps a texture of exactly N px)."""
    from .bridge.jobs import filter_reason

    return filter_reason(
        (item.width, item.height),
        item.role,
        max_size=settings.max_size if settings.use_size_filter else None,
        roles=None if settings.role_filter == "ALL" else {settings.role_filter},
        short=short,
    )


def passes_filters(settings: Any, item: Any) -> bool:
    """True when a list row is visible under the panel's filters (size, role)."""
    return filter_reasons(settings, item) is None


def left_out(context: bpy.types.Context, *, short: bool = False) -> list[tuple[str, str]]:
    """``(image name, reason)`` for every listed texture the panel's filters leave out."""
    settings = context.scene.texup
    rows = []
    for item in texture_list(context).textures:
        reason = filter_reasons(settings, item, short=short)
        if reason is not None:
            rows.append((item.name, reason))
    return rows


def run_settings(context: bpy.types.Context):
    """The :class:`~.upscale_run.RunSettings` from the panel and the preferences."""
    from .properties import get_preferences
    from .upscale_run import RunSettings

    settings = context.scene.texup
    prefs = get_preferences(context)
    return RunSettings(
        model=panel_model(context),
        scale=int(settings.scale),
        tile=settings.tile and max(settings.tile, TILE_MIN),  # 0: automatic; 1..15 mean the smallest tile
        detail=settings.detail,
        device=prefs.device if prefs is not None else "auto",
        engine=prefs.engine if prefs is not None else "auto",
        out_dir=(prefs.output_dir if prefs is not None else "") or DEFAULT_OUT_DIR,
        **scene_options(settings),
    )


def scene_options(settings: Any) -> dict[str, Any]:
    """The scene's run options that texup's schema knows (seamless, colour fix, ...; bridge/scene_options.py), as
    :class:`~.upscale_run.RunSettings` takes them."""
    return scene_values(lambda name: getattr(settings, name), settings.bl_rna.properties.keys())


def panel_model(context: bpy.types.Context) -> str | None:
    """The panel's Model (a ``//`` path made absolute), else the preferences' default model, else ``None``."""
    from .properties import get_preferences

    prefs = get_preferences(context)
    default_model = prefs.default_model if prefs is not None else DEFAULT_MODEL
    model = context.scene.texup.model.strip()
    if model.startswith("//"):
        model = bpy.path.abspath(model)
    return model or default_model or None


def finetune_settings(context: bpy.types.Context):
    """The :class:`~.finetune.FineTuneSettings` from the panel: it starts from the panel's model."""
    from .finetune import FineTuneSettings
    from .properties import get_preferences

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
    return [item.name for item in texture_list(context).textures if item.selected and passes_filters(settings, item)]


def _worker_preference(context: bpy.types.Context) -> str | None:
    from .properties import get_preferences

    prefs = get_preferences(context)
    return prefs.worker_python if prefs is not None else None


def report_outcomes(operator: bpy.types.Operator, run: Any) -> None:
    """One report per failed image, and a summary line."""
    for row in run.failed:
        operator.report({"WARNING"}, f"texup: {row['name']}: {row['error']}")
    operator.report({"INFO"}, run.summary())


def runs_blocking(background: bool, windows: int) -> bool:
    """True when a run must wait for its worker in place: in background mode (``blender -b``, the bpy
    module) or without any window. Otherwise (a UI session: the panel's button, Repeat Last, a script's
    ``bpy.ops.texup.upscale()``) it runs in the modal operator: never blocks, shows progress, cancels."""
    return background or windows == 0


def push_undo(message: str) -> None:
    """An undo step for changes an operator made but will not finish with (cancelled runs)."""
    if bpy.ops.ed.undo_push.poll():
        bpy.ops.ed.undo_push(message=message)


def _status_text(context: bpy.types.Context, text: str | None) -> None:
    workspace = getattr(context, "workspace", None)
    if workspace is not None:
        workspace.status_text_set(text)


class _ModalSession:
    """invoke/modal shared by Upscale and Fine-tune: ``_begin`` returns a session that never blocks
    (``step``, ``progress``, ``message``, ``request_cancel``, ``finished``); a timer steps it, the panel
    and the status bar show its progress, Esc or the Cancel button stops it; ``_conclude`` ends it."""

    _timer = None
    _session = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not context.window_manager.texup_runtime.running

    def _chosen_infos(self, context: bpy.types.Context) -> list | None:
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
        """Scripts and Repeat Last. In background mode: the same session, waited for here. In a UI session
        the run starts as the modal operator (see :func:`runs_blocking`) and this call returns
        ``{'CANCELLED'}`` at once (so Blender keeps no half-done operator); the run goes on, shown in the
        panel and the status bar, cancelled by Esc or the Cancel button."""
        if not runs_blocking(bpy.app.background, len(context.window_manager.windows)):
            self._invoke_modal(context)
            return {"CANCELLED"}
        session = self._begin(context)
        if session is None:
            return {"CANCELLED"}
        while not session.step(wait=0.1):
            pass
        return self._conclude(context, session)

    def _invoke_modal(self, context: bpy.types.Context) -> None:
        """Start a new modal instance of this operator with this one's properties (a modal handler on
        the operator Blender repeats would outlive it)."""
        window = context.window or context.window_manager.windows[0]
        props = {
            name: getattr(self, name)
            for name in self.properties.bl_rna.properties.keys()
            if name != "rna_type" and self.properties.is_property_set(name)
        }
        idname = self.bl_idname  # "texup.upscale" on the class, "TEXUP_OT_upscale" on an instance
        module, name = idname.split(".") if "." in idname else idname.lower().split("_ot_")
        operator = getattr(getattr(bpy.ops, module), name)
        with context.temp_override(window=window, screen=window.screen):
            operator("INVOKE_DEFAULT", **props)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if runs_blocking(bpy.app.background, len(context.window_manager.windows)):
            return self.execute(context)
        session = self._begin(context)  # returns at once: the worker's hello is awaited in modal()
        if session is None:
            return {"CANCELLED"}
        if session.finished:  # nothing for the worker: every output was up to date
            return self._conclude(context, session)
        self._session = session
        runtime = context.window_manager.texup_runtime
        runtime.running = True
        runtime.cancel_requested = False
        runtime.progress = 0.0
        runtime.eta = ""
        runtime.message = session.message
        wm = context.window_manager
        window = context.window or wm.windows[0]
        self._timer = wm.event_timer_add(TIMER_INTERVAL, window=window)
        with context.temp_override(window=window, screen=window.screen):
            wm.modal_handler_add(self)
        redraw_panels(context)
        return {"RUNNING_MODAL"}

    def _show(self, context: bpy.types.Context, session: Any) -> None:
        runtime = context.window_manager.texup_runtime
        runtime.progress = session.progress
        runtime.message = session.message
        eta = getattr(session, "eta_s", None)
        from .bridge.jobs import format_duration

        runtime.eta = format_duration(eta) if eta is not None else ""
        _status_text(context, f"texup: {runtime.message}  ({session.progress:.0%})  Esc: cancel")
        redraw_panels(context)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        session = self._session
        if session is None:  # ended already (cancel() ran)
            return {"CANCELLED"}
        done = False
        try:
            runtime = context.window_manager.texup_runtime
            if event.type == "ESC" and event.value == "PRESS":
                session.request_cancel()
            elif event.type != "TIMER":
                return {"PASS_THROUGH"}
            if runtime.cancel_requested:
                session.request_cancel()
            session.step()
            self._show(context, session)
            if not session.finished:
                return {"RUNNING_MODAL"} if event.type == "ESC" else {"PASS_THROUGH"}
            done = True
        except BaseException:
            done = True
            raise
        finally:
            if done:
                self._end_modal(context)
        return self._conclude(context, session)

    def _end_modal(self, context: bpy.types.Context) -> None:
        """Remove the timer, clear the running state and the status bar (always, also after an error)."""
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        runtime = context.window_manager.texup_runtime
        runtime.running = False
        runtime.cancel_requested = False
        runtime.message = ""
        runtime.eta = ""
        _status_text(context, None)
        self._session = None
        redraw_panels(context)

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender aborts the modal operator (a file is loaded, the window closes): stop the job in the
        worker, drop temporary files, clear the running state; nothing is applied."""
        session = self._session
        if session is not None:
            session.request_cancel()
            cleanup = getattr(getattr(session, "run", None), "cleanup", None)
            if cleanup is not None:
                cleanup()
        self._end_modal(context)


class TEXUP_OT_refresh(bpy.types.Operator):
    bl_idname = "texup.refresh"
    bl_label = "Refresh Textures"
    bl_description = (
        "List every image used by an Image Texture node (materials, node groups, world); the "
        "list also refreshes itself when a file loads and after undo"
    )
    bl_options = {"INTERNAL"}  # a view of the scene: no undo step, not what Repeat Last repeats

    def execute(self, context: bpy.types.Context) -> set[str]:
        count = refresh_list(context)
        self.report({"INFO"}, f"texup: {count} texture(s)")
        return {"FINISHED"}


class TEXUP_OT_select(bpy.types.Operator):
    bl_idname = "texup.select"
    bl_label = "Select Textures"
    bl_description = "Select or deselect every texture the filters show"
    bl_options = {"INTERNAL"}  # the list is not undo data

    action: EnumProperty(items=[("ALL", "All", "Select all"), ("NONE", "None", "Deselect all")], default="ALL")

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.texup
        for item in texture_list(context).textures:
            if passes_filters(settings, item):
                item.selected = self.action == "ALL"
        return {"FINISHED"}


class TEXUP_OT_upscale(_ModalSession, bpy.types.Operator):
    bl_idname = "texup.upscale"
    bl_label = "Upscale Selected"
    bl_description = (
        "Upscale the selected textures with texup and use the results in every node that used "
        "the originals (originals are kept; Revert restores them)"
    )
    bl_options = {"REGISTER", "UNDO"}

    # Hidden: no "Adjust Last Operation" panel (redoing would run the whole upscale again).
    images: StringProperty(
        name="Images",
        description="Comma-separated image names; empty: the selected rows of the list",
        default="",
        options={"SKIP_SAVE", "HIDDEN"},
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        """Not while a run is under way; in a UI session also not while the last worker check found no
        working worker (greyed out, the reason in its tooltip). Scripts and ``blender -b`` are not held
        back: their run reports a worker that does not start."""
        if not super().poll(context):
            return False
        if runs_blocking(bpy.app.background, len(context.window_manager.windows)):
            return True
        from .bridge.health import upscale_blocked_reason
        from .setup_ops import WORKER_CHECK

        reason = upscale_blocked_reason(WORKER_CHECK.result, WORKER_CHECK.running)
        if reason is not None and hasattr(cls, "poll_message_set"):  # Blender 3.0+
            cls.poll_message_set(reason)
        return reason is None

    def _begin(self, context: bpy.types.Context):
        """Scan and begin an :class:`~.session.UpscaleSession` (never waits for the worker); ``None``
        after reporting why not."""
        from .session import SessionError, UpscaleSession

        infos = self._chosen_infos(context)
        if infos is None:
            return None
        hidden = left_out(context) if not self.images.strip() else []
        if hidden:  # nothing is left out silently
            self.report(
                {"INFO"},
                f"texup: {len(hidden)} left out by the filters: "
                + "; ".join(f"{name} ({why})" for name, why in hidden),
            )
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
        redraw_panels(context)
        if session.failure is not None:
            self.report({"ERROR"}, f"texup: {session.failure}; nothing was changed")
            return {"CANCELLED"}
        if session.cancelled_before_start:
            self.report({"INFO"}, session.summary())
            return {"CANCELLED"}
        report_outcomes(self, session.run)
        if session.run.tracker is not None and session.run.tracker.cancelled:
            # Cancelled: no redo panel (CANCELLED), but what was applied before the cancel gets its own
            # undo step, since Blender pushes none for a cancelled operator.
            if any(row.get("nodes_changed") for row in session.run.rows):
                push_undo("texup: Upscale (cancelled)")
            return {"CANCELLED"}
        return {"FINISHED"}


class TEXUP_OT_finetune(_ModalSession, bpy.types.Operator):
    bl_idname = "texup.finetune"
    bl_label = "Fine-tune on These Textures"
    bl_description = (
        "Train the panel's model on the selected textures (exported next to the .blend under "
        "texup_training/) in the texup worker, then set Model to the result so Upscale uses it"
    )
    bl_options = {"REGISTER"}

    images: StringProperty(
        name="Images",
        description="Comma-separated image names; empty: the selected rows of the list",
        default="",
        options={"SKIP_SAVE"},
    )

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
        redraw_panels(context)
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
    bl_description = (
        "Stop the running upscale (within a second or two; textures finished before stay upscaled), "
        "or fine-tuning after the current step (same as Esc)"
    )
    bl_options = {"INTERNAL"}

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
        name="Images",
        description="Comma-separated image names; empty: the selected rows of the list",
        default="",
        options={"SKIP_SAVE"},
    )

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
