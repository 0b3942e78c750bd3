"""Setting the worker up from Preferences: Test Worker, Install PyTorch, Remove PyTorch environment.

The worker check (:class:`bridge.health.HealthCheck`) and the PyTorch install
(:class:`bridge.torch_env.TorchInstaller`) run on background threads; the operators start them and a
timer (``bpy.app.timers``, or the install operator's modal timer) redraws the preferences and the panel
when something changed. Drawing only reads the state kept here: no file access, no process start.
"""

from __future__ import annotations

import os
from typing import Any

import bpy

from .bridge.health import HealthCheck
from .bridge.torch_env import TorchInstaller, installed, plan_install, remove_torch_env

POLL_INTERVAL = 0.25
"""Seconds between looks at a running check or install."""

WORKER_CHECK = HealthCheck()
"""The last worker check of this Blender session (``result`` None: not checked yet)."""

_installer: TorchInstaller | None = None
_torch_state: dict[str, Any] = {"known": False, "marker": None}


def user_dir() -> str | None:
    """The extension's user folder (where the PyTorch environment lives); ``None`` for a legacy add-on."""
    from . import service

    return service.user_dir()


def installer_available() -> bool:
    """The PyTorch installer needs the extension user folder of Blender 4.2+ (none in 3.x)."""
    return user_dir() is not None


def installer() -> TorchInstaller | None:
    """The running or last finished PyTorch install of this session."""
    return _installer


def torch_env_marker() -> dict[str, Any] | None:
    """The installed PyTorch environment's marker as last read off the disk (by a check or an operator)."""
    return _torch_state["marker"]


def torch_state_known() -> bool:
    return bool(_torch_state["known"])


def refresh_torch_state() -> None:
    """Read the PyTorch environment's marker (file access: never from a draw function)."""
    _torch_state["marker"] = installed(user_dir())
    _torch_state["known"] = True


def _worker_preference(context: bpy.types.Context) -> str | None:
    from .properties import get_preferences

    prefs = get_preferences(context)
    return (prefs.worker_python or None) if prefs is not None else None


def redraw_all() -> None:
    """Redraw the preferences and every texup panel (from timers: no context needed)."""
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"PREFERENCES", "VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


def _watch_check() -> float | None:
    """Timer: redraw once the worker check has ended."""
    if WORKER_CHECK.running:
        return POLL_INTERVAL
    redraw_all()
    return None


def start_worker_check(context: bpy.types.Context) -> bool:
    """Check the worker the current settings resolve to, in the background; False when one is running.

    The preference is read here (main thread); resolving the launch (file access) and the check run on
    the check's thread, and so does reading the PyTorch environment's marker.
    """
    from . import service

    preference = _worker_preference(context)

    def resolve() -> Any:
        refresh_torch_state()
        return service.resolve_launch(preference)

    started = WORKER_CHECK.start(resolve)
    if started and not bpy.app.background and not bpy.app.timers.is_registered(_watch_check):
        bpy.app.timers.register(_watch_check, first_interval=POLL_INTERVAL)
    return started


def ensure_worker_checked(context: bpy.types.Context) -> None:
    """Start the first check of the session (the first time the preferences or the panel is drawn)."""
    if not WORKER_CHECK.requested and not WORKER_CHECK.running:
        start_worker_check(context)


def worker_setting_changed(context: bpy.types.Context) -> None:
    """The Worker Python preference changed: the old result no longer holds; check again."""
    WORKER_CHECK.forget()
    start_worker_check(context)


