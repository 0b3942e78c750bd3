"""Add-on preferences: the worker (its real state, a Test button, the PyTorch installer), where results go,
the default model and device.

Drawing reads only state kept in memory (:mod:`.setup_ops`): the worker check and the PyTorch install
run on background threads and redraw when they change; nothing here touches files or starts processes
on a redraw except the first check of a session, which is started on a thread.
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from .defaults import DEFAULT_MODEL, DEFAULT_OUT_DIR

DEVICES = [
    ("auto", "Auto", "The fastest engine and device measured on this machine (once per model)"),
    ("cpu", "CPU", "Run on the CPU (ncnn, or PyTorch when installed: the faster one)"),
    ("vulkan", "Vulkan GPU", "The ncnn engine on the first Vulkan GPU (AMD, Intel, NVIDIA, Apple via MoltenVK)"),
    ("cuda", "CUDA", "An NVIDIA GPU through PyTorch (Install PyTorch below)"),
    ("mps", "MPS", "Apple silicon GPU through PyTorch (Install PyTorch below)"),
]
ENGINES = [
    ("auto", "Auto", "The faster engine for the device, measured on this machine once per model"),
    ("ncnn", "ncnn", "ncnn: CPU and Vulkan GPUs, no PyTorch needed"),
    ("torch", "PyTorch", "PyTorch: CPU, CUDA, Apple MPS (Install PyTorch below)"),
]


PREFERENCES_WIDTH = 730
"""The Preferences window's region width at scale 1, for drawing outside a window (wraps the status)."""


def addon_package() -> str:
    """This add-on's package name (``bl_ext.<repo>.texup`` as an extension, the folder name as a legacy add-on)."""
    return __package__


def get_preferences(context: bpy.types.Context | None = None):
    """The add-on's preferences, or ``None`` when the add-on is not enabled (e.g. the headless script)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(addon_package())
    return None if addon is None else addon.preferences


def _worker_python_changed(self, context: bpy.types.Context) -> None:
    from . import setup_ops

    setup_ops.worker_setting_changed(context)


def draw_worker_status(
    layout: bpy.types.UILayout, context: bpy.types.Context, *, details: bool = False, compact: bool = False
) -> None:
    """The worker's state from its last check, in short lines with icons, for the preferences and the
    panel. The first call of a session starts a check (on a thread); before it ends: "checking".

    Every line is wrapped to the region's width (Blender would cut it): a failed check shows what went
    wrong and, whole, what fixes it, and a Check Again button. ``details``: also one line per device;
    ``compact``: the sidebar's short lines. Reads memory only (no file access, no process start here).
    """
    from . import setup_ops
    from .bridge.health import compact_status_lines, device_lines, status_lines
    from .bridge.text_fit import DEFAULT_SIDEBAR_WIDTH
    from .ui import draw_lines, sidebar

    setup_ops.ensure_worker_checked(context)
    check = setup_ops.WORKER_CHECK
    report = check.result
    column = layout.column(align=True)
    side = sidebar(context, DEFAULT_SIDEBAR_WIDTH if compact else PREFERENCES_WIDTH)
    # The preferences draw an add-on's settings in its expanded, indented box: 40 px more room kept.
    width = side.label(icon=True, boxed=not compact) - (0 if compact else 40 * side.scale)
    if compact:
        lines = compact_status_lines(
            report,
            running=check.running,
            width=width,
            measure=side.width_of,
            problem_lines=4,
        )
    else:
        lines = status_lines(report, running=check.running)
    for icon, text in lines:
        draw_lines(column, side.lines(text, width), icon=icon)
    if details:
        for line in device_lines(report):
            draw_lines(column, side.lines(line, width), icon="BLANK1")
    if compact and report is not None and not report.ok and not check.running:
        column.operator("texup.test_worker", text="Check Again", icon="FILE_REFRESH")


def draw_torch_section(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The PyTorch installer: install button, progress with Cancel, the result and the log file."""
    from . import setup_ops

    box = layout.box()
    box.label(text="PyTorch (training, NVIDIA CUDA)", icon="PACKAGE")
    if not setup_ops.installer_available():
        box.label(text="Installing PyTorch needs Blender 4.2+ with texup installed as an extension.", icon="INFO")
        box.label(text="Here, set Worker Python to an environment where texup[torch] is installed.", icon="BLANK1")
        return
    job = setup_ops.installer()
    if job is not None and job.running:
        row = box.row()
        row.label(text=f"{job.message} ({job.fraction:.0%})", icon="IMPORT")
        row.operator("texup.cancel_torch_install", text="Cancel", icon="CANCEL")
        box.label(text=f"Log: {job.plan.log_path}", icon="TEXT")
        return
    marker = setup_ops.torch_env_marker()
    if marker is not None:
        build = "CUDA " + str(marker.get("cuda_version")) if marker.get("cuda") else "CPU"
        box.label(text=f"Installed: torch {marker.get('torch')} ({build})", icon="CHECKMARK")
        row = box.row()
        row.operator("texup.install_torch", text="Reinstall", icon="FILE_REFRESH")
        row.operator("texup.remove_torch_env", text="Remove", icon="TRASH")
    else:
        if not setup_ops.torch_state_known():
            box.label(text="Not checked yet", icon="QUESTION")
        box.operator("texup.install_torch", icon="IMPORT")
    if job is not None and job.done and job.error is not None:
        box.label(text=f"Install failed: {job.error}", icon="ERROR")
        box.label(text=f"Log: {job.plan.log_path}", icon="TEXT")
    elif job is not None and job.cancelled:
        box.label(text="Install cancelled; nothing was changed", icon="INFO")


class TexupPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    worker_python: StringProperty(
        name="Worker Python",
        description="Optional: the Python executable (or virtual environment folder) of an environment with "
        "texup installed. Empty: TEXUP_PYTHON, else the PyTorch environment installed below, else Blender's "
        "own Python with the bundled texup",
        subtype="FILE_PATH",
        default="",
        update=_worker_python_changed,
    )
    output_dir: StringProperty(
        name="Output Folder",
        description="Where upscaled files are written; // is the folder of the .blend file. "
        "Unsaved files get their results packed",
        subtype="DIR_PATH",
        default=DEFAULT_OUT_DIR,
    )
    default_model: StringProperty(
        name="Default Model",
        description="A known model name (texup models list) or a weights file (.safetensors, .pth, ncnn .param)",
        default=DEFAULT_MODEL,
    )
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    engine: EnumProperty(name="Engine", items=ENGINES, default="auto")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        box = layout.box()
        box.prop(self, "worker_python")
        draw_worker_status(box, context, details=True)  # full width: long errors wrap over lines
        row = box.row()
        row.alignment = "LEFT"
        row.operator("texup.test_worker", text="Test", icon="PLAY")
        draw_torch_section(layout, context)
        layout.prop(self, "output_dir")
        layout.prop(self, "default_model")
        layout.prop(self, "device")
        layout.prop(self, "engine")


CLASSES = (TexupPreferences,)
