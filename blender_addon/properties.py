"""Data the panel shows and edits.

The run settings (model, scale, tile, seamless, filters, fine-tuning) belong to the scene: saved with
the .blend, part of undo. The texture list is a view of the scene, not data: it lives on the window
manager (``WindowManager.texup_list``), so ticking a row's checkbox adds no undo step (Blender's UI
pushes none for window-manager properties) and undo never empties it. It fills itself: after a file
loads (``load_post``), after undo and redo (the scene's images may have changed), and when the panel is
drawn for a scene the list was not made for (a timer refresh: draw() never writes data). The progress of
a running upscale is on the window manager too (``texup_runtime``).

The modules above read from here: :func:`refresh_list` (the scan into the list), :func:`redraw_panels` and
:func:`get_preferences` (the add-on's preferences, defined in :mod:`.preferences`)."""

from __future__ import annotations

import time

import bpy
from bpy.app.handlers import persistent
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .bridge.scene_options import generated_properties
from .defaults import DEFAULT_MODEL

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

COLOR_FIX_ITEMS = [
    ("auto", "Auto", "Keep the source's low-frequency colour where texup measured that it helps (every role)"),
    ("on", "On", "Keep the source's low-frequency colour under the model's detail"),
    ("off", "Off", "The model's colour as it comes out"),
]

STAGE_ITEMS = [
    ("gan", "GAN", "ESRGAN's perceptual stage: pixel, VGG and adversarial losses (sharper detail)"),
    ("psnr", "PSNR", "L1 loss only (faithful, smoother; faster per step)"),
]


class TexupTextureItem(bpy.types.PropertyGroup):
    """One row of the texture list: a copy of a scan result (``name`` is the image datablock's name)."""

    selected: BoolProperty(name="Select", description="Include this texture when Upscale or Revert runs", default=False)
    width: IntProperty(name="Width", description="Width in pixels (UDIM: of the first tile)")
    height: IntProperty(name="Height", description="Height in pixels (UDIM: of the first tile)")
    role: StringProperty(
        name="Role", description="How texup treats it (from the material graph): colour, normal map or non-colour data"
    )
    colorspace: StringProperty(name="Colour Space", description="The image's colour space setting in Blender")
    source: StringProperty(name="Source", description="file, packed, generated, udim or missing")
    users: IntProperty(name="Users", description="Image nodes that use this image")
    udim_tiles: IntProperty(name="UDIM Tiles", description="Tiles of a UDIM image (0: not tiled)")
    has_alpha: BoolProperty(name="Alpha Used", description="A material uses the image's alpha output")
    status: StringProperty(name="Status", description="original, upscaled (a texup result) or missing")
    filepath: StringProperty(name="File", description="The image's file on disk")

    @property
    def source_label(self) -> str:
        return f"UDIM ({self.udim_tiles})" if self.source == "udim" else self.source


class TexupTextureList(bpy.types.PropertyGroup):
    """The panel's texture list (window manager: not saved with the scene, not part of undo)."""

    textures: CollectionProperty(type=TexupTextureItem)
    active_index: IntProperty(name="Active Texture", default=0)
    scene_name: StringProperty(
        name="Scene", description="The scene this list was made for (empty: never filled)", default=""
    )
    show_left_out: BoolProperty(
        name="Left Out", description="Show the textures the filters leave out, and why", default=False
    )


class TexupSettings(bpy.types.PropertyGroup):
    """The panel's run settings, stored with the scene."""

    use_size_filter: BoolProperty(
        name="At Most",
        description="Only list textures whose larger side is at most this many pixels "
        "(the same rule as the headless --max-size); the others are listed under 'left out'",
        default=False,
    )
    max_size: IntProperty(
        name="Size",
        description="The size limit in pixels (larger side; a texture of exactly this size is kept)",
        default=2048,
        min=1,
        soft_max=16384,
    )
    role_filter: EnumProperty(
        name="Role",
        description="Only list textures of this role; the others are listed under 'left out'",
        items=ROLE_FILTER_ITEMS,
        default="ALL",
    )
    model: StringProperty(
        name="Model",
        description="Model name (texup models list) or weights file (.safetensors, .pth, ncnn .param). "
        f"Empty: the Default Model of the add-on preferences ({DEFAULT_MODEL} unless changed)",
        default="",
    )
    detail: FloatProperty(
        name="Detail",
        description="How much of the model's invented detail: 1 is the model, 0 its smooth PSNR partner, between "
        "them a blend of the two networks (ESRGAN's network interpolation). Only for models with a partner",
        default=1.0,
        min=0.0,
        max=1.0,
        step=5,
        subtype="FACTOR",
    )
    scale: EnumProperty(name="Scale", description="How much larger the results are", items=SCALE_ITEMS, default="4")
    tile: IntProperty(
        name="Tile",
        description="Input tile size in pixels. 0: automatic (the largest tile that fits the "
        "device's memory); otherwise at least 16; a smaller tile uses less memory and makes progress and cancel finer",
        default=0,
        min=0,
        soft_max=2048,
    )
    seamless: EnumProperty(
        name="Seamless",
        description="Keep tileable textures tileable (wrap-around at the edges)",
        items=SEAMLESS_ITEMS,
        default="auto",
    )
    color_fix: EnumProperty(
        name="Colour Fix",
        description="Keep each texture's own colour: the model's detail on the source's low frequencies "
        "(models drift white balance and the brightness of large areas)",
        items=COLOR_FIX_ITEMS,
        default="auto",
    )
    finetune_steps: IntProperty(
        name="Steps",
        description="Training steps of a fine-tuning run (a few hundred adapt a model to a library)",
        default=300,
        min=1,
        soft_max=5000,
    )
    finetune_stage: EnumProperty(
        name="Stage", description="Which training stage to run", items=STAGE_ITEMS, default="gan"
    )
    finetune_config: StringProperty(
        name="Config",
        description="Optional training config file (.toml or .json) for every other setting: crop and batch size, "
        "discriminator, learning rates; empty: texup's defaults",
        default="",
        subtype="FILE_PATH",
    )


