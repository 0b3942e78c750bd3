"""Read a Blender file's image textures: which images the node trees use, where, and in which role.

Everything here needs ``bpy`` but never changes the file; :mod:`.relink` makes the changes. The result
of :func:`scan` is a list of plain :class:`~.bridge.jobs.TextureInfo` values, so that choosing textures
and building jobs (``bridge.jobs``) stays testable without Blender.

Roles come from the material graph, followed through reroutes, colour-mixing nodes and node groups:
an image that feeds a Normal Map node is a ``normal`` map; one that feeds a shader's colour input (Base
Color, Emission, ...) is ``color``; one that feeds a shader's scalar input (Roughness, Metallic,
Specular, Alpha, ...), a Bump or a Displacement node is ``data``. An image whose role the graph does
not tell falls back to its colour space setting (Non-Color / raw / linear data -> ``data``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import bpy

from .bridge.jobs import TextureInfo
from .bridge.naming import has_udim_token, udim_tile_path

#: Custom property on a result image naming the original image it replaced (stored in the .blend).
ORIGINAL_PROP = "texup_original"
#: Custom property on an original image: True when texup set its fake user to keep it for Revert.
FAKE_USER_PROP = "texup_fake_user"

UDIM_TOKEN = "<UDIM>"
_SUPPORTED_SOURCES = {"FILE", "GENERATED", "TILED"}

# Node types whose colour passes through to their output unchanged in kind (a tinted colour is
# still a colour, a gamma-adjusted roughness still data): the role is decided further downstream.
_PASSTHROUGH = {
    "REROUTE",
    "MIX_RGB",
    "MIX",
    "INVERT",
    "GAMMA",
    "HUE_SAT",
    "BRIGHTCONTRAST",
    "CURVE_RGB",
}
_DATA_NODES = {"BUMP", "DISPLACEMENT", "VECTOR_DISPLACEMENT"}
_DATA_SOCKET_WORDS = ("ao", "ambient occlusion", "occlusion", "height", "displacement", "bump")
_DATA_COLORSPACES = {"non-color", "raw", "linear", "linear rec.709", "generic data", "data"}


@dataclass
class _RoleVotes:
    """What the graph says about one image (all its nodes together)."""

    normal: bool = False
    color: bool = False
    data: bool = False
    alpha_linked: bool = False
    nodes: list[str] = field(default_factory=list)


def node_trees() -> Iterator[tuple[str, bpy.types.NodeTree]]:
    """Every shader node tree of the file with a label for messages: materials, worlds, lights, groups."""
    for mat in bpy.data.materials:
        if mat.node_tree is not None:
            yield f"material {mat.name!r}", mat.node_tree
    for world in bpy.data.worlds:
        if world.node_tree is not None:
            yield f"world {world.name!r}", world.node_tree
    for light in bpy.data.lights:
        if light.node_tree is not None:
            yield f"light {light.name!r}", light.node_tree
    for group in bpy.data.node_groups:
        if group.bl_idname == "ShaderNodeTree":
            yield f"node group {group.name!r}", group


def image_nodes() -> Iterator[tuple[str, bpy.types.NodeTree, bpy.types.Node]]:
    """Every node that holds an image (Image Texture, Environment Texture) in every shader node tree."""
    for label, tree in node_trees():
        for node in tree.nodes:
            if node.type in {"TEX_IMAGE", "TEX_ENVIRONMENT"} and node.image is not None:
                yield label, tree, node


def _group_users(tree: bpy.types.NodeTree) -> Iterator[tuple[bpy.types.NodeTree, bpy.types.Node]]:
    """Group nodes (in any tree) that instance ``tree``."""
    for _label, outer in node_trees():
        for node in outer.nodes:
            if node.type == "GROUP" and node.node_tree == tree:
                yield outer, node


def _matching_socket(sockets, socket, index: int):
    """The socket in ``sockets`` that corresponds to ``socket`` (same identifier, else same index)."""
    for candidate in sockets:
        if candidate.identifier == socket.identifier:
            return candidate
    return sockets[index] if index < len(sockets) else None


def _follow(tree: bpy.types.NodeTree, socket, votes: _RoleVotes, seen: set[tuple[int, str]], depth: int = 0) -> None:
    """Vote on the role of the output ``socket`` of a node in ``tree`` from where its links lead."""
    key = (tree.as_pointer(), socket.path_from_id())
    if key in seen or depth > 64:
        return
    seen.add(key)
    for link in tree.links:
        if link.from_socket != socket or link.is_muted:
            continue
        _vote_target(tree, link.to_node, link.to_socket, votes, seen, depth + 1)


def _vote_target(tree, node, socket, votes: _RoleVotes, seen, depth: int) -> None:
    kind = node.type
    name = socket.name.lower()
    if kind == "NORMAL_MAP":
        votes.normal = True
    elif kind in _DATA_NODES:
        votes.data = True
    elif kind in _PASSTHROUGH:
        for out in node.outputs:
            _follow(tree, out, votes, seen, depth)
    elif kind == "GROUP" and node.node_tree is not None:
        inner = node.node_tree
        index = list(node.inputs).index(socket)
        for inner_node in inner.nodes:
            if inner_node.type == "GROUP_INPUT":
                target = _matching_socket(inner_node.outputs, socket, index)
                if target is not None:
                    _follow(inner, target, votes, seen, depth)
    elif kind == "GROUP_OUTPUT":
        index = list(node.inputs).index(socket)
        for outer, group_node in _group_users(tree):
            target = _matching_socket(group_node.outputs, socket, index)
            if target is not None:
                _follow(outer, target, votes, seen, depth)
    elif any(word in name for word in _DATA_SOCKET_WORDS):
        votes.data = True
    elif socket.type == "RGBA":
        votes.color = True
    elif socket.type == "VALUE":
        votes.data = True
    # Vector inputs other than through a Normal Map node (e.g. straight into Normal) say nothing
    # reliable: a tangent-space map wired directly is a mistake the fallback should not amplify.


def colorspace_is_data(image: bpy.types.Image) -> bool:
    """True when the image's colour space setting marks it as non-colour data."""
    settings = image.colorspace_settings
    if getattr(settings, "is_data", False):
        return True
    return settings.name.lower() in _DATA_COLORSPACES


