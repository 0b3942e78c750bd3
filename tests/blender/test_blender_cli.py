"""End to end with a real Blender binary (Debian's 3.4.1): ``blender -b scene.blend --python
scripts/upscale_blend.py -- ...`` on a scene the test builds; the report, the exit code and the saved
.blend are checked. Skipped when ``blender`` is not on PATH. Runs in the main venv's pytest (the
worker's Python is this one, or TEXUP_PYTHON).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

BLENDER = shutil.which("blender")
pytestmark = pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH (apt-get install blender)")

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO_ROOT / "scripts" / "upscale_blend.py"
BUILDER = Path(__file__).resolve().parent / "scene_builder.py"

# Prints, as one JSON line, the image each image node uses and facts about those images.
INSPECT = """
import bpy, json
nodes = {}
def trees():
    for m in bpy.data.materials:
        if m.node_tree: yield 'material ' + m.name, m.node_tree
    for w in bpy.data.worlds:
        if w.node_tree: yield 'world ' + w.name, w.node_tree
    for g in bpy.data.node_groups: yield 'group ' + g.name, g
for label, tree in trees():
    nodes[label] = sorted(n.image.name for n in tree.nodes if n.type in ('TEX_IMAGE', 'TEX_ENVIRONMENT') and n.image)
images = {}
for im in bpy.data.images:
    size = list(im.tiles[0].size) if im.source == 'TILED' else list(im.size)
    images[im.name] = {'size': size, 'packed': im.packed_file is not None or len(im.packed_files) > 0,
                       'filepath': im.filepath, 'colorspace': im.colorspace_settings.name,
                       'original': im.get('texup_original'), 'tiles': sorted(t.number for t in im.tiles),
                       'source': im.source}
print('INSPECT' + json.dumps({'nodes': nodes, 'images': images}))
"""


def blender(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BLENDER, "-b", "--factory-startup", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def inspect(blend: Path) -> dict:
    proc = blender(str(blend), "--python-expr", INSPECT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("INSPECT")), None)
    assert line is not None, proc.stdout + proc.stderr
    return json.loads(line[len("INSPECT") :])


def upscale_blend(scene_dir: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    """``blender -b scene.blend --python scripts/upscale_blend.py -- ARGS`` on the built scene."""
    return blender(str(scene_dir / "scene.blend"), "--python", str(SCRIPT), "--", *args, env=env)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scene built by real Blender: files, packed, generated, UDIM, node group, missing texture."""
    folder = tmp_path_factory.mktemp("blender_scene")
    proc = blender("--python", str(BUILDER), "--", str(folder), "--missing")
    assert (folder / "scene.blend").is_file(), proc.stdout + proc.stderr
    return folder


@pytest.fixture
def env(worker_python: str) -> dict:
    return {**os.environ, "TEXUP_PYTHON": worker_python}


def test_headless_upscale_saves_relinked_file_reports_and_fails_for_missing(scene_dir, env, tiny_model, tmp_path):
    out_blend = tmp_path / "out.blend"
    report = tmp_path / "report.json"
    proc = upscale_blend(
        scene_dir,
        "--model",
        tiny_model,
        "--out-dir",
        str(tmp_path / "up"),
        "--save-as",
        str(out_blend),
        "--report",
        str(report),
        env=env,
    )
    # One selected texture (missing.png) was missing before the run: reported as skipped, a known gap (exit 0).
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    rows = {row["name"]: row for row in doc["images"]}
    assert set(rows) == {
        "color.png",
        "rough.png",
        "normal.png",
        "leaf.png",
        "grouptex.png",
        "packed",
        "generated",
        "wall",
        "missing.png",
    }
    assert rows["missing.png"]["status"] == "skipped" and "not found" in rows["missing.png"]["error"]
    assert rows["missing.png"]["missing"] is True
    assert doc["failed"] == 0 and doc["ok"] == 8 and doc["skipped"] == 1
    for name, row in rows.items():
        if name == "missing.png":
            continue
        assert row["status"] == "ok", row
        assert row["output_size"] == [4 * v for v in row["input_size"]], row
        assert row["seconds"] > 0
        assert Path(row["output_path"].replace("<UDIM>", "1001")).is_file(), row
    assert rows["normal.png"]["role"] == "normal" and rows["rough.png"]["role"] == "data"
    assert rows["color.png"]["output_path"] == str(tmp_path / "up" / "color_x4.png")
    # Progress while it runs: a line for every file of the job (9: the UDIM image has 2), with an ETA field.
    lines = re.findall(r"^texup: (\d+)/(\d+) (\S+) (\d+)% \(job (\d+)%, ETA (\S+)\)$", proc.stdout, re.M)
    assert {int(pos) for pos, *_ in lines} == set(range(1, 10)), proc.stdout
    assert {count for _, count, *_ in lines} == {"9"}
    assert {"wall.1001.png", "wall.1002.png", "color.png"} <= {name for _, _, name, *_ in lines}

    saved = inspect(out_blend)
    nodes, images = saved["nodes"], saved["images"]
    assert nodes["material Mat.A"] == ["color_x4", "normal_x4", "rough_x4"]
    assert nodes["material Mat.B"] == ["color_x4", "leaf_x4"]
    assert nodes["group TexGroup"] == ["grouptex_x4"]
    assert nodes["world World"] == ["generated_x4"]
    assert nodes["material Mat.D"] == ["missing.png", "wall_x4"]
    assert images["color_x4"]["size"] == [96, 80] and images["color_x4"]["original"] == "color.png"
    assert images["rough_x4"]["colorspace"] == "Non-Color"
    assert images["packed_src_x4"]["packed"] and not images["color_x4"]["packed"]
    assert images["wall_x4"]["source"] == "TILED" and images["wall_x4"]["tiles"] == [1001, 1002]
    assert images["wall_x4"]["size"] == [48, 40]
    # Originals stay in the file (kept for Revert) and unchanged.
    assert images["color.png"]["size"] == [24, 20]
    assert images["color.png"]["filepath"].endswith("color.png")

    # The same command again: every output is up to date, so no worker starts, nothing is written (no _2 file),
    # and the saved file links the same results. --strict makes the missing texture an error.
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "up").iterdir()}
    again = upscale_blend(
        scene_dir,
        "--model",
        tiny_model,
        "--out-dir",
        str(tmp_path / "up"),
        "--save-as",
        str(out_blend),
        "--report",
        str(report),
        "--strict",
        env=env,
    )
    assert again.returncode == 1, again.stdout + again.stderr
    assert "starting the worker" not in again.stdout, again.stdout
    doc = json.loads(report.read_text())
    statuses = {row["name"]: row["status"] for row in doc["images"]}
    assert statuses.pop("missing.png") == "skipped" and set(statuses.values()) == {"up_to_date"}, statuses
    assert doc["up_to_date"] == 8 and doc["ok"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "up").iterdir()} == written
    assert inspect(out_blend)["nodes"] == nodes


