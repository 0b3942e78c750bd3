"""One zip per platform for every Blender from 4.2 on: which bundled wheels Blender installs, decided by Blender's
own extension code (bpy 5.0.1's ``bl_pkg`` and ``_bpy_internal.extensions.wheel_manager``) for each Python that
Blender ships (3.11: 4.2 LTS to 5.0; 3.13: 5.1 to 5.3) on each platform, and texup run on the result.

Blender's code reads the running interpreter (``sys.version_info``, ``sysconfig.get_platform()``,
``platform_from_this_system()``); the tests set those to the Blender being imitated for the length of one call,
and call the same functions Blender calls when it installs or enables an extension:
``bl_pkg.manifest_compatible_with_wheel_data_or_error`` (the manifest's Python and platform check, then
``pkg_wheel_filter``: the wheels for this system), ``wheel_manager.wheel_list_deduplicate_as_skip_set`` (one wheel
per package) and ``wheel_manager.apply_action`` (the extraction).

Runs in the bpy environment (``.venv-blender``); the zips are built by the worker fixture's Python (the main venv:
model files and pip), all four platforms once (skipped, with the reason, when pip cannot reach a package index).
What no test here runs: a real Blender 5.1 to 5.3 (bpy 5.1+ needs Python 3.13; this environment's bpy is 5.0.1).
The nearest is ``test_linux_zip_runs_on_each_blender_python_with_its_numpy``: the wheels Blender's code extracts
for Python 3.13, with the numpy Blender 5.1+ ships, upscaling on a CPython 3.13 (``TEXUP_PYTHON313``, else
``python3.13`` on PATH or pyenv's).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "blender_addon"))

import bl_pkg  # noqa: E402  (Blender's extension manager: on sys.path once bpy is imported)
import build_addon  # noqa: E402
from _bpy_internal.extensions import wheel_manager  # noqa: E402
from bl_pkg import bl_extension_utils  # noqa: E402
from bridge import bundle as texup_bundle  # noqa: E402

# What ``sysconfig.get_platform()`` says in Blender's own Python on each platform (official builds; the macOS
# deployment target is Blender 4.2's minimum, macOS 11.2).
SYSCONFIG_PLATFORM = {
    "linux-x64": "linux-x86_64",
    "windows-x64": "win-amd64",
    "macos-arm64": "macosx-11.2-arm64",
    "macos-x64": "macosx-11.2-x86_64",
}
# The Python of each Blender release line and the numpy it ships (docs/blender-versions.md says where from).
# 3.11 is tested with numpy 1.24.3 here (the oldest a Blender 4.2+ may carry; texup's floor) and with 1.26.4
# through bpy 5.0.1 in test_bundle_bpy.py.
BLENDERS = {"3.11": "1.24.3", "3.13": "2.3.4"}


@pytest.fixture(scope="module")
def platform_zips(worker_python: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [worker_python, str(REPO_ROOT / "scripts" / "build_addon.py"), "--all", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if build.returncode != 0 and (
        "Could not find a version" in build.stdout + build.stderr or "NewConnectionError" in build.stdout + build.stderr
    ):
        pytest.skip(f"pip cannot download the wheels here: {build.stdout[-500:]}{build.stderr[-500:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    zips = {p: Path(line) for line in build.stdout.split() for p in build_addon.PLATFORMS if line.endswith(f"-{p}.zip")}
    assert set(zips) == set(build_addon.PLATFORMS), build.stdout
    return zips


@contextlib.contextmanager
def blender_system(platform: str, python: str):
    """Blender's extension code sees the Python ``python`` on ``platform`` inside this block."""
    major, minor = (int(part) for part in python.split("."))
    saved = sys.version_info, sysconfig.get_platform, bl_extension_utils.platform_from_this_system
    sys.version_info = (major, minor, 0, "final", 0)  # type: ignore[assignment]
    sysconfig.get_platform = lambda: SYSCONFIG_PLATFORM[platform]
    bl_extension_utils.platform_from_this_system = lambda: platform
    try:
        yield
    finally:
        sys.version_info, sysconfig.get_platform, bl_extension_utils.platform_from_this_system = saved  # type: ignore[assignment]


