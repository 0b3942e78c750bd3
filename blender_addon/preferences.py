"""Add-on preferences: the worker's Python, where results go, the default model."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from .defaults import DEFAULT_MODEL, DEFAULT_OUT_DIR

DEVICES = [
    ("auto", "Auto", "CUDA, then Apple MPS, then CPU"),
    ("cpu", "CPU", "Run on the CPU"),
    ("cuda", "CUDA", "An NVIDIA GPU"),
    ("mps", "MPS", "Apple silicon GPU"),
]


def addon_package() -> str:
    """This add-on's package name (``bl_ext.<repo>.texup`` as an extension, the folder name as a legacy add-on)."""
    return __package__


def get_preferences(context: bpy.types.Context | None = None):
    """The add-on's preferences, or ``None`` when the add-on is not enabled (e.g. the headless script)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(addon_package())
    return None if addon is None else addon.preferences


class TexupPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    worker_python: StringProperty(
        name="Worker Python",
        description="Python executable (or virtual environment folder) with torch and texup installed. "
        "Empty: TEXUP_PYTHON, else a texup command on PATH",
        subtype="FILE_PATH",
        default="",
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

    def draw(self, context: bpy.types.Context) -> None:
        from .bridge.client import find_worker_python

        layout = self.layout
        layout.prop(self, "worker_python")
        found = find_worker_python(self.worker_python or None)
        row = layout.row()
        if found:
            row.label(text=f"Worker: {found} -m texup worker", icon="CHECKMARK")
        else:
            row.label(text="No Python with texup found: set one above (pip install texup in it)", icon="ERROR")
        layout.prop(self, "output_dir")
        layout.prop(self, "default_model")
        layout.prop(self, "device")


CLASSES = (TexupPreferences,)