# The schema's run options the scene holds without a hand-made property above (a new option of texup.options):
# each the property its Option describes (bridge/scene_options.py), added before the class is registered.
for _name, (_kind, _kwargs) in generated_properties(TexupSettings.__annotations__).items():
    TexupSettings.__annotations__[_name] = getattr(bpy.props, _kind)(**_kwargs)


class TexupRuntime(bpy.types.PropertyGroup):
    """State of the running upscale, drawn by the panel (window manager: never saved)."""

    running: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty(default="")
    cancel_requested: BoolProperty(default=False)
    last_summary: StringProperty(default="")
    eta: StringProperty(default="")  # "1m05s" while there is an estimate of the time left


def addon_package() -> str:
    """This add-on's package name (``bl_ext.<repo>.texup`` as an extension, the folder name as a legacy add-on)."""
    return __package__


def get_preferences(context: bpy.types.Context | None = None):
    """The add-on's preferences, or ``None`` when the add-on is not enabled (e.g. the headless script)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(addon_package())
    return None if addon is None else addon.preferences


def texture_list(context: bpy.types.Context):
    """The panel's texture list (:class:`TexupTextureList`)."""
    return context.window_manager.texup_list


def list_is_stale(context: bpy.types.Context) -> bool:
    """True when the list was never filled or was made for another scene."""
    return texture_list(context).scene_name != context.scene.name


def refresh_list(context: bpy.types.Context) -> int:
    """Scan the file and refill the texture list (window manager) for the context's scene, keeping each
    image's selection and the active row's image. Returns the count."""
    from . import scene

    textures = texture_list(context)
    selected = {item.name for item in textures.textures if item.selected}
    active = (
        textures.textures[textures.active_index].name if 0 <= textures.active_index < len(textures.textures) else None
    )
    infos = scene.scan()
    textures.textures.clear()
    for info in infos:
        item = textures.textures.add()
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
    names = [info.name for info in infos]
    if active in names:
        textures.active_index = names.index(active)
    else:
        textures.active_index = min(textures.active_index, max(0, len(infos) - 1))
    textures.scene_name = context.scene.name
    return len(infos)


def redraw_panels(context: bpy.types.Context) -> None:
    """Redraw every area that shows the texup panel (3D Viewport, Image Editor)."""
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


_REFRESH_PAUSE = 1.0  # seconds between refreshes that draw() asks for (no loop when two windows differ)
_last_draw_refresh = [float("-inf")]


def _refresh_now() -> None:
    context = bpy.context
    if getattr(context, "window_manager", None) is None or getattr(context, "scene", None) is None:
        return
    if not hasattr(context.window_manager, "texup_list"):  # the add-on was disabled meanwhile
        return
    refresh_list(context)


def _timer_refresh():
    _refresh_now()
    _redraw()
    return None  # once


def request_refresh_from_draw(context: bpy.types.Context) -> None:
    """Schedule a list refresh (draw() must not write data): at most one per second."""
    now = time.monotonic()
    if now - _last_draw_refresh[0] < _REFRESH_PAUSE or bpy.app.timers.is_registered(_timer_refresh):
        return
    _last_draw_refresh[0] = now
    bpy.app.timers.register(_timer_refresh, first_interval=0.0)


@persistent
def _on_load_post(*_args) -> None:
    wm = getattr(bpy.context, "window_manager", None)
    runtime = getattr(wm, "texup_runtime", None)
    if runtime is not None:  # a file saved during a run: its window manager says "running"
        runtime.running = False
        runtime.cancel_requested = False
        runtime.message = ""
        runtime.eta = ""
    _refresh_now()


@persistent
def _on_undo_redo(*_args) -> None:
    if (
        getattr(bpy.context.window_manager, "texup_runtime", None) is not None
        and bpy.context.window_manager.texup_runtime.running
    ):
        return  # the running upscale refreshes the list when it ends
    _refresh_now()
    _redraw()  # the sidebars show the new list now, not at the next mouse move


def _redraw() -> None:
    if getattr(bpy.context, "window_manager", None) is not None:
        redraw_panels(bpy.context)


_HANDLERS = (
    (bpy.app.handlers.load_post, _on_load_post),
    (bpy.app.handlers.undo_post, _on_undo_redo),
    (bpy.app.handlers.redo_post, _on_undo_redo),
)


CLASSES = (TexupTextureItem, TexupTextureList, TexupSettings, TexupRuntime)


def register_pointers() -> None:
    """The scene's settings, the window manager's list and run state, and the handlers that refill the list."""
    bpy.types.Scene.texup = PointerProperty(type=TexupSettings)
    bpy.types.WindowManager.texup_list = PointerProperty(type=TexupTextureList)
    bpy.types.WindowManager.texup_runtime = PointerProperty(type=TexupRuntime)
    for handlers, handler in _HANDLERS:
        if handler not in handlers:
            handlers.append(handler)


def unregister_pointers() -> None:
    for handlers, handler in _HANDLERS:
        while handler in handlers:
            handlers.remove(handler)
    if bpy.app.timers.is_registered(_timer_refresh):
        bpy.app.timers.unregister(_timer_refresh)
    del bpy.types.WindowManager.texup_runtime
    del bpy.types.WindowManager.texup_list
    del bpy.types.Scene.texup