def unpack_as_installed(zip_path: Path, repo: Path) -> Path:
    """The zip extracted as Blender lays an installed extension out: ``<repo>/<id>/``."""
    package = repo / "texup"
    if not package.is_dir():
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(package)
    return package


def blender_wheel_choice(package: Path, platform: str, python: str) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """What Blender on ``platform`` with ``python`` decides for the installed extension at ``package``: the
    incompatibility message (``None``: installs) and the wheel list it extracts."""
    wheel_list: list[tuple[str, list[str]]] = []
    with blender_system(platform, python):
        error = bl_pkg.manifest_compatible_with_wheel_data_or_error(
            str(package / "blender_manifest.toml"), "user_default", package.name, str(package.parent), wheel_list
        )
    return error, wheel_list


def distribution(wheel: str) -> str:
    return build_addon._normalize(os.path.basename(wheel).split("-")[0])


@pytest.mark.parametrize("platform", list(build_addon.PLATFORMS))
def test_every_bundled_package_resolves_to_one_wheel_for_each_blender_python(
    platform: str, platform_zips: dict[str, Path], tmp_path: Path
):
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    zip_path = platform_zips[platform]
    package = unpack_as_installed(zip_path, tmp_path / "repo")
    described = json.loads((package / "texup_bundle.json").read_text())
    assert sorted(described["pythons"]) == sorted(BLENDERS)
    all_dists = {distribution(w) for w in described["wheels"]}
    assert {"ncnn", "pillow", "openexr", "imagecodecs", "safetensors", "charset-normalizer"} <= all_dists

    for python in BLENDERS:
        error, wheel_list = blender_wheel_choice(package, platform, python)
        assert error is None, f"Blender on {platform} with Python {python} refuses the zip: {error}"
        assert len(wheel_list) == 1, wheel_list
        chosen = wheel_list[0][1]
        # One wheel per package (Blender would otherwise keep one by version and file name) ...
        assert wheel_manager.wheel_list_deduplicate_as_skip_set(wheel_list) == set(), (platform, python, chosen)
        assert sorted(distribution(w) for w in chosen) == sorted(all_dists), (platform, python, chosen)
        # ... exactly the ones texup_bundle.json lists for that Python (what bridge/bundle.py checks for) ...
        assert sorted(os.path.basename(w) for w in chosen) == sorted(described["pythons"][python])
        # ... and each one loads on that CPython there: Blender's filter ignores the glibc and macOS versions,
        # so the tags are also checked against the oldest system Blender 4.2+ runs on.
        version = tuple(int(part) for part in python.split("."))
        supported = {
            *tags.cpython_tags(version, platforms=build_addon.PLATFORMS[platform]),
            *tags.compatible_tags(version, platforms=build_addon.PLATFORMS[platform]),
        }
        for wheel in chosen:
            assert parse_wheel_filename(os.path.basename(wheel))[3] & supported, (python, platform, wheel)
        binary = [os.path.basename(w) for w in chosen if not w.endswith("-none-any.whl")]
        assert any(f"-cp{version[0]}{version[1]}-cp{version[0]}{version[1]}-" in w for w in binary), binary

    # A Python no Blender 4.2+ ships is refused by Blender at install, with its own message.
    error, _ = blender_wheel_choice(package, platform, "3.12")
    assert error is not None and "Python version (3.12)" in error, error


