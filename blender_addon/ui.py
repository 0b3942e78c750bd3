"""The texup panel, in the 3D Viewport sidebar and the Image Editor sidebar (tab "texup").

Laid out for the default sidebar width (about 230 px): the list has three columns under a header row
(checkbox, status icon and name, size); the active row's role, colour space, source and the rest are in the
"Texture Details" sub-panel; the settings explain themselves in their tooltips; what the filters leave
out is listed under the list; fine-tuning is a sub-panel of its own. draw() only reads: a list that
is empty or made for another scene is refilled from a timer.

Blender cuts a label that is too wide ("groupt..."), so every text is fitted here to the region's width
(:mod:`.bridge.text_fit`): long texts wrap over lines, names are shortened in the middle so their end
stays ("brick_wa…_2k.png"), and the worker's fix is always shown whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import bpy

from .bridge.text_fit import DEFAULT_SIDEBAR_WIDTH, UI_POINTS, Sidebar
from .operators import left_out, passes_filters
from .properties import list_is_stale, request_refresh_from_draw, texture_list

_STATUS_ICONS = {"original": "IMAGE_DATA", "upscaled": "CHECKMARK", "missing": "ERROR"}
_ROLE_LABELS = {"color": "Color", "normal": "Normal", "data": "Data"}
_NAME_FACTOR = 0.7  # the header's split: "Status, Texture" and "Size" (the rows' split depends on the size text)
_DETAILS_FACTOR = 0.36  # the details' split: the field's name and its value


PREFERENCES_WIDTH = 730
"""The Preferences window's region width at scale 1, for drawing outside a window (wraps the status)."""


def size_label(width: int, height: int) -> str:
    """The larger side, as the size filter reads it: ``"2k"`` for 2048 px (a multiple of 1024: the k of
    texture artists), ``"300"`` otherwise, ``"-"`` without a size. The Texture Details sub-panel has both
    sides; the list keeps its room for the names."""
    side = max(width, height)
    if not side:
        return "-"
    return f"{side // 1024}k" if side % 1024 == 0 else str(side)


def ui_scale(context: bpy.types.Context) -> float:
    """Pixels per point of the labels: the interface scale (with the display's DPI) times the label
    font's size against Blender's default 11 points."""
    prefs = context.preferences
    scale = getattr(prefs.system, "ui_scale", 0.0) or prefs.view.ui_scale or 1.0
    points = []
    for style in prefs.ui_styles[:1]:
        for name in ("widget", "widget_label"):
            font = getattr(style, name, None)
            if font is not None:
                points.append(font.points)
    return scale * max(points or [UI_POINTS]) / UI_POINTS


def sidebar(context: bpy.types.Context, default_width: float = DEFAULT_SIDEBAR_WIDTH) -> Sidebar:
    """The pixel budget of the region being drawn (when there is none, one ``default_width`` wide at
    scale 1: the default sidebar's)."""
    scale = ui_scale(context)
    region = getattr(context, "region", None)
    width = getattr(region, "width", 0) or 0
    return Sidebar(region_width=width if width > 1 else default_width * scale, scale=scale, font=ui_font(context))


def ui_font(context: bpy.types.Context) -> str:
    """The interface font's table in :mod:`.bridge.text_fit`: Blender's own (DejaVu Sans before 4.0, Inter
    since), or the wider of the two for a font the user chose."""
    if getattr(context.preferences.view, "font_path_ui", ""):
        return "any"
    return "dejavu" if bpy.app.version < (4, 0, 0) else "inter"


def draw_lines(layout: bpy.types.UILayout, lines: list[str], icon: str = "NONE") -> None:
    """Labels, one per line; ``icon`` on the first, the others indented to match."""
    for index, line in enumerate(lines):
        layout.label(text=line, icon=icon if index == 0 or icon == "NONE" else "BLANK1")


def draw_pair(layout: bpy.types.UILayout, label: str, value: str, factor: float, width: float, side: Sidebar) -> None:
    """``label`` left, ``value`` right (a split at ``factor``); a value wider than ``width`` wraps over
    further rows of the right column."""
    pieces = side.lines(value, width) or [""]
    for index, piece in enumerate(pieces):
        split = layout.split(factor=factor, align=True)
        split.label(text=label if index == 0 else "")
        split.label(text=piece)


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


class TEXUP_UL_textures(bpy.types.UIList):
    """Rows: select, status icon and name, size (the rest is in the Texture Details sub-panel)."""

    bl_idname = "TEXUP_UL_textures"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "selected", text="")
        size = size_label(item.width, item.height)
        side = sidebar(context)
        factor, name_width = side.list_split(size)
        split = row.split(factor=factor, align=True)
        split.label(text=side.fit(item.name, name_width), icon=_STATUS_ICONS.get(item.status, "IMAGE_DATA"))
        right = split.row(align=True)
        right.alignment = "RIGHT"
        right.label(text=size)

    def filter_items(self, context, data, propname):
        items = getattr(data, propname)
        settings = context.scene.texup
        flags = [self.bitflag_filter_item if passes_filters(settings, item) else 0 for item in items]
        if self.filter_name:
            needle = self.filter_name.lower()
            flags = [f if needle in item.name.lower() else 0 for f, item in zip(flags, items)]
        return flags, []


