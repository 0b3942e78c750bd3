"""What the installed extension carries for its worker, and how to launch a worker from it. Stdlib only.

A platform build of the extension (``scripts/build_addon.py --platform linux-x64``) ships, besides the
add-on's own code:

* ``wheels/*.whl`` — texup's runtime dependencies (ncnn, Pillow, safetensors, imagecodecs, tifffile,
  OpenEXR, tqdm), unmodified index wheels listed in the manifest; Blender extracts them into its
  extensions' ``site-packages`` on install (numpy is Blender's own);
* ``core/texup/`` — texup's core package (pure Python);
* ``models/`` — Real-ESRGAN's pretrained ncnn files (x4plus, x4plus-anime, animevideov3), BSD-3-Clause;
* ``texup_bundle.json`` — what was bundled (platform, texup version, wheel file names, models), and which of
  the wheels are for which Python (``pythons``: Blender 4.2 to 5.0 run 3.11, 5.1 and later 3.13; one zip carries
  both, and Blender extracts only the ones for its own Python).

The worker then runs on Blender's own Python (``sys.executable``) with ``PYTHONPATH`` naming the bundled
core and the folder Blender extracted the wheels into: no second Python, no torch. When the PyTorch
environment made by Preferences → Install PyTorch exists (``<extension user folder>/torch-env`` with its
marker file), its Python runs the worker instead, with the same ``PYTHONPATH``: the torch engine (CUDA,
training) is added and the ncnn engine stays.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .client import WorkerStartError, find_worker_python

BUNDLE_FILE = "texup_bundle.json"
BUNDLE_FORMAT = 1
TORCH_ENV_DIRNAME = "torch-env"
TORCH_ENV_MARKER = "texup-torch-env.json"
"""Written into the PyTorch environment by the installer last, only on success: its presence means usable."""


class BundleError(RuntimeError):
    """The extension's bundle is damaged or not installed as Blender installs it; ``str`` says what to do."""


@dataclass(frozen=True)
class WorkerLaunch:
    """How to start a worker: ``<python> -m texup worker`` with ``env`` added to Blender's environment."""

    python: str
    env: dict[str, str] = field(default_factory=dict)
    source: str = "preference"  # "preference" | "TEXUP_PYTHON" | "torch-env" | "bundled" | "PATH"
    description: str = ""


@dataclass(frozen=True)
class Bundle:
    """The contents of ``texup_bundle.json`` of an installed platform build."""

    addon_dir: str
    platform: str
    texup_version: str
    wheels: tuple[str, ...]
    models: tuple[str, ...]
    pythons: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """``"3.13"`` → the wheels Blender installs on that Python; empty in a bundle made for one Python only."""

    def wheels_for(self, python: tuple[int, int]) -> tuple[str, ...]:
        """The wheels Blender extracted on a Python ``(major, minor)``. Raises :class:`BundleError` when the
        bundle carries none for it."""
        if not self.pythons:
            return self.wheels
        version = f"{python[0]}.{python[1]}"
        if version not in self.pythons:
            raise BundleError(
                f"this Blender runs Python {version}, and the texup extension carries its packages for Python "
                f"{' and '.join(sorted(self.pythons))} only (the Pythons of Blender 4.2 and later releases); "
                "use such a Blender, or set Worker Python to a Python with texup installed"
            )
        return self.pythons[version]

    @property
    def core_dir(self) -> str:
        return os.path.join(self.addon_dir, "core")

    @property
    def models_dir(self) -> str:
        return os.path.join(self.addon_dir, "models")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_distribution(filename: str) -> tuple[str, str]:
    """``(distribution, version)`` from a wheel file name (``ncnn-1.0.2-cp311-cp311-...whl``)."""
    parts = os.path.basename(filename).split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {filename}")
    return parts[0], parts[1]