def test_a_zip_with_only_the_311_wheels_is_refused_by_blender_on_313(platform_zips: dict[str, Path], tmp_path: Path):
    """What the zips were before: Blender 5.1+ does not take them. The check above would see this."""
    package = unpack_as_installed(platform_zips["linux-x64"], tmp_path / "repo")
    described = json.loads((package / "texup_bundle.json").read_text())
    manifest = (package / "blender_manifest.toml").read_text()
    for name in set(described["wheels"]) - set(described["pythons"]["3.11"]):
        manifest = manifest.replace(f'  "./wheels/{name}",\n', "")
    (package / "blender_manifest.toml").write_text(manifest)
    assert blender_wheel_choice(package, "linux-x64", "3.11")[0] is None
    error, _ = blender_wheel_choice(package, "linux-x64", "3.13")
    assert error is not None and "Python version (3.13) isn't compatible with (3.11)" in error, error


def test_blenders_that_choose_wheels_by_platform_only_are_refused(platform_zips: dict[str, Path], tmp_path: Path):
    """Blender 4.2.0 keeps every wheel of the platform, then one per package by file name (cp313 over cp311 on
    its Python 3.11): the zips ask for 4.2.13, the oldest release checked to choose by Python too."""
    import tomllib

    package = unpack_as_installed(platform_zips["linux-x64"], tmp_path / "repo")
    manifest = tomllib.loads((package / "blender_manifest.toml").read_text())
    assert manifest["blender_version_min"] == build_addon.PLATFORM_BLENDER_MIN == "4.2.13"

    def refusal(blender: tuple[int, int, int]) -> str | None:
        return bl_extension_utils.pkg_manifest_params_compatible_or_error(
            blender_version_min=manifest["blender_version_min"],
            blender_version_max="",
            platforms=manifest["platforms"],
            python_versions=["3.11", "3.13"],
            this_platform="linux-x64",
            this_blender_version=blender,
            this_python_version=(3, 11, 0),
            error_fn=print,
        )

    assert refusal((4, 2, 12)) is not None and refusal((4, 2, 0)) is not None
    assert refusal((4, 2, 13)) is None and refusal((5, 0, 1)) is None