def test_headless_rerun_with_save_redoes_nothing_and_does_not_save_again(scene_dir, env, tiny_model, tmp_path):
    """A nightly ``--save`` run on the same file: the second night finds everything done, starts no worker,
    writes no file and leaves the .blend as it is."""
    work = tmp_path / "scene"
    shutil.copytree(scene_dir, work)
    args = ("--model", tiny_model, "--images", "color.png,packed,wall", "--save")
    first = upscale_blend(work, *args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    out = work / "textures_upscaled"
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {"color_x4.png", "packed_src_x4.png", "wall_x4.1001.png", "wall_x4.1002.png"} <= set(written)
    saved = (work / "scene.blend").stat().st_mtime_ns
    second = upscale_blend(work, *args, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "starting the worker" not in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written
    assert (work / "scene.blend").stat().st_mtime_ns == saved
    assert "up to date" in second.stderr and "nothing changed" in second.stderr

    # The artist paints over color.png: the next night redoes it in place, under the same name, and only it.
    _repaint(work / "color.png")
    report = tmp_path / "third.json"
    third = upscale_blend(work, *args, "--report", str(report), env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    rows = json.loads(report.read_text())["images"]
    statuses = {row["name"]: row["status"] for row in rows if row["name"] in ("color.png", "packed", "wall")}
    assert statuses == {"color.png": "ok", "packed": "up_to_date", "wall": "up_to_date"}, statuses
    assert {row["reason"] for row in rows if row["name"] == "color_x4"} == {"not among the requested images"}
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(now) == set(written) and now["color_x4.png"] != written["color_x4.png"]
    assert {k: v for k, v in now.items() if k not in ("color_x4.png", ".texup")} == {
        k: v for k, v in written.items() if k not in ("color_x4.png", ".texup")
    }
    assert inspect(work / "scene.blend")["nodes"]["material Mat.A"][0] == "color_x4"


def _repaint(path: Path) -> None:
    """Change a PNG's pixels (the file stays a valid PNG of the same size), as an artist's edit would."""
    script = (
        "import bpy, sys; im = bpy.data.images.load(sys.argv[-1]); px = list(im.pixels); "
        "px[0:4] = [1.0, 0.0, 1.0, 1.0]; px[4:8] = [0.0, 1.0, 0.0, 1.0]; im.pixels = px; im.save()"
    )
    proc = blender("--python-expr", script, "--", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_headless_filters_scale_and_exit_zero(scene_dir, env, tiny_model, tmp_path):
    report = tmp_path / "r.json"
    proc = upscale_blend(
        scene_dir,
        "--model",
        tiny_model,
        "--roles",
        "color",
        "--max-size",
        "20",
        "--scale",
        "2",
        "--out-dir",
        str(tmp_path / "up"),
        "--report",
        str(report),
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    rows = {row["name"]: row for row in doc["images"] if row["status"] != "skipped"}
    # color role and larger side <= 20: the group texture (12x12), the generated grid (8x8), the UDIM (12x10).
    assert set(rows) == {"grouptex.png", "generated", "wall"}
    # Everything else is in the report with the reason, and said on stderr: nothing is dropped silently.
    skipped = {row["name"]: row["reason"] for row in doc["images"] if row["status"] == "skipped"}
    assert "color.png" in skipped and "24 px > 20 px" in skipped["color.png"]
    assert "role data" in skipped["rough.png"] and doc["skipped"] == len(skipped)
    assert "color.png: left out: larger than the size limit" in proc.stderr
    assert rows["grouptex.png"]["output_size"] == [24, 24]
    assert (tmp_path / "up" / "grouptex_x2.png").is_file()
    # No --save: the .blend on disk is untouched.
    assert inspect(scene_dir / "scene.blend")["nodes"]["group TexGroup"] == ["grouptex.png"]


def test_headless_timeout_says_it_ran_out_and_how_far(scene_dir, env, tiny_model, tmp_path):
    report = tmp_path / "r.json"
    proc = upscale_blend(
        scene_dir,
        "--model",
        tiny_model,
        "--out-dir",
        str(tmp_path / "up"),
        "--timeout",
        "0.01",
        "--report",
        str(report),
        env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    said = re.search(
        r"error: the timeout \(0\.01 s\) ran out at (\d+)% of the job, (\d+) of 9 files written; "
        r"the job was cancelled; nothing was changed",
        proc.stderr,
    )
    assert said is not None, proc.stderr
    doc = json.loads(report.read_text())
    assert doc["error"].startswith("the timeout (0.01 s) ran out at ")
    assert doc["ok"] == 0 and all(r["status"] in ("failed", "skipped") for r in doc["images"])
    assert "no result" not in proc.stderr


def test_headless_worker_errors_name_the_scripts_own_flag(scene_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TEXUP_PYTHON"}
    proc = upscale_blend(
        scene_dir,
        "--worker-python",
        str(tmp_path / "no" / "python"),
        env=env,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--worker-python" in proc.stderr and "does not exist" in proc.stderr
    assert "preferences" not in proc.stderr


def test_headless_unknown_image_name_is_a_usage_error(scene_dir, env, tmp_path):
    report = tmp_path / "r.json"
    proc = upscale_blend(
        scene_dir,
        "--images",
        "nope.png",
        "--report",
        str(report),
        env=env,
    )
    assert proc.returncode == 2
    assert "nope.png" in proc.stderr and "nope.png" in json.loads(report.read_text())["error"]


def test_built_zip_installs_as_legacy_addon_and_lists_textures(scene_dir, tmp_path):
    build = subprocess.run(
        ["python3", str(REPO_ROOT / "scripts" / "build_addon.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    zip_path = build.stdout.strip()
    names = zipfile.ZipFile(zip_path).namelist()
    assert "texup_blender/blender_manifest.toml" in names and "texup_blender/bridge/client.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    user = tmp_path / "user_scripts"
    code = (
        "import bpy, sys\n"
        f"bpy.ops.preferences.addon_install(filepath={zip_path!r})\n"
        "bpy.ops.preferences.addon_enable(module='texup_blender')\n"
        "bpy.ops.texup.refresh()\n"
        "items = bpy.context.window_manager.texup_list.textures\n"
        "print('ROWS', sorted((i.name, i.role, i.source, i.users) for i in items))\n"
        "bpy.ops.preferences.addon_disable(module='texup_blender')\n"
    )
    proc = blender(
        str(scene_dir / "scene.blend"), "--python-expr", code, env={**os.environ, "BLENDER_USER_SCRIPTS": str(user)}
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS")), None)
    assert line is not None, proc.stdout + proc.stderr
    assert "('color.png', 'color', 'file', 2)" in line and "('wall', 'color', 'udim', 1)" in line


def test_headless_detail_blends_the_model_with_its_partner(scene_dir, env, worker_python, tmp_path):
    """--detail as the panel's slider: a model whose metadata names a partner runs as the blend of the two; the
    folder's manifest records the blend reference; a detail outside 0..1 is a usage error."""
    models = tmp_path / "models"
    code = (
        "import sys, torch; from pathlib import Path; from texup.archs import RRDBNet; "
        "from texup.weights import save_model; d = Path(sys.argv[1]); d.mkdir(); torch.manual_seed(0); "
        "save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), d / 'model.psnr.safetensors'); "
        "torch.manual_seed(1); save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), "
        "d / 'model.safetensors', provenance={'partner': {'file': 'model.psnr.safetensors', 'stage': 'psnr'}})"
    )
    subprocess.run([worker_python, "-c", code, str(models)], check=True, timeout=300)
    gan, out = models / "model.safetensors", tmp_path / "up"
    args = ("--model", str(gan), "--images", "color.png", "--out-dir", str(out), "--detail")
    proc = upscale_blend(scene_dir, *args, "0.4", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((out / ".texup" / "outputs.json").read_text())
    refs = {entry.get("model_ref") for entry in manifest["files"].values()}
    assert refs == {f"blend:{models / 'model.psnr.safetensors'},{gan}@0.4"}, manifest
    bad = upscale_blend(scene_dir, *args, "1.5", env=env)
    assert bad.returncode == 2 and "--detail" in bad.stderr
