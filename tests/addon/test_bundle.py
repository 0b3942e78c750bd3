"""bridge.bundle: what an installed platform build carries, and which worker the add-on starts (no Blender)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge import bundle  # noqa: E402
from bridge.client import WorkerStartError  # noqa: E402

WHEELS = [
    "ncnn-1.0.20261020-cp311-cp311-manylinux_2_28_x86_64.whl",
    "pillow-13.0.0-cp311-cp311-win_amd64.whl",
    "OpenEXR-3.5.3-cp311-cp311-macosx_11_0_arm64.whl",
]


def make_addon(tmp_path: Path, wheels=WHEELS, models=("realesrgan-x4plus.param",), pythons=None) -> Path:
    addon = tmp_path / "addon"
    (addon / "core" / "texup").mkdir(parents=True)
    (addon / "core" / "texup" / "__init__.py").write_text("")
    (addon / "models").mkdir()
    described = {"format": 1, "platform": "linux-x64", "texup": "0.1.0", "wheels": list(wheels), "models": list(models)}
    if pythons is not None:
        described["pythons"] = pythons
    (addon / bundle.BUNDLE_FILE).write_text(json.dumps(described))
    return addon


def make_site(folder: Path, *dist_infos: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in dist_infos:
        (folder / f"{name}.dist-info").mkdir()
    return folder


def make_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_no_bundle_file_means_no_bundle(tmp_path):
    assert bundle.read_bundle(str(tmp_path)) is None
    assert bundle.bundled_pythonpath(str(tmp_path)) == []
    assert bundle.bundled_launch(str(tmp_path)) is None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": 99}),
        json.dumps({"format": 1, "platform": "x"}),
        json.dumps({"format": 1, "platform": "x", "texup": "0", "wheels": [], "models": [], "pythons": ["3.11"]}),
    ],
)
def test_a_damaged_bundle_file_says_reinstall(tmp_path, content):
    (tmp_path / bundle.BUNDLE_FILE).write_text(content)
    with pytest.raises(bundle.BundleError, match="reinstall the texup extension"):
        bundle.read_bundle(str(tmp_path))


def test_pythonpath_is_the_core_then_the_folder_blender_extracted_the_wheels_into(tmp_path):
    addon = make_addon(tmp_path)
    site = make_site(tmp_path / "ext" / "site-packages", "ncnn-1.0.20261020", "pillow-13.0.0", "openexr-3.5.3")
    other = make_site(tmp_path / "elsewhere")
    paths = bundle.bundled_pythonpath(str(addon), [str(other), str(site)])
    assert paths == [str(addon / "core"), str(site)]


def test_wheels_missing_from_every_folder_are_named(tmp_path):
    addon = make_addon(tmp_path)
    site = make_site(tmp_path / "site", "ncnn-1.0.20261020")
    with pytest.raises(bundle.BundleError) as err:
        bundle.bundled_pythonpath(str(addon), [str(site)])
    assert "pillow 13.0.0" in str(err.value) and "OpenEXR 3.5.3" in str(err.value)
    assert "ncnn" not in str(err.value).split("(")[1].split(")")[0]
    assert "Install from Disk" in str(err.value)


def test_an_older_version_of_a_wheel_does_not_count(tmp_path):
    addon = make_addon(tmp_path, wheels=[WHEELS[0]])
    site = make_site(tmp_path / "site", "ncnn-1.0.20250101")
    with pytest.raises(bundle.BundleError, match="ncnn 1.0.20261020"):
        bundle.bundled_pythonpath(str(addon), [str(site)])


def test_the_interpreters_own_site_packages_come_last(tmp_path):
    """A dependency Blender's Python also has (e.g. requests) is taken from the extension's folder."""
    addon = make_addon(tmp_path, wheels=["requests-2.34.2-py3-none-any.whl"])
    own = Path(sys.prefix) / "lib" / "site-packages-probe"
    ext = make_site(tmp_path / "ext", "requests-2.34.2")
    assert bundle.bundled_pythonpath(str(addon), [str(own), str(ext)]) == [str(addon / "core"), str(ext)]


# One zip for Blender 4.2 to 5.0 (Python 3.11) and 5.1 on (3.13): Blender extracts only its own Python's wheels.
CP311 = "ncnn-1.0.20261020-cp311-cp311-manylinux_2_28_x86_64.whl"
CP313 = "ncnn-1.0.20261020-cp313-cp313-manylinux_2_28_x86_64.whl"
ABI3 = "imagecodecs-2026.3.6-cp311-abi3-manylinux_2_28_x86_64.whl"
NEWER_FOR_313 = "tifffile-2026.9.1-py3-none-any.whl"  # a package resolved to another version for one Python
PYTHONS = {
    "3.11": [CP311, ABI3, "tifffile-2026.3.3-py3-none-any.whl"],
    "3.13": [CP313, ABI3, NEWER_FOR_313],
}


@pytest.mark.parametrize("python", [(3, 11), (3, 13)])
def test_only_the_wheels_for_the_running_python_must_be_installed(tmp_path, python):
    addon = make_addon(tmp_path, wheels=sorted({w for ws in PYTHONS.values() for w in ws}), pythons=PYTHONS)
    installed = {
        (3, 11): ("ncnn-1.0.20261020", "tifffile-2026.3.3"),
        (3, 13): ("ncnn-1.0.20261020", "tifffile-2026.9.1"),
    }
    site = make_site(tmp_path / "site", "imagecodecs-2026.3.6", *installed[python])
    assert bundle.wheel_site_dirs(bundle.read_bundle(str(addon)), [str(site)], python) == [str(site)]
    other = (3, 13) if python == (3, 11) else (3, 11)
    with pytest.raises(bundle.BundleError, match="tifffile"):  # the other Python's tifffile is not there
        bundle.wheel_site_dirs(bundle.read_bundle(str(addon)), [str(site)], other)


def test_a_python_the_bundle_has_no_wheels_for_is_named(tmp_path):
    addon = make_addon(tmp_path, wheels=[CP311, CP313], pythons={"3.11": [CP311], "3.13": [CP313]})
    site = make_site(tmp_path / "site", "ncnn-1.0.20261020")
    with pytest.raises(bundle.BundleError) as err:
        bundle.wheel_site_dirs(bundle.read_bundle(str(addon)), [str(site)], (3, 12))
    assert "Python 3.12" in str(err.value) and "3.11 and 3.13" in str(err.value) and "Worker Python" in str(err.value)


def test_a_bundle_for_one_python_checks_every_wheel(tmp_path):
    """A bundle without ``pythons`` (made for one Python) is checked whole, whatever the running Python."""
    addon = make_addon(tmp_path, wheels=[CP311])
    site = make_site(tmp_path / "site", "ncnn-1.0.20261020")
    assert bundle.wheel_site_dirs(bundle.read_bundle(str(addon)), [str(site)], (3, 13)) == [str(site)]


def test_missing_core_is_an_error(tmp_path):
    addon = make_addon(tmp_path, wheels=[])
    (addon / "core" / "texup" / "__init__.py").unlink()
    with pytest.raises(bundle.BundleError, match="bundled texup package is missing"):
        bundle.bundled_pythonpath(str(addon), [])


def test_bundled_launch_runs_blenders_python_with_the_bundle(tmp_path):
    addon = make_addon(tmp_path, wheels=[WHEELS[0]])
    site = make_site(tmp_path / "site", "ncnn-1.0.20261020")
    launch = bundle.bundled_launch(
        str(addon), "/blender/python3.11", search_path=[str(site)], environ={"PYTHONPATH": "/user/path"}
    )
    assert launch.source == "bundled" and launch.python == "/blender/python3.11"
    assert launch.env["PYTHONPATH"].split(os.pathsep) == [str(addon / "core"), str(site), "/user/path"]
    assert launch.env["TEXUP_NCNN_MODELS"] == str(addon / "models")
    assert launch.env["PYTHONNOUSERSITE"] == "1"
    assert "no PyTorch" in launch.description and "0.1.0" in launch.description


SAFETENSORS = "safetensors-0.8.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"


def test_a_blender_that_skips_safetensors_still_starts_the_worker_and_says_what_is_lost(tmp_path):
    """Blender 4.3.0 skips safetensors' cp310-abi3 wheel (docs/blender-versions.md): the packaged ncnn models need
    none of it, so the worker starts, and the launch says which models cannot load there."""
    addon = make_addon(tmp_path, wheels=[WHEELS[0], SAFETENSORS])
    site = make_site(tmp_path / "site", "ncnn-1.0.20261020")
    found = bundle.installed_wheels(bundle.read_bundle(str(addon)), [str(site)])
    assert found.folders == [str(site)] and found.lacking == ["safetensors 0.8.0"]
    launch = bundle.bundled_launch(str(addon), "/blender/python3.11", search_path=[str(site)], environ={})
    assert launch.env["PYTHONPATH"].split(os.pathsep) == [str(addon / "core"), str(site)]
    assert "did not install safetensors 0.8.0: .safetensors models" in launch.description
    # with it installed nothing is said; without a required one (ncnn) the worker does not start, naming both
    make_site(tmp_path / "site", "safetensors-0.8.0")
    assert "did not install" not in bundle.bundled_launch(str(addon), "/b/python", search_path=[str(site)]).description
    alone = make_site(tmp_path / "alone")
    with pytest.raises(bundle.BundleError, match=r"not installed \(ncnn 1.0.20261020, safetensors 0.8.0\)"):
        bundle.bundled_launch(str(addon), "/b/python", search_path=[str(alone)])


def test_torch_env_is_used_only_when_its_marker_exists(tmp_path):
    addon = make_addon(tmp_path, wheels=[])
    user = tmp_path / "user"
    env_dir = user / bundle.TORCH_ENV_DIRNAME
    make_python(Path(bundle.torch_env_python(str(env_dir))))
    assert bundle.torch_env_launch(str(user), str(addon)) is None  # half-made: no marker yet
    (env_dir / bundle.TORCH_ENV_MARKER).write_text(json.dumps({"torch": "2.13.0", "cuda": True}))
    launch = bundle.torch_env_launch(str(user), str(addon))
    assert launch.source == "torch-env" and launch.python == bundle.torch_env_python(str(env_dir))
    assert launch.env["PYTHONPATH"].split(os.pathsep)[0] == str(addon / "core")
    assert "torch 2.13.0, CUDA" in launch.description
    assert bundle.torch_env_launch(None, str(addon)) is None


def test_resolution_order_preference_env_var_torch_env_bundle_path(tmp_path, monkeypatch):
    addon = make_addon(tmp_path, wheels=[])
    user = tmp_path / "user"
    pref = make_python(tmp_path / "pref" / "python")
    env_py = make_python(tmp_path / "envvar" / "python")
    monkeypatch.setenv("PATH", str(tmp_path / "empty_path"))

    def resolve(preference, environ):
        return bundle.resolve_launch(
            preference, addon_dir=str(addon), user_dir=str(user), environ=environ, search_path=[]
        )

    assert resolve(str(pref), {"TEXUP_PYTHON": str(env_py)}).source == "preference"
    got = resolve("", {"TEXUP_PYTHON": str(env_py)})
    assert (got.source, got.python, got.env) == ("TEXUP_PYTHON", str(env_py), {})
    assert resolve(None, {}).source == "bundled"
    env_dir = user / bundle.TORCH_ENV_DIRNAME
    make_python(Path(bundle.torch_env_python(str(env_dir))))
    (env_dir / bundle.TORCH_ENV_MARKER).write_text(json.dumps({"torch": "2.13.0"}))
    assert resolve(None, {}).source == "torch-env"
    assert resolve(str(pref), {}).source == "preference"  # a chosen Worker Python still wins

    # No bundle (a source checkout, Blender 3.x): a texup command on PATH, else one clear error.
    (addon / bundle.BUNDLE_FILE).unlink()
    with pytest.raises(WorkerStartError, match="no bundled engine.*Worker Python"):
        bundle.resolve_launch(None, addon_dir=str(addon), user_dir=None, environ={})
    bin_dir = tmp_path / "bin"
    py = make_python(bin_dir / "python")
    script = make_python(bin_dir / "texup")
    script.write_text(f"#!{py}\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    got = bundle.resolve_launch(None, addon_dir=str(addon), user_dir=None, environ={})
    assert (got.source, got.python) == ("PATH", str(py))


def test_a_bundle_that_blender_did_not_install_is_a_start_error(tmp_path):
    addon = make_addon(tmp_path)
    with pytest.raises(WorkerStartError, match="not installed"):
        bundle.resolve_launch(None, addon_dir=str(addon), user_dir=None, environ={}, search_path=[])