def decide_role(votes: _RoleVotes, image: bpy.types.Image) -> str:
    """``normal`` > ``color`` > ``data`` from the graph; the colour space setting when the graph is silent."""
    if votes.normal:
        return "normal"
    if votes.color:
        return "color"
    if votes.data:
        return "data"
    return "data" if colorspace_is_data(image) else "color"


def udim_tiles(image: bpy.types.Image) -> list[int]:
    """Tile numbers of a tiled (UDIM) image, ascending; ``[]`` for other images."""
    if image.source != "TILED":
        return []
    return sorted(tile.number for tile in image.tiles)


def tile_path(pattern: str, tile: int) -> str:
    """The file of one UDIM tile: the ``<UDIM>`` / ``<UVTILE>`` token in ``pattern`` replaced for ``tile``."""
    return udim_tile_path(pattern, tile)


def image_abspath(image: bpy.types.Image) -> str:
    """Absolute, normalised file path of an image (``//`` resolved against the image's library/blend)."""
    if not image.filepath:
        return ""
    return os.path.normpath(bpy.path.abspath(image.filepath, library=image.library))


def image_source(image: bpy.types.Image) -> str:
    """``packed`` | ``generated`` | ``udim`` | ``file`` | ``missing`` (a file, or every UDIM tile, not on disk)."""
    if image.packed_file is not None or len(getattr(image, "packed_files", ())) > 0:
        return "packed"
    if image.source == "GENERATED":
        return "generated"
    path = image_abspath(image)
    if image.source == "TILED":
        path = image_pattern(image)
        tiles = udim_tiles(image)
        if not tiles or not all(os.path.isfile(tile_path(path, t)) for t in tiles):
            return "missing"
        return "udim"
    return "file" if path and os.path.isfile(path) else "missing"


