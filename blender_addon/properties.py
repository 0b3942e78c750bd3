"""Data the panel shows and edits: the scanned texture list and the run settings (per scene), and the
progress of a running upscale (per window manager: not saved in the .blend)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

ROLE_ITEMS = [
    ("color", "Color", "Colour texture (sRGB): base colour, emission"),
    ("normal", "Normal", "Tangent-space normal map (renormalised after upscaling)"),
    ("data", "Data", "Non-colour data: roughness, metallic, height, AO (no colour transform)"),
]
ROLE_FILTER_ITEMS = [("ALL", "All Roles", "Show textures of every role")] + ROLE_ITEMS
SCALE_ITEMS = [("2", "2x", "Twice the width and height"), ("4", "4x", "Four times the width and height")]
SEAMLESS_ITEMS = [
    ("auto", "Auto", "Keep tileable textures tileable (detected from their edges)"),
    ("on", "On", "Treat every texture as tileable (wrap-around context)"),
    ("off", "Off", "Never wrap around"),
]

STAGE_ITEMS = [
    ("gan", "GAN", "ESRGAN's perceptual stage: pixel, VGG and adversarial losses (sharper detail)"),
    ("psnr", "PSNR", "L1 loss only (faithful, smoother; faster per step)"),
]


class TexupTextureItem(bpy.types.PropertyGroup):
    """One row of the texture list: a copy of a scan result (``name`` is the image datablock's name)."""

    selected: BoolProperty(name="Select", description="Upscale or revert this texture", default=False)
    width: IntProperty(name="Width")
    height: IntProperty(name="Height")
    role: StringProperty(name="Role")
    colorspace: StringProperty(name="Colour Space")
    source: StringProperty(name="Source")
    users: IntProperty(name="Users", description="Image nodes that use this image")
    udim_tiles: IntProperty(name="UDIM Tiles")
    has_alpha: BoolProperty(name="Alpha Used")
    status: StringProperty(name="Status")
    filepath: StringProperty(name="File")

    @property
    def source_label(self) -> str:
        return f"UDIM ({self.udim_tiles})" if self.source == "udim" else self.source

    @property
    def resolution_label(self) -> str:
        return f"{self.width}x{self.height}" if self.width else "-"


class TexupSettings(bpy.types.PropertyGroup):
    """The panel's settings and texture list, stored with the scene."""

    textures: CollectionProperty(type=TexupTextureItem)
    active_index: IntProperty(default=0)
    use_size_filter: BoolProperty(
        name="At Most", description="Only show textures whose larger side is at most this many pixels "
        "(the same rule as the headless --max-size)", default=False)
    max_size: IntProperty(name="Size", description="Pixels (larger side)", default=2048, min=1, soft_max=16384)
    role_filter: EnumProperty(name="Role", items=ROLE_FILTER_ITEMS, default="ALL")
    model: StringProperty(
        name="Model",
        description="Model name or weights file; empty: the default model from the preferences",
        default="",
    )
    scale: EnumProperty(name="Scale", items=SCALE_ITEMS, default="4")
    tile: IntProperty(
        name="Tile", description="Input tile size in pixels; 0: automatic (smaller uses less memory)",
        default=0, min=0, soft_max=2048)
    seamless: EnumProperty(name="Seamless", items=SEAMLESS_ITEMS, default="auto")
    finetune_steps: IntProperty(
        name="Steps", description="Training steps of a fine-tuning run (a few hundred adapt a model to a library)",
        default=300, min=1, soft_max=5000)
    finetune_stage: EnumProperty(name="Stage", items=STAGE_ITEMS, default="gan")
    finetune_config: StringProperty(
        name="Config",
        description="Optional training config file (.toml or .json) for every other setting: crop and batch size, "
                    "discriminator, learning rates; empty: texup's defaults",
        default="", subtype="FILE_PATH")


class TexupRuntime(bpy.types.PropertyGroup):
    """State of the running upscale, drawn by the panel (window manager: never saved)."""

    running: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty(default="")
    cancel_requested: BoolProperty(default=False)
    last_summary: StringProperty(default="")


CLASSES = (TexupTextureItem, TexupSettings, TexupRuntime)


def register_pointers() -> None:
    bpy.types.Scene.texup = PointerProperty(type=TexupSettings)
    bpy.types.WindowManager.texup_runtime = PointerProperty(type=TexupRuntime)


def unregister_pointers() -> None:
    del bpy.types.WindowManager.texup_runtime
    del bpy.types.Scene.texup
