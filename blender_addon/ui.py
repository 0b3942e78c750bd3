"""The texup panel, in the 3D Viewport sidebar and the Image Editor sidebar (tab "texup")."""

from __future__ import annotations

import bpy

from .operators import passes_filters

_STATUS_ICONS = {"original": "IMAGE_DATA", "upscaled": "CHECKMARK", "missing": "ERROR"}
_ROLE_LABELS = {"color": "Color", "normal": "Normal", "data": "Data"}


class TEXUP_UL_textures(bpy.types.UIList):
    """Rows: select, name, resolution, role, colour space, source, users, status."""

    bl_idname = "TEXUP_UL_textures"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "selected", text="")
        row.label(text=item.name, icon=_STATUS_ICONS.get(item.status, "IMAGE_DATA"))
        cols = row.row(align=True)
        cols.alignment = "RIGHT"
        cols.label(text=item.resolution_label)
        cols.label(text=_ROLE_LABELS.get(item.role, item.role) + (" +A" if item.has_alpha else ""))
        cols.label(text=item.colorspace)
        cols.label(text=item.source_label)
        cols.label(text=f"{item.users} user{'s' if item.users != 1 else ''}")
        cols.label(text=item.status)

    def filter_items(self, context, data, propname):
        items = getattr(data, propname)
        flags = [self.bitflag_filter_item if passes_filters(data, item) else 0 for item in items]
        if self.filter_name:
            needle = self.filter_name.lower()
            flags = [f if needle in item.name.lower() else 0 for f, item in zip(flags, items)]
        return flags, []


def _draw_panel(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    settings = context.scene.texup
    runtime = context.window_manager.texup_runtime

    row = layout.row(align=True)
    row.operator("texup.refresh", icon="FILE_REFRESH")

    box = layout.box()
    row = box.row(align=True)
    row.prop(settings, "use_size_filter")
    sub = row.row(align=True)
    sub.active = settings.use_size_filter
    sub.prop(settings, "max_size", text="px")
    box.prop(settings, "role_filter", text="Role")

    layout.template_list("TEXUP_UL_textures", "", settings, "textures", settings, "active_index", rows=6)
    row = layout.row(align=True)
    row.operator("texup.select", text="All").action = "ALL"
    row.operator("texup.select", text="None").action = "NONE"
    shown = [item for item in settings.textures if passes_filters(settings, item)]
    row.label(text=f"{sum(item.selected for item in shown)} of {len(shown)} selected")

    col = layout.column(align=True)
    col.prop(settings, "model", text="Model")
    row = col.row(align=True)
    row.prop(settings, "scale", expand=True)
    col.prop(settings, "tile")
    col.prop(settings, "seamless")

    if runtime.running:
        col = layout.column(align=True)
        if hasattr(col, "progress"):  # Blender 4.0+
            col.progress(factor=runtime.progress, type="BAR", text=f"{runtime.progress:.0%}")
        else:
            col.label(text=f"Progress: {runtime.progress:.0%}")
        col.label(text=runtime.message)
        col.operator("texup.cancel", icon="CANCEL")
    else:
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("texup.upscale", icon="RENDER_STILL")
        row.operator("texup.revert", icon="LOOP_BACK")
        if runtime.last_summary:
            layout.label(text=runtime.last_summary)

    box = layout.box()
    box.label(text="Fine-tune on these textures", icon="EXPERIMENTAL")
    col = box.column(align=True)
    col.active = not runtime.running
    row = col.row(align=True)
    row.prop(settings, "finetune_stage", expand=True)
    col.prop(settings, "finetune_steps")
    col.prop(settings, "finetune_config")
    col.label(text=f"Starts from: {settings.model.strip() or 'the default model'}")
    col.operator("texup.finetune", icon="EXPERIMENTAL")


class TEXUP_PT_view3d(bpy.types.Panel):
    bl_idname = "TEXUP_PT_view3d"
    bl_label = "texup Upscale"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "texup"

    def draw(self, context: bpy.types.Context) -> None:
        _draw_panel(self.layout, context)


class TEXUP_PT_image_editor(bpy.types.Panel):
    bl_idname = "TEXUP_PT_image_editor"
    bl_label = "texup Upscale"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "texup"

    def draw(self, context: bpy.types.Context) -> None:
        _draw_panel(self.layout, context)


CLASSES = (TEXUP_UL_textures, TEXUP_PT_view3d, TEXUP_PT_image_editor)