def image_status(image: bpy.types.Image, source: str) -> str:
    """``missing`` | ``upscaled`` (a texup result) | ``original``."""
    if source == "missing":
        return "missing"
    return "upscaled" if ORIGINAL_PROP in image.keys() else "original"


def image_size(image: bpy.types.Image) -> tuple[int, int]:
    """(width, height) in pixels of the image (first tile of a UDIM image); (0, 0) when it cannot load."""
    if image.source == "TILED" and len(image.tiles):
        w, h = image.tiles[0].size
        return int(w), int(h)
    w, h = image.size
    return int(w), int(h)


def image_pattern(image: bpy.types.Image) -> str:
    """Absolute file path, with the ``<UDIM>`` token for tiled images."""
    path = image_abspath(image)
    if image.source == "TILED" and not has_udim_token(path):
        # Older files may store the first tile's file name: express it as a pattern.
        path = re.sub(r"(?<=[._])1\d{3}(?=\.[^.]+$)", UDIM_TOKEN, path)
    return path


def scan() -> list[TextureInfo]:
    """Every image used by an image node of the file, once, sorted by name.

    ``users`` counts the nodes that use the image (all materials, node groups, worlds, lights);
    ``size`` is (width, height) in pixels, (0, 0) for a missing file.
    """
    votes: dict[str, _RoleVotes] = {}
    images: dict[str, bpy.types.Image] = {}
    for label, tree, node in image_nodes():
        image = node.image
        if image.source not in _SUPPORTED_SOURCES:
            continue  # movies, sequences and viewer images are not textures to upscale
        entry = votes.setdefault(image.name, _RoleVotes())
        images[image.name] = image
        entry.nodes.append(f"{label}: {node.name}")
        seen: set[tuple[int, str]] = set()
        for out in node.outputs:
            if out.name == "Alpha":
                if out.is_linked:
                    entry.alpha_linked = True
                continue
            _follow(tree, out, entry, seen)
    infos = []
    for name in sorted(images):
        image = images[name]
        entry = votes[name]
        source = image_source(image)
        size = image_size(image) if source != "missing" else (0, 0)
        infos.append(
            TextureInfo(
                name=name,
                filepath=image_pattern(image),
                size=size,
                role=decide_role(entry, image),
                colorspace=image.colorspace_settings.name,
                source=source,
                users=len(entry.nodes),
                udim_tiles=tuple(udim_tiles(image)),
                has_alpha=entry.alpha_linked,
                status=image_status(image, source),
            )
        )
    return infos


def stand_in_originals(infos: list[TextureInfo]) -> list[TextureInfo]:
    """The originals of the texup results among ``infos`` that no node uses any more (a file saved after an
    upscale), described as the textures their results stand for: the result's role and users, the original's
    file, size and colour space. A rerun plans them like any original: their output is the result's own file,
    so an up-to-date one changes nothing and a changed source is redone in place (``scripts/upscale_blend.py``).
    """
    listed = {info.name for info in infos}
    found: list[TextureInfo] = []
    for info in infos:
        if info.status != "upscaled":
            continue
        result = bpy.data.images.get(info.name)
        name = str(result.get(ORIGINAL_PROP, "")) if result is not None else ""
        original = bpy.data.images.get(name) if name else None
        if original is None or name in listed or original.source not in _SUPPORTED_SOURCES:
            continue
        listed.add(name)
        source = image_source(original)
        found.append(
            TextureInfo(
                name=name,
                filepath=image_pattern(original),
                size=image_size(original) if source != "missing" else (0, 0),
                role=info.role,
                colorspace=original.colorspace_settings.name,
                source=source,
                users=info.users,
                udim_tiles=tuple(udim_tiles(original)),
                has_alpha=info.has_alpha,
                status=image_status(original, source),
            )
        )
    return found
