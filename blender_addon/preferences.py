"""Add-on preferences: the worker (its real state, a Test button, the PyTorch installer), where results go,
the default model and device.

Drawing reads only state kept in memory (:mod:`.setup_ops`): the worker check and the PyTorch install
run on background threads and redraw when they change; nothing here touches files or starts processes
on a redraw except the first check of a session, which is started on a thread.
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from .bridge import options as schema
from .defaults import DEFAULT_MODEL, DEFAULT_OUT_DIR
from .ui import draw_worker_status

DEVICES = [
    ("auto", "Auto", "The fastest engine and device measured on this machine (once per model)"),
    ("cpu", "CPU", "Run on the CPU (ncnn, or PyTorch when installed: the faster one)"),
    ("vulkan", "Vulkan GPU", "The ncnn engine on the first Vulkan GPU (AMD, Intel, NVIDIA, Apple via MoltenVK)"),
    ("cuda", "CUDA", "An NVIDIA GPU through PyTorch (Install PyTorch below)"),
    ("mps", "MPS", "Apple silicon GPU through PyTorch (Install PyTorch below)"),
]
#: The Engine preference: texup's engines (the schema's ENGINES, in the order and with the texts of its ENGINE_LABELS).
ENGINES = [(name, label, description) for name, (label, description) in schema.ENGINE_LABELS.items()]


def _worker_python_changed(self, context: bpy.types.Context) -> None:
    from . import setup_ops

    setup_ops.worker_setting_changed(context)


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
