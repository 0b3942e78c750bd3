"""Build the test scenes with bpy: image files written here (stdlib PNG writer), materials wired by hand.

Used in-process by test_addon_bpy.py (bpy module) and as a script by test_blender_cli.py:
``blender -b --python tests/blender/scene_builder.py -- OUT_DIR [--missing]`` saves OUT_DIR/scene.blend.
Stdlib + bpy only (Debian's Blender has no numpy).
"""

from __future__ import annotations

import os
import struct
import sys
import zlib

import bpy


def write_png(path: str, width: int, height: int, channels: int, depth: int = 8) -> str:
    """Write a PNG with a deterministic gradient pattern: 1 (gray), 3 (RGB) or 4 (RGBA) channels, 8 or 16 bit."""
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    maxv = (1 << depth) - 1
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            for c in range(channels):
                v = ((x * 7 + y * 13 + c * 50) % 97) / 96.0
                if channels in (2, 4) and c == channels - 1:
                    v = 0.25 + 0.75 * (x / max(1, width - 1))
                value = int(round(v * maxv))
                row += struct.pack(">H", value) if depth == 16 else bytes([value])
        rows.append(bytes(row))
    raw = b"".join(rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def png_header(path: str) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    width, height = struct.unpack(">II", head[16:24])
    return width, height, head[24], head[25]


def _image_node(tree, image, x=-400, y=0):
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    node.location = (x, y)
    return node


def _material(name: str):
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # 5.0 always uses nodes (and deprecates the switch)
        mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    return mat, mat.node_tree, bsdf


def _socket(node, *names):
    for name in names:
        if name in node.inputs:
            return node.inputs[name]
    raise KeyError(f"{node.name} has none of {names}")


def build(folder: str, *, with_missing: bool = True) -> dict:
    """Empty the file and build the test scene; image files go to ``folder``. Returns facts for the checks.

    * ``color.png`` (24x20 RGB 8-bit): Base Color of "Mat.A" and of "Mat.B" (shared: 2 users).
    * ``rough.png`` (20x16 gray 16-bit, Non-Color): Roughness of "Mat.A" (node interpolation Closest).
    * ``normal.png`` (16x16 RGB, Non-Color): through a Normal Map node.
    * ``leaf.png`` (24x20 RGBA): Color -> Base Color of "Mat.B" and Alpha -> Alpha (alpha_mode CHANNEL_PACKED).
    * ``grouptex.png`` (12x12 RGB, colour space Non-Color): inside node group "TexGroup", to its output,
      which feeds Base Color of "Mat.C": the graph says colour although the setting says data.
    * ``packed`` (16x12 RGB PNG, packed): Metallic of "Mat.C".
    * ``generated`` (8x8 UV grid): Environment Texture of the world -> Background.
    * ``wall.<UDIM>.png`` (tiles 1001, 1002; 12x10): Base Color of "Mat.D".
    * ``missing.png`` (not on disk): Roughness of "Mat.D" (only ``with_missing``).
    """
    bpy.ops.wm.read_factory_settings(use_empty=True)
    for mat in list(bpy.data.materials):
        bpy.data.materials.remove(mat)
    os.makedirs(folder, exist_ok=True)
    p = lambda name: os.path.join(folder, name)  # noqa: E731

    color = bpy.data.images.load(write_png(p("color.png"), 24, 20, 3))
    rough = bpy.data.images.load(write_png(p("rough.png"), 20, 16, 1, 16))
    rough.colorspace_settings.name = "Non-Color"
    normal = bpy.data.images.load(write_png(p("normal.png"), 16, 16, 3))
    normal.colorspace_settings.name = "Non-Color"
    leaf = bpy.data.images.load(write_png(p("leaf.png"), 24, 20, 4))
    leaf.alpha_mode = "CHANNEL_PACKED"
    grouptex = bpy.data.images.load(write_png(p("grouptex.png"), 12, 12, 3))
    grouptex.colorspace_settings.name = "Non-Color"
    packed = bpy.data.images.load(write_png(p("packed_src.png"), 16, 12, 3))
    packed.pack()
    packed.name = "packed"
    os.remove(p("packed_src.png"))  # only the packed copy exists now
    generated = bpy.data.images.new("generated", 8, 8)
    generated.generated_type = "UV_GRID"
    write_png(p("wall.1001.png"), 12, 10, 3)
    write_png(p("wall.1002.png"), 12, 10, 3)
    wall = bpy.data.images.load(p("wall.1001.png"))
    wall.source = "TILED"
    wall.filepath = p("wall.<UDIM>.png")
    wall.name = "wall"

    mat_a, tree, bsdf = _material("Mat.A")
    n = _image_node(tree, color)
    tree.links.new(n.outputs["Color"], _socket(bsdf, "Base Color"))
    n = _image_node(tree, rough, y=-300)
    n.interpolation = "Closest"
    n.extension = "EXTEND"
    tree.links.new(n.outputs["Color"], _socket(bsdf, "Roughness"))
    n = _image_node(tree, normal, y=-600)
    nmap = tree.nodes.new("ShaderNodeNormalMap")
    tree.links.new(n.outputs["Color"], nmap.inputs["Color"])
    tree.links.new(nmap.outputs["Normal"], _socket(bsdf, "Normal"))

    mat_b, tree, bsdf = _material("Mat.B")
    n = _image_node(tree, color)
    tree.links.new(n.outputs["Color"], _socket(bsdf, "Emission Color", "Emission"))
    n = _image_node(tree, leaf, y=-300)
    tree.links.new(n.outputs["Color"], _socket(bsdf, "Base Color"))
    tree.links.new(n.outputs["Alpha"], _socket(bsdf, "Alpha"))

    group = bpy.data.node_groups.new("TexGroup", "ShaderNodeTree")
    out = group.nodes.new("NodeGroupOutput")
    if hasattr(group, "interface"):  # Blender 4.0+
        group.interface.new_socket("Color", in_out="OUTPUT", socket_type="NodeSocketColor")
    else:
        group.outputs.new("NodeSocketColor", "Color")
    n = _image_node(group, grouptex)
    group.links.new(n.outputs["Color"], out.inputs[0])
    mat_c, tree, bsdf = _material("Mat.C")
    gnode = tree.nodes.new("ShaderNodeGroup")
    gnode.node_tree = group
    tree.links.new(gnode.outputs[0], _socket(bsdf, "Base Color"))
    n = _image_node(tree, packed, y=-300)
    tree.links.new(n.outputs["Color"], _socket(bsdf, "Metallic"))

    mat_d, tree, bsdf = _material("Mat.D")
    n = _image_node(tree, wall)
    tree.links.new(n.outputs["Color"], _socket(bsdf, "Base Color"))
    if with_missing:
        missing = (
            bpy.data.images.load(p("missing.png"), check_existing=False)
            if os.path.exists(p("missing.png"))
            else bpy.data.images.new("missing.png", 4, 4)
        )
        missing.source = "FILE"
        missing.filepath = p("missing.png")
        missing.name = "missing.png"
        n = _image_node(tree, missing, y=-300)
        tree.links.new(n.outputs["Color"], _socket(bsdf, "Roughness"))

    world = bpy.data.worlds.new("World")
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    bpy.context.scene.world = world
    wtree = world.node_tree
    env = wtree.nodes.new("ShaderNodeTexEnvironment")
    env.image = generated
    background = next(n for n in wtree.nodes if n.type == "BACKGROUND")
    wtree.links.new(env.outputs["Color"], background.inputs["Color"])

    # Objects so the materials have users and survive a save.
    for i, mat in enumerate((mat_a, mat_b, mat_c, mat_d)):
        mesh = bpy.data.meshes.new(f"Mesh{i}")
        mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
        mesh.materials.append(mat)
        obj = bpy.data.objects.new(f"Obj{i}", mesh)
        bpy.context.scene.collection.objects.link(obj)
    return {"folder": folder}


if __name__ == "__main__":
    args = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    target = os.path.abspath(args[0])
    build(target, with_missing="--missing" in args)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(target, "scene.blend"))