def read_bundle(addon_dir: str) -> Bundle | None:
    """The bundle of the extension installed at ``addon_dir``; ``None`` when it has none (a source checkout
    or a build without ``--platform``). Raises :class:`BundleError` when the file is unreadable."""
    path = os.path.join(addon_dir, BUNDLE_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: unreadable ({err}); reinstall the texup extension") from err
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: not a texup bundle description of format {BUNDLE_FORMAT}; reinstall the texup extension"
        )
    try:
        return Bundle(
            addon_dir=addon_dir,
            platform=str(data["platform"]),
            texup_version=str(data["texup"]),
            wheels=tuple(str(w) for w in data["wheels"]),
            models=tuple(str(m) for m in data["models"]),
            pythons={str(v): tuple(str(w) for w in names) for v, names in data.get("pythons", {}).items()},
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise BundleError(f"{path}: missing or malformed field {err}; reinstall the texup extension") from err


#: Bundled distributions the worker starts without, and what is lost then. Blender 4.3.0 matches a wheel's Python
#: tag exactly and skips safetensors' stable-ABI wheel (``cp310-abi3``, the only kind safetensors publishes):
#: the packaged ncnn models need no safetensors, so the worker runs there, and texup says why a ``.safetensors``
#: model cannot load (docs/blender-versions.md).
OPTIONAL_DISTRIBUTIONS = {"safetensors": ".safetensors models (fine-tuned or blended, the Detail slider) cannot load"}


@dataclass(frozen=True)
class Installed:
    """Where Blender extracted a bundle's wheels for one Python: the folders holding them, and the optional
    distributions (:data:`OPTIONAL_DISTRIBUTIONS`) it did not install."""

    folders: list[str]
    lacking: list[str]


def installed_wheels(
    bundle: Bundle, search_path: Sequence[str] | None = None, python: tuple[int, int] | None = None
) -> Installed:
    """The folders (in ``search_path``, default ``sys.path``) holding the ``.dist-info`` of each wheel bundled
    for ``python`` (default: this interpreter, Blender's own): where Blender extracted them. Raises
    :class:`BundleError` naming the wheels that are not installed, unless all of them are optional."""
    wanted = bundle.wheels_for(python or (sys.version_info[0], sys.version_info[1]))
    search_path = list(sys.path if search_path is None else search_path)
    # The folder Blender extracted the wheels into comes before the interpreter's own site-packages (where
    # Blender's Python may hold some of the same small dependencies, e.g. requests): only what is found
    # nowhere else is taken from there.
    own = tuple(os.path.join(os.path.abspath(p), "") for p in {sys.prefix, sys.base_prefix})
    search_path.sort(key=lambda folder: os.path.join(os.path.abspath(folder or "."), "").startswith(own))
    listings: list[tuple[str, set]] = []
    for folder in search_path:
        if folder and os.path.isdir(folder):
            try:
                names = {_normalize(n[: -len(".dist-info")]) for n in os.listdir(folder) if n.endswith(".dist-info")}
            except OSError:
                continue
            listings.append((folder, names))
    found: list[str] = []
    missing: list[str] = []
    lacking: list[str] = []
    for wheel in wanted:
        dist, version = wheel_distribution(wheel)
        key = _normalize(f"{dist}-{version}")
        holder = next((f for f, names in listings if key in names), None)
        if holder is None:
            (lacking if _normalize(dist) in OPTIONAL_DISTRIBUTIONS else missing).append(f"{dist} {version}")
        elif holder not in found:
            found.append(holder)
    if missing:
        raise BundleError(
            f"the extension's packages are not installed ({', '.join(missing + lacking)}): Blender extracts "
            "them when the extension is installed from its zip; reinstall it from "
            "Preferences > Get Extensions > Install from Disk"
        )
    return Installed(found, lacking)


def wheel_site_dirs(
    bundle: Bundle, search_path: Sequence[str] | None = None, python: tuple[int, int] | None = None
) -> list[str]:
    """The folders of :func:`installed_wheels` (the worker's ``PYTHONPATH`` after the core)."""
    return installed_wheels(bundle, search_path, python).folders


def _checked_core(bundle: Bundle) -> str:
    """The bundled texup core's folder; :class:`BundleError` when it is missing."""
    if not os.path.isfile(os.path.join(bundle.core_dir, "texup", "__init__.py")):
        raise BundleError(f"{bundle.core_dir}: the bundled texup package is missing; reinstall the texup extension")
    return bundle.core_dir


def bundled_pythonpath(addon_dir: str, search_path: Sequence[str] | None = None) -> list[str]:
    """The folders the worker needs on ``PYTHONPATH``: the bundled texup core, then the folders of the
    extracted wheels. ``[]`` without a bundle; :class:`BundleError` when the bundle is incomplete."""
    bundle = read_bundle(addon_dir)
    if bundle is None:
        return []
    return [_checked_core(bundle), *wheel_site_dirs(bundle, search_path)]


def _bundle_env(bundle: Bundle, installed: Installed, environ: Mapping[str, str]) -> dict[str, str]:
    paths = [_checked_core(bundle), *installed.folders]
    inherited = environ.get("PYTHONPATH", "")
    env = {
        "PYTHONPATH": os.pathsep.join(paths + ([inherited] if inherited else [])),
        # Packages in the user's own site folder (pip install --user) must not shadow the bundled ones.
        "PYTHONNOUSERSITE": "1",
    }
    if bundle.models:
        env["TEXUP_NCNN_MODELS"] = bundle.models_dir
    return env


def bundled_launch(
    addon_dir: str,
    python: str | None = None,
    *,
    search_path: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerLaunch | None:
    """A worker on Blender's own Python (``python``, default ``sys.executable``) with the bundle; ``None``
    without a bundle. Raises :class:`BundleError` when the bundle is there but not installed."""
    bundle = read_bundle(addon_dir)
    if bundle is None:
        return None
    installed = installed_wheels(bundle, search_path)
    env = _bundle_env(bundle, installed, os.environ if environ is None else environ)
    without = "".join(
        f"; this Blender did not install {name}: {OPTIONAL_DISTRIBUTIONS[_normalize(name.split()[0])]}"
        for name in installed.lacking
    )
    return WorkerLaunch(
        python=python or sys.executable,
        env=env,
        source="bundled",
        description=f"Blender's Python with the bundled texup {bundle.texup_version} (ncnn: CPU, "
        f"Vulkan GPUs; no PyTorch{without})",
    )


def torch_env_python(env_dir: str) -> str:
    """The interpreter of a virtual environment folder (``bin/python`` or ``Scripts\\python.exe``)."""
    if os.name == "nt":
        return os.path.join(env_dir, "Scripts", "python.exe")
    return os.path.join(env_dir, "bin", "python")


def torch_env_marker(user_dir: str) -> dict | None:
    """The installer's marker of ``<user_dir>/torch-env`` (a dict), or ``None`` when there is no usable env."""
    path = os.path.join(user_dir, TORCH_ENV_DIRNAME, TORCH_ENV_MARKER)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def torch_env_launch(
    user_dir: str | None,
    addon_dir: str,
    *,
    search_path: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> WorkerLaunch | None:
    """A worker on the PyTorch environment's Python (with the bundle's ``PYTHONPATH`` when there is a
    bundle), or ``None`` when no finished PyTorch environment exists."""
    if not user_dir:
        return None
    marker = torch_env_marker(user_dir)
    if marker is None:
        return None
    python = torch_env_python(os.path.join(user_dir, TORCH_ENV_DIRNAME))
    if not os.path.isfile(python):
        return None
    bundle = read_bundle(addon_dir)
    env = (
        {}
        if bundle is None
        else _bundle_env(bundle, installed_wheels(bundle, search_path), os.environ if environ is None else environ)
    )
    torch_version = marker.get("torch") or "?"
    return WorkerLaunch(
        python=python,
        env=env,
        source="torch-env",
        description=f"texup's PyTorch environment (torch {torch_version}"
        f"{', CUDA' if marker.get('cuda') else ''}) with the bundled engines",
    )


def resolve_launch(
    preference: str | None,
    *,
    addon_dir: str,
    user_dir: str | None,
    environ: Mapping[str, str] | None = None,
    search_path: Sequence[str] | None = None,
) -> WorkerLaunch:
    """How to start the worker, in this order: the 'Worker Python' preference, ``TEXUP_PYTHON``, the
    PyTorch environment made by the installer (in ``user_dir``), Blender's own Python with the bundled
    texup (a platform build of the extension at ``addon_dir``), a ``texup`` command on PATH.

    Raises :class:`WorkerStartError` with what to do when there is none, or when the bundle is damaged.
    """
    environ = os.environ if environ is None else environ
    explicit = find_worker_python(preference or None, environ=environ, search_path=False)
    if explicit is not None:
        source = "preference" if preference and preference.strip() else "TEXUP_PYTHON"
        setting = "Worker Python preference" if source == "preference" else "TEXUP_PYTHON environment variable"
        return WorkerLaunch(python=explicit, source=source, description=f"{explicit} (the {setting})")
    try:
        launch = torch_env_launch(user_dir, addon_dir, environ=environ, search_path=search_path) or bundled_launch(
            addon_dir, environ=environ, search_path=search_path
        )
    except BundleError as err:
        raise WorkerStartError(str(err)) from err
    if launch is not None:
        return launch
    on_path = find_worker_python(None, environ={}, search_path=True)
    if on_path is not None:
        return WorkerLaunch(python=on_path, source="PATH", description=f"{on_path} (the texup command on PATH)")
    from . import client

    raise WorkerStartError(
        "no texup worker: this copy of the add-on has no bundled engine (a source build, or Blender 3.x), "
        "TEXUP_PYTHON is not set and no texup command is on PATH. Install the texup extension zip for your "
        f"platform in Blender 4.2+, or name the python of an environment with texup installed: {client.SETTING_HINT}"
    )