def _list_header(layout: bpy.types.UILayout) -> None:
    """Column names above the list, aligned with its rows."""
    row = layout.row(align=True)
    row.label(text="", icon="CHECKBOX_HLT")
    split = row.split(factor=_NAME_FACTOR, align=True)
    split.label(text="Status, Texture")
    right = split.row(align=True)
    right.alignment = "RIGHT"
    right.label(text="Size")


def _default_model(context: bpy.types.Context) -> str:
    from .defaults import DEFAULT_MODEL
    from .properties import get_preferences

    prefs = get_preferences(context)
    return (prefs.default_model if prefs is not None else "") or DEFAULT_MODEL


def _draw_left_out(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """What the filters and the size limit leave out, with the reason per texture (collapsible)."""
    hidden = left_out(context, short=True)
    if not hidden:
        return
    textures = texture_list(context)
    box = layout.box()
    row = box.row()
    row.prop(
        textures,
        "show_left_out",
        text=f"{len(hidden)} left out by the filters",
        icon="TRIA_DOWN" if textures.show_left_out else "TRIA_RIGHT",
        emboss=False,
    )
    if textures.show_left_out:
        col = box.column(align=True)
        side = sidebar(context)
        width = side.label(boxed=True, factor=0.5)
        for name, why in hidden:
            draw_pair(col, side.fit(name, width), why, 0.5, width, side)


def _draw_progress(layout: bpy.types.UILayout, context: bpy.types.Context, runtime) -> None:
    col = layout.column(align=True)
    text = f"{runtime.progress:.0%}" + (f"  ETA {runtime.eta}" if runtime.eta else "")
    if hasattr(col, "progress"):  # Blender 4.0+
        col.progress(factor=runtime.progress, type="BAR", text=text)
    else:  # a slider of the 0..1 value is the bar (it is overwritten every tenth of a second)
        col.prop(runtime, "progress", text=text, slider=True)
    draw_lines(col, sidebar(context).wrap(runtime.message, max_lines=3))
    col.operator("texup.cancel", icon="CANCEL", text="Cancel (Esc)")


def _draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.texup
    textures = texture_list(context)
    runtime = context.window_manager.texup_runtime
    side = sidebar(context)
    if list_is_stale(context):
        request_refresh_from_draw(context)

    draw_worker_status(
        layout, context, compact=True
    )  # the worker's real state from its last check (a thread starts one)

    col = layout.column(align=True)
    row = col.row(align=True)
    row.prop(settings, "use_size_filter", text="At most")
    sub = row.row(align=True)
    sub.active = settings.use_size_filter
    sub.prop(settings, "max_size", text="px")
    row = col.row(align=True)
    row.prop(settings, "role_filter", text="")
    row.operator("texup.refresh", text="", icon="FILE_REFRESH")

    _list_header(layout)
    layout.template_list("TEXUP_UL_textures", "", textures, "textures", textures, "active_index", rows=5)
    shown = [item for item in textures.textures if passes_filters(settings, item)]
    chosen = sum(item.selected for item in shown)
    row = layout.row(align=True)
    row.operator("texup.select", text="All").action = "ALL"
    row.operator("texup.select", text="None").action = "NONE"
    row.label(text=f"{chosen} of {len(shown)}")
    _draw_left_out(layout, context)

    col = layout.column(align=True)
    col.prop(settings, "model", text="", icon="MODIFIER")
    if not settings.model.strip():
        draw_lines(col, side.wrap(f"Default: {_default_model(context)}"))
    _draw_detail(col, context, side)
    row = col.row(align=True)
    row.prop(settings, "scale", expand=True)
    col.prop(settings, "tile", text="Tile (0: auto)")
    split = col.split(factor=0.42, align=True)
    split.label(text="Seamless")
    split.prop(settings, "seamless", text="")
    split = col.split(factor=0.42, align=True)
    split.label(text="Colour Fix")
    split.prop(settings, "color_fix", text="")
    split = col.split(factor=0.42, align=True)
    split.label(text="Alpha")
    split.prop(settings, "alpha", text="")

    if runtime.running:
        _draw_progress(layout, context, runtime)
        return
    col = layout.column(align=True)
    col.scale_y = 1.3
    col.operator("texup.upscale", icon="RENDER_STILL", text=f"Upscale {chosen}" if chosen else "Upscale")
    if _upscale_blocked():  # greyed out by its poll: say why here too (the tooltip says it on hover)
        draw_lines(
            layout.column(align=True),
            side.wrap("Upscale needs a working worker (see above)", icon=True),
            icon="INFO",
        )
    col = layout.column(align=True)
    col.operator("texup.revert", icon="LOOP_BACK", text="Revert")
    if runtime.last_summary:
        draw_lines(layout.column(align=True), side.wrap(runtime.last_summary.removeprefix("texup: ")))


def _draw_detail(col: bpy.types.UILayout, context: bpy.types.Context, side: Sidebar) -> None:
    """The Detail slider: live when the model has a partner (the smooth end of its dial), else greyed with why."""
    from .bridge.partners import partner_of
    from .operators import panel_model

    partner, why = partner_of(panel_model(context) or _default_model(context))
    row = col.row(align=True)
    row.enabled = partner is not None
    row.prop(context.scene.texup, "detail", slider=True)
    if partner is None:
        draw_lines(col, side.wrap(f"Detail: {why}"))


def _upscale_blocked() -> bool:
    """The last worker check found no working worker (Upscale's poll greys it out in a UI session)."""
    from .bridge.health import upscale_blocked_reason
    from .setup_ops import WORKER_CHECK

    return upscale_blocked_reason(WORKER_CHECK.result, WORKER_CHECK.running) is not None


def _draw_details(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """The active row: everything the list has no room for."""
    textures = texture_list(context)
    if not 0 <= textures.active_index < len(textures.textures):
        layout.label(text="No texture")
        return
    item = textures.textures[textures.active_index]
    col = layout.column(align=True)
    side = sidebar(context)
    width = side.label(factor=1 - _DETAILS_FACTOR)

    def line(label: str, value: str) -> None:
        draw_pair(col, label, value, _DETAILS_FACTOR, width, side)

    line("Image", item.name)
    line("Size", f"{item.width} x {item.height}" if item.width else "-")
    line("Role", _ROLE_LABELS.get(item.role, item.role))
    line("Colour", item.colorspace or "-")
    line("Alpha", "used" if item.has_alpha else "not used")
    line("Source", item.source_label)
    if item.udim_tiles:
        line("UDIM", f"{item.udim_tiles} tiles")
    line("Users", f"{item.users} node{'s' if item.users != 1 else ''}")
    line("Status", item.status)
    if item.filepath:
        line("File", os.path.basename(item.filepath))
        line("Folder", os.path.dirname(item.filepath))


def _draw_finetune(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.texup
    runtime = context.window_manager.texup_runtime
    col = layout.column(align=True)
    col.active = not runtime.running
    row = col.row(align=True)
    row.prop(settings, "finetune_stage", expand=True)
    col.prop(settings, "finetune_steps")
    col.prop(settings, "finetune_config", text="")
    draw_lines(col, sidebar(context).wrap(f"From: {settings.model.strip() or _default_model(context)}"))
    col.operator("texup.finetune", icon="EXPERIMENTAL", text="Fine-tune")


class _Sidebar:
    bl_region_type = "UI"
    bl_category = "texup"


class TEXUP_PT_view3d(_Sidebar, bpy.types.Panel):
    bl_idname = "TEXUP_PT_view3d"
    bl_label = "texup Upscale"
    bl_space_type = "VIEW_3D"

    def draw(self, context: bpy.types.Context) -> None:
        _draw_panel(self.layout, context)


class TEXUP_PT_image_editor(_Sidebar, bpy.types.Panel):
    bl_idname = "TEXUP_PT_image_editor"
    bl_label = "texup Upscale"
    bl_space_type = "IMAGE_EDITOR"

    def draw(self, context: bpy.types.Context) -> None:
        _draw_panel(self.layout, context)


def _sub_panels(parent: type) -> tuple[type, type]:
    """The "Texture Details" and "Fine-tune" sub-panels of one sidebar panel."""
    space = parent.bl_space_type
    short = "view3d" if space == "VIEW_3D" else "image_editor"

    def sub_panel(suffix: str, label: str, draw: Callable[[Any, Any], None], **extra: Any) -> type:
        idname = f"TEXUP_PT_{short}_{suffix}"
        attrs = {
            "bl_idname": idname,
            "bl_label": label,
            "bl_space_type": space,
            "bl_parent_id": parent.bl_idname,
            "draw": lambda self, context: draw(self.layout, context),
            **extra,
        }
        return type(idname, (_Sidebar, bpy.types.Panel), attrs)

    return (
        sub_panel("details", "Texture Details", _draw_details),
        sub_panel("finetune", "Fine-tune on These Textures", _draw_finetune, bl_options={"DEFAULT_CLOSED"}),
    )


CLASSES = (
    TEXUP_UL_textures,
    TEXUP_PT_view3d,
    TEXUP_PT_image_editor,
    *_sub_panels(TEXUP_PT_view3d),
    *_sub_panels(TEXUP_PT_image_editor),
)
