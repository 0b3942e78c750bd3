"""DDS textures in a scene (issue 24): listed, upscaled through the real worker and relinked like any other image,
the results DDS files of the sources' own formats that Blender loads.

Run with the bpy environment: ``TEXUP_PYTHON=$PWD/.venv/bin/python .venv-blender/bin/python -m pytest
tests/blender/test_dds_bpy.py``. The DDS sources are written by texup in the worker's Python (TEXUP_PYTHON).
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

_MAKE = """
import sys
import numpy as np
from realdata import real_image
from texup.imageio import ImageInfo, write_image

folder = sys.argv[1]
rgb = real_image("astronaut.png", (100, 120, 21, 27))
alpha = np.where(np.arange(27)[None, :].repeat(21, 0) > 9, 255, 0).astype(np.uint8)[:, :, None]

def like(fmt, **extra):
    return ImageInfo(None, "dds", 1, 1, 4, "uint8", "srgb", {"dds_format": fmt, **extra})

write_image(folder + "/albedo.dds", np.concatenate([rgb, alpha], axis=2), like=like("bc7", dds_srgb=True))
write_image(folder + "/foliage.dds", np.concatenate([rgb, alpha], axis=2), like=like("bc1"))
n = np.zeros((21, 27, 3), np.float32)
n[:, :, 0] = np.sin(np.arange(27) / 3)[None, :] * 0.4
n[:, :, 2] = 1.0
n /= np.linalg.norm(n, axis=2, keepdims=True)
write_image(folder + "/normal.dds", np.rint((n * 0.5 + 0.5) * 255).astype(np.uint8), like=like("bc5"))
"""


@pytest.fixture(scope="module")
def addon():
    import blender_addon
    from blender_addon import service

    blender_addon.register()
    yield blender_addon
    service.stop_worker()
    blender_addon.unregister()


def _dds_kind(path: Path) -> str:
    """A DDS file's format from its header: the legacy FourCC, or 'DXGI <n>' for a DX10 header."""
    data = path.read_bytes()[:148]
    assert data[:4] == b"DDS "
    fourcc = data[84:88]
    return f"DXGI {struct.unpack_from('<I', data, 128)[0]}" if fourcc == b"DX10" else fourcc.decode()


def test_dds_textures_are_listed_upscaled_and_relinked(addon, worker_python, tiny_model, tmp_path, monkeypatch):
    from blender_addon import scene

    monkeypatch.setenv("TEXUP_PYTHON", worker_python)
    tests = Path(__file__).resolve().parents[1]
    subprocess.run([worker_python, "-c", _MAKE, str(tmp_path)], check=True, timeout=300, env={"PYTHONPATH": str(tests)})

    bpy.ops.wm.read_factory_settings(use_empty=True)
    mat = bpy.data.materials.new("Crate")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    for i, name in enumerate(("albedo.dds", "foliage.dds", "normal.dds")):
        node = nodes.new("ShaderNodeTexImage")
        node.image = bpy.data.images.load(str(tmp_path / name))
        node.location = (-600, -300 * i)
        if name == "normal.dds":
            node.image.colorspace_settings.name = "Non-Color"
            normal_map = nodes.new("ShaderNodeNormalMap")
            links.new(node.outputs["Color"], normal_map.inputs["Color"])
            links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
        elif name == "albedo.dds":
            links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
        else:
            links.new(node.outputs["Alpha"], bsdf.inputs["Alpha"])
    # A packed DDS with no file path (as an imported asset may carry): written for the worker as .dds
    decal = nodes.new("ShaderNodeTexImage")
    decal.image = bpy.data.images.load(str(tmp_path / "albedo.dds"))
    decal.image.name = "decal"
    decal.image.pack()
    decal.image.filepath_raw = ""
    links.new(decal.outputs["Color"], bsdf.inputs["Emission Color"])
    bpy.ops.mesh.primitive_cube_add()
    bpy.context.object.data.materials.append(mat)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))

    listed = {t.name: t for t in scene.scan()}
    assert {"albedo.dds", "foliage.dds", "normal.dds"} <= set(listed)
    assert listed["normal.dds"].role == "normal"
    assert all(info.size == (27, 21) for info in listed.values())
    assert all(listed[n].source == "file" for n in ("albedo.dds", "foliage.dds", "normal.dds"))

    bpy.context.scene.texup.model = tiny_model
    bpy.ops.texup.refresh()
    assert listed["decal"].source == "packed" and not bpy.data.images["decal"].filepath
    assert bpy.ops.texup.upscale(images="albedo.dds,foliage.dds,normal.dds,decal") == {"FINISHED"}

    out = tmp_path / "textures_upscaled"
    assert _dds_kind(out / "albedo_x4.dds") == "DXGI 99"  # BC7 with its sRGB flag
    assert _dds_kind(out / "foliage_x4.dds") == "DXT1"
    assert _dds_kind(out / "normal_x4.dds") == "ATI2"  # BC5
    users = sorted(n.image.name for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    assert users == ["albedo_x4", "decal_x4", "foliage_x4", "normal_x4"]
    for name in users:
        image = bpy.data.images[name]
        assert tuple(image.size) == (27 * 4, 21 * 4), name  # Blender reads texup's DDS files
        if name != "decal_x4":
            assert Path(bpy.path.abspath(image.filepath)).suffix == ".dds"
    decal = bpy.data.images["decal_x4"]  # packed source -> packed result, still a DDS
    assert decal.packed_file is not None and bytes(decal.packed_file.data[:4]) == b"DDS "
    assert bpy.data.images["normal_x4"].colorspace_settings.name == "Non-Color"