@pytest.mark.parametrize("platform", list(build_addon.PLATFORMS))
def test_each_zip_passes_blenders_validator_and_stays_under_the_size_limit(
    platform: str, platform_zips: dict[str, Path]
):
    validator = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    run = subprocess.run(
        [sys.executable, str(validator), "validate", str(platform_zips[platform])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert platform_zips[platform].stat().st_size < build_addon.SIZE_WARN_MB * 1e6


def find_python(version: str) -> str | None:
    """A CPython ``version`` interpreter: ``TEXUP_PYTHON<XY>``, ``python<X.Y>`` on PATH, or pyenv's."""
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return sys.executable
    candidates = [
        os.environ.get("TEXUP_PYTHON" + version.replace(".", "")),
        shutil.which(f"python{version}"),
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True),
    ]
    for candidate in filter(None, candidates):
        try:  # a pyenv shim on PATH may be there without the version behind it
            said = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except OSError:
            continue
        if said.returncode == 0 and said.stdout.strip() == version:
            return candidate
    return None


_RUN = r"""
import json, os, sys
import numpy as np
import ncnn, PIL, imagecodecs, OpenEXR, tifffile, safetensors, texup
from texup.imageio import read_image, write_image
work = sys.argv[1]
rng = np.random.default_rng(0)
write_image(os.path.join(work, "deep.png"), (rng.random((12, 10, 4)) * 65535).astype(np.uint16))
write_image(os.path.join(work, "hdr.exr"), (rng.random((12, 10, 3)) * 4).astype(np.float16))
print("MODULES " + json.dumps({"python": "%d.%d" % sys.version_info[:2], "numpy": np.__version__,
      "files": {m.__name__: m.__file__ for m in (np, ncnn, PIL, imagecodecs, OpenEXR, texup)}}))
"""
_CHECK = r"""
import json, os, sys
from texup.imageio import read_image
out = os.path.join(sys.argv[1], "out")
print("OUTPUTS " + json.dumps([[str(i.pixels.dtype), list(i.pixels.shape)] for i in
      (read_image(os.path.join(out, "deep_x4.png")), read_image(os.path.join(out, "hdr_x4.exr")))]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="runs the linux-x64 wheels")
@pytest.mark.parametrize("python", list(BLENDERS))
def test_linux_zip_runs_on_each_blender_python_with_its_numpy(
    python: str, platform_zips: dict[str, Path], worker_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The wheels Blender's code extracts for ``python`` (``apply_action``, as on install), the numpy that
    Blender release line ships in place of Blender's own site-packages, and texup's bundled core: the bundled
    engine upscales a 16-bit RGBA PNG and a half-float EXR with the bundled model on that CPython."""
    interpreter = find_python(python)
    if interpreter is None:
        pytest.skip(f"no CPython {python} here (set TEXUP_PYTHON{python.replace('.', '')})")
    numpy_version = BLENDERS[python]
    numpy_dir = tmp_path / "blender-python-site"
    fetch = subprocess.run(
        [worker_python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps"]
        + [arg for tag in build_addon.PLATFORMS["linux-x64"] for arg in ("--platform", tag)]
        + ["--python-version", python, "--dest", str(tmp_path / "numpy"), f"numpy=={numpy_version}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if fetch.returncode != 0:
        pytest.skip(f"pip cannot download numpy {numpy_version} for Python {python}: {fetch.stderr[-500:]}")
    for wheel in (tmp_path / "numpy").glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(numpy_dir)

    package = unpack_as_installed(platform_zips["linux-x64"], tmp_path / "repo")
    error, wheel_list = blender_wheel_choice(package, "linux-x64", python)
    assert error is None, error
    local = tmp_path / "repo" / ".local"
    site = local / "lib" / f"python{python}" / "site-packages"
    site.mkdir(parents=True)
    errors: list[Exception] = []
    wheel_manager.apply_action(
        local_dir=str(local),
        local_dir_site_packages=str(site),
        wheel_list=wheel_list,
        error_fn=errors.append,
        remove_error_fn=lambda path, err: errors.append(err),
        debug=False,
    )
    assert not errors, errors

    # The add-on's own launch on that Blender: the bundled core and the folder of the extracted wheels.
    major, minor = (int(part) for part in python.split("."))
    monkeypatch.setattr(sys, "version_info", (major, minor, 0, "final", 0))
    launch = texup_bundle.bundled_launch(str(package), interpreter, search_path=[str(site)], environ={})
    monkeypatch.undo()
    assert launch is not None and launch.env["PYTHONPATH"].split(os.pathsep) == [str(package / "core"), str(site)]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "TEXUP_HOME": str(tmp_path / "texup_home"),
        **launch.env,
        "PYTHONPATH": os.pathsep.join([launch.env["PYTHONPATH"], str(numpy_dir)]),
    }
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> str:
        # -S: no site-packages of the interpreter's own; only Blender's numpy, the extension's folder, the core.
        done = subprocess.run([interpreter, "-S", *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    modules = json.loads(next(ln for ln in run("-c", _RUN, str(work)).splitlines() if ln.startswith("MODULES "))[8:])
    assert modules["python"] == python and modules["numpy"] == numpy_version, modules
    assert modules["files"]["numpy"].startswith(str(numpy_dir)), modules
    for name in ("ncnn", "PIL", "imagecodecs", "OpenEXR"):
        assert modules["files"][name].startswith(str(site)), modules
    assert modules["files"]["texup"].startswith(str(package / "core")), modules
    run(
        "-m", "texup", "upscale", str(work / "deep.png"), str(work / "hdr.exr"), "-o", str(work / "out"),
        "--model", "realesr-animevideov3", "--engine", "ncnn", "--device", "cpu",
    )  # fmt: skip
    outputs = json.loads(next(ln for ln in run("-c", _CHECK, str(work)).splitlines() if ln.startswith("OUTPUTS "))[8:])
    assert outputs == [["uint16", [48, 40, 4]], ["float16", [48, 40, 3]]]
