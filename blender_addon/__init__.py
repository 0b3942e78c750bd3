"""texup for Blender: upscale a scene's image textures with ESRGAN and relink the materials.

This file only registers. The work happens in a separate ``python -m texup worker`` process (torch is
never imported into Blender); the modules with the work are imported by the operators when they run.
Installs as an extension (Blender 4.2+, blender_manifest.toml) and as a legacy add-on (bl_info, 3.x).
"""

bl_info = {
    "name": "texup: ESRGAN Texture Upscaling",
    "author": "texup contributors",
    "version": (0, 2, 0),
    "blender": (3, 4, 0),
    "location": "3D Viewport / Image Editor > Sidebar > texup",
    "description": "Upscale the scene's image textures with ESRGAN (texup worker) and relink the materials",
    "category": "Material",
}

import bpy

from . import operators, preferences, properties, setup_ops, ui

_CLASSES = (*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES, *ui.CLASSES, *setup_ops.CLASSES)


def _extension_user_dir():
    """This extension's user folder (Blender 4.2+; kept across updates), or ``None`` as a legacy add-on."""
    if not __package__.startswith("bl_ext.") or not hasattr(bpy.utils, "extension_path_user"):
        return None
    return bpy.utils.extension_path_user(__package__, create=True)


def register() -> None:
    from . import service

    service.configure(_extension_user_dir())
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    properties.register_pointers()


def unregister() -> None:
    from . import service

    service.stop_worker()
    properties.unregister_pointers()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
