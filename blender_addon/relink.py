"""Change the file: load upscaled files as new images, swap them into every node, and swap back (Revert).

Originals are never modified or deleted. When a result replaces an original, the original keeps a fake
user (so saving the .blend keeps it for Revert) and the result carries the original's name in the
custom property :data:`~.scene.ORIGINAL_PROP`, which is saved with the .blend: Revert works after a
save and reopen.
"""

from __future__ import annotations

import os

import bpy

from .scene import FAKE_USER_PROP, ORIGINAL_PROP, node_trees

# Image datablock settings a result takes from its original. Interpolation, extension and projection
# belong to the Image Texture node, which stays as it is.
_COPIED_SETTINGS = ("alpha_mode", "use_half_precision", "use_view_as_render")


def replace_image(old: bpy.types.Image, new: bpy.types.Image) -> int:
    """Point every image node (materials, worlds, lights, node groups) that uses ``old`` at ``new``.

    Returns the number of nodes changed.
    """
    changed = 0
    for _label, tree in node_trees():
        for node in tree.nodes:
            if node.type in {"TEX_IMAGE", "TEX_ENVIRONMENT"} and node.image == old:
                node.image = new
                changed += 1
    return changed


def copy_settings(original: bpy.types.Image, result: bpy.types.Image) -> None:
    """Give ``result`` the original's colour space, alpha mode and other image-level settings."""
    result.colorspace_settings.name = original.colorspace_settings.name
    for name in _COPIED_SETTINGS:
        if hasattr(original, name):
            setattr(result, name, getattr(original, name))


def root_original_name(image: bpy.types.Image) -> str:
    """The original at the start of a chain of upscales (``image`` itself when it is no texup result)."""
    return str(image.get(ORIGINAL_PROP, image.name))


def find_result(original: bpy.types.Image, path: str, *, packed_as: str | None = None) -> bpy.types.Image | None:
    """An image already in the file that is a texup result of ``original`` (or of its root original), so a rerun
    uses it again instead of loading a second copy: read from ``path`` (absolute; a UDIM pattern for tiled
    images), or with ``packed_as``, a packed result that records that file path."""
    root = root_original_name(original)
    wanted = os.path.normcase(os.path.normpath(path))
    for image in bpy.data.images:
        if image.get(ORIGINAL_PROP) != root or not image.filepath:
            continue
        packed = image.packed_file is not None or len(getattr(image, "packed_files", ())) > 0
        if packed_as is not None:
            if packed and image.filepath_raw == packed_as:
                return image
        elif not packed and os.path.normcase(os.path.normpath(bpy.path.abspath(image.filepath))) == wanted:
            return image
    return None


def load_result(
    original: bpy.types.Image,
    files: dict[int, str] | str,
    *,
    name: str,
    pack: bool,
    pattern: str | None = None,
    filepath: str | None = None,
) -> bpy.types.Image:
    """Load upscaled file(s) as a new image datablock that mirrors ``original``'s settings.

    ``files`` is one absolute path, or for a tiled (UDIM) original a dict tile number -> absolute
    path of that tile's result (the same tile numbers) and ``pattern`` the tiles' path with the
    ``<UDIM>`` (or ``<UVTILE>``) token. ``pack`` packs the pixels into the .blend.
    ``filepath`` is what the image records as its file (e.g. a ``//`` relative path); default the
    loaded path (with ``<UDIM>`` for tiled images).
    """
    if isinstance(files, dict):
        tiles = sorted(files)
        first = files[tiles[0]]
        image = bpy.data.images.load(first, check_existing=False)
        image.source = "TILED"
        if pattern is None:
            raise ValueError(f"{first}: a tiled result needs its <UDIM> file pattern")
        # Blender finds the pattern's other tiles itself; any it did not find are added explicitly.
        image.filepath = pattern
        present = {tile.number for tile in image.tiles}
        for tile in tiles:
            if tile not in present:
                image.tiles.new(tile_number=tile)
        image.reload()
        loaded = pattern
    else:
        image = bpy.data.images.load(files, check_existing=False)
        loaded = files
    image.name = name
    copy_settings(original, image)
    if pack:
        image.pack()  # a tiled image packs every tile
    if filepath is not None and filepath != loaded:
        # filepath_raw: record the path without reloading (a packed image keeps its packed pixels).
        image.filepath_raw = filepath
    return image


def apply_result(original: bpy.types.Image, result: bpy.types.Image) -> int:
    """Record the mapping, keep the original alive for Revert and swap ``result`` into its nodes.

    Returns the number of nodes changed.
    """
    root = bpy.data.images.get(root_original_name(original))
    result[ORIGINAL_PROP] = root.name if root is not None else original.name
    keeper = root if root is not None else original
    if not keeper.use_fake_user:
        keeper.use_fake_user = True
        keeper[FAKE_USER_PROP] = True
    return replace_image(original, result)


class RevertError(Exception):
    """An image cannot be reverted (not a texup result, or its original is gone)."""


def revert(result: bpy.types.Image) -> bpy.types.Image:
    """Swap the original back into every node that uses ``result``; returns the original.

    The result image stays in the file (with no users it is dropped at the next save); the fake user
    texup gave the original is removed again.
    """
    name = result.get(ORIGINAL_PROP)
    if name is None:
        raise RevertError(f"{result.name}: not an upscaled image (no {ORIGINAL_PROP!r} property)")
    original = bpy.data.images.get(str(name))
    if original is None:
        raise RevertError(f"{result.name}: its original image {name!r} is no longer in the file")
    replace_image(result, original)
    if original.get(FAKE_USER_PROP):
        original.use_fake_user = False
        del original[FAKE_USER_PROP]
    return original