class TEXUP_OT_test_worker(bpy.types.Operator):
    bl_idname = "texup.test_worker"
    bl_label = "Test Worker"
    bl_description = (
        "Start the texup worker the settings point to and ask it what it runs on "
        "(texup and PyTorch versions, engines, devices)"
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not WORKER_CHECK.running

    def execute(self, context: bpy.types.Context) -> set[str]:
        WORKER_CHECK.forget()
        start_worker_check(context)
        if bpy.app.background:  # scripts: the answer is wanted now
            report = WORKER_CHECK.wait()
            if report is None or not report.ok:
                self.report({"ERROR"}, f"texup: {report.error if report else 'the check did not finish'}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"texup: worker texup {report.texup} ready ({report.python})")
        redraw_all()
        return {"FINISHED"}


class TEXUP_OT_install_torch(bpy.types.Operator):
    bl_idname = "texup.install_torch"
    bl_label = "Install PyTorch (for training and NVIDIA CUDA)"
    bl_description = (
        "Download PyTorch (the CUDA build with an NVIDIA GPU, else the CPU build; hundreds of MB "
        "to a few GB) into a Python environment in this extension's user folder. Fine-tuning and "
        "the CUDA engine use it. Esc cancels"
    )

    _timer = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return installer_available() and not (_installer is not None and _installer.running)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        global _installer
        folder = user_dir()
        if folder is None:
            self.report(
                {"ERROR"},
                "texup: installing PyTorch needs Blender 4.2+ with texup installed as an "
                "extension; set Worker Python to an environment with texup[torch] instead",
            )
            return {"CANCELLED"}
        if _installer is not None and _installer.running:
            self.report({"WARNING"}, "texup: PyTorch is being installed already")
            return {"CANCELLED"}
        plan = plan_install(folder)
        _installer = TorchInstaller(plan)
        _installer.start()
        if bpy.app.background or not context.window_manager.windows:
            _installer.wait()
            return self._conclude(context)
        wm = context.window_manager
        window = context.window or wm.windows[0]
        self._timer = wm.event_timer_add(POLL_INTERVAL, window=window)
        wm.modal_handler_add(self)
        self.report({"INFO"}, f"texup: installing {plan.summary()}")
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        job = _installer
        if job is None:
            self._end(context)
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not job.done:
            _status(context, f"texup: {job.message}  ({job.fraction:.0%})  Esc: cancel")
            redraw_all()
            return {"RUNNING_MODAL"} if event.type == "ESC" else {"PASS_THROUGH"}
        self._end(context)
        return self._conclude(context)

    def cancel(self, context: bpy.types.Context) -> None:
        """Blender stops the operator (a file is loaded, the window closes): stop the install too."""
        if _installer is not None:
            _installer.cancel()
        self._end(context)

    def _end(self, context: bpy.types.Context) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        _status(context, None)
        redraw_all()

    def _conclude(self, context: bpy.types.Context) -> set[str]:
        from . import service

        job = _installer
        assert job is not None and job.done
        refresh_torch_state()
        if job.cancelled:
            self.report({"WARNING"}, "texup: PyTorch install cancelled; nothing was changed")
            return {"CANCELLED"}
        if job.error is not None:
            self.report({"ERROR"}, f"texup: PyTorch was not installed: {job.error} (log: {job.plan.log_path})")
            return {"CANCELLED"}
        service.stop_worker()  # the next job starts a worker on the new environment
        WORKER_CHECK.forget()
        start_worker_check(context)
        self.report(
            {"INFO"}, f"texup: PyTorch {job.marker.get('torch') if job.marker else ''} installed in {job.plan.env_dir}"
        )
        return {"FINISHED"}


class TEXUP_OT_cancel_torch_install(bpy.types.Operator):
    bl_idname = "texup.cancel_torch_install"
    bl_label = "Cancel"
    bl_description = "Stop installing PyTorch; the partly made environment is removed"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _installer is not None and _installer.running

    def execute(self, context: bpy.types.Context) -> set[str]:
        if _installer is not None:
            _installer.cancel()
        return {"FINISHED"}


class TEXUP_OT_remove_torch_env(bpy.types.Operator):
    bl_idname = "texup.remove_torch_env"
    bl_label = "Remove PyTorch Environment"
    bl_description = "Delete the PyTorch environment from the extension's user folder (texup keeps working on ncnn)"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return installer_available() and not (_installer is not None and _installer.running)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        from . import service

        folder = user_dir()
        if folder is None:
            return {"CANCELLED"}
        service.stop_worker()  # it may run from that environment
        try:
            removed = remove_torch_env(folder)
        except OSError as err:
            self.report({"ERROR"}, f"texup: could not remove {os.path.join(folder, 'torch-env')}: {err}")
            return {"CANCELLED"}
        finally:
            refresh_torch_state()
        WORKER_CHECK.forget()
        start_worker_check(context)
        self.report({"INFO"}, "texup: PyTorch environment removed" if removed else "texup: no PyTorch environment")
        return {"FINISHED"}


def _status(context: bpy.types.Context, text: str | None) -> None:
    workspace = getattr(context, "workspace", None)
    if workspace is not None:
        workspace.status_text_set(text)


CLASSES = (TEXUP_OT_test_worker, TEXUP_OT_install_torch, TEXUP_OT_cancel_torch_install, TEXUP_OT_remove_torch_env)
