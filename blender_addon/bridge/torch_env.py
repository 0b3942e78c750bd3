"""Install PyTorch on demand: a virtual environment of Blender's Python under the extension's user folder.

Torch is gigabytes per platform and cannot ship inside an extension, so Preferences → Install PyTorch
builds ``<user dir>/torch-env`` when a user wants training or NVIDIA CUDA:

1. ``<Blender's python> -m venv <user dir>/torch-env.partial`` (Blender's Python, so the bundled
   wheels' compiled modules match the interpreter);
2. ``<venv python> -m pip install <torch requirement>`` from the index that fits the machine
   (:func:`plan_install`: PyTorch's CUDA index with an NVIDIA GPU, its CPU index on Linux without one,
   pip's configured index on Windows/macOS without one). When the plan names an index, pip sees only that
   one: package sources from pip's configuration (``extra-index-url``, ``find-links``: files or ``PIP_*``)
   are left out of this step, its other settings (certificates, proxy, timeouts, constraints) kept
   (:func:`index_only_env`); otherwise a newer torch on an extra index wins pip's choice and a machine
   without an NVIDIA GPU gets the 5 GB CUDA build (issue 19). The build pip installed is checked against the
   plan;
3. ``<venv python> -m pip install numpy==<Blender's numpy version>`` from pip's configured index (the
   bundled wheels were built against Blender's numpy);
4. a check that torch and numpy import, then the marker file (:data:`TORCH_ENV_MARKER`, written last)
   and the rename to ``torch-env``.

texup itself is not installed there: the worker runs that Python with ``PYTHONPATH`` naming the bundled
core and wheels (``bundle.torch_env_launch``). Any failure or a cancel removes the ``.partial`` folder,
so a failed install changes nothing; ``torch-install.log`` keeps pip's whole output. Overrides for
tests and mirrors: ``TEXUP_TORCH_REQUIREMENT`` (e.g. ``torch==2.13.0``) and ``TEXUP_TORCH_INDEX_URL``
(a URL; empty: pip's configured index). Stdlib only: no bpy, no torch.
"""

from __future__ import annotations

import ast
import collections
import datetime
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .bundle import TORCH_ENV_DIRNAME, TORCH_ENV_MARKER, torch_env_marker

TORCH_REQUIREMENT = "torch>=2.13"  # texup's torch extra (pyproject.toml), checked by a test
"""texup's ``torch`` extra (pyproject.toml; a test keeps the two equal)."""
CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu128"
"""PyTorch's CUDA 12.8 wheels (drivers from 570 on Linux/Windows; every NVIDIA GPU from Maxwell to Blackwell)."""
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
"""PyTorch's CPU-only wheels: on Linux, PyPI's torch is the multi-gigabyte CUDA build."""
ENV_REQUIREMENT = "TEXUP_TORCH_REQUIREMENT"
ENV_INDEX_URL = "TEXUP_TORCH_INDEX_URL"
PARTIAL_SUFFIX = ".partial"
LOG_NAME = "torch-install.log"
MARKER_FORMAT = 1

_PROBE_NUMPY = (
    "import importlib.metadata as m\n"
    "try:\n    print(m.version('numpy'))\nexcept m.PackageNotFoundError:\n    print('')\n"
)
_VERIFY = (
    "import json, sys, numpy, torch\n"
    "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'numpy': numpy.__version__, "
    "'python': '.'.join(map(str, sys.version_info[:3]))}))\n"
)


class InstallError(RuntimeError):
    """The install failed; ``str(err)`` is one line saying why and what to do. Nothing was changed."""


class InstallCancelled(RuntimeError):
    """The user cancelled; nothing was changed."""


# --- the plan (pure) -------------------------------------------------------------------------------


def has_nvidia_gpu(
    platform: str = sys.platform,
    *,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
) -> bool:
    """Whether an NVIDIA driver is installed: ``nvidia-smi`` on PATH, or (Linux) ``/proc/driver/nvidia/version``."""
    if platform == "darwin":
        return False  # no CUDA builds of torch for macOS
    if which("nvidia-smi.exe" if platform == "win32" else "nvidia-smi"):
        return True
    if platform == "win32":
        system_root = os.environ.get("SystemRoot", r"C:\Windows")
        return exists(os.path.join(system_root, "System32", "nvidia-smi.exe"))
    return exists("/proc/driver/nvidia/version")


@dataclass(frozen=True)
class InstallPlan:
    """What :class:`TorchInstaller` will do. ``index_url`` ``None``: pip's configured index (PyPI unless
    the user's pip config says otherwise). ``cuda``: an NVIDIA GPU was found (the CUDA build is wanted)."""

    user_dir: str
    base_python: str
    torch_requirement: str
    index_url: str | None
    cuda: bool
    platform: str = sys.platform

    @property
    def env_dir(self) -> str:
        return os.path.join(self.user_dir, TORCH_ENV_DIRNAME)

    @property
    def partial_dir(self) -> str:
        return self.env_dir + PARTIAL_SUFFIX

    @property
    def log_path(self) -> str:
        return os.path.join(self.user_dir, LOG_NAME)

    def venv_python(self, env_dir: str | None = None) -> str:
        root = env_dir or self.partial_dir
        if self.platform == "win32":
            return os.path.join(root, "Scripts", "python.exe")
        return os.path.join(root, "bin", "python")

    @property
    def index_label(self) -> str:
        return self.index_url or "pip's configured package index"

    @property
    def build(self) -> str | None:
        """The torch build the index gives: "CUDA", "CPU", or None when only the index knows (a user's URL, or
        pip's configured index on Linux, where PyPI's torch is the CUDA build)."""
        if self.index_url == CUDA_INDEX_URL:
            return "CUDA"
        if self.index_url == CPU_INDEX_URL or (self.index_url is None and self.platform in ("win32", "darwin")):
            return "CPU"
        return None

    def summary(self) -> str:
        build = f"{self.build} build" if self.build else "the build that index offers"
        return f"{self.torch_requirement} ({build}) from {self.index_label} into {self.env_dir}"

    def pip_install(self, requirement: str, index_url: str | None) -> list[str]:
        command = [self.venv_python(), "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
        if index_url:
            command += ["--index-url", index_url]
        return command + [requirement]


def plan_install(
    user_dir: str,
    base_python: str = sys.executable,
    *,
    platform: str = sys.platform,
    nvidia: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> InstallPlan:
    """The install for this machine: which torch build from which index (see the module docstring).

    ``nvidia`` ``None``: detect (:func:`has_nvidia_gpu`). ``TEXUP_TORCH_REQUIREMENT`` and
    ``TEXUP_TORCH_INDEX_URL`` in ``environ`` override the requirement and the index (an empty index
    URL means pip's configured index).
    """
    environ = os.environ if environ is None else environ
    if nvidia is None:
        nvidia = has_nvidia_gpu(platform)
    cuda = bool(nvidia) and platform != "darwin"
    if cuda:
        index_url: str | None = CUDA_INDEX_URL
    elif platform.startswith("linux"):
        index_url = CPU_INDEX_URL
    else:
        index_url = None  # Windows and macOS: PyPI's torch is the CPU (or MPS) build
    if ENV_INDEX_URL in environ:
        index_url = environ[ENV_INDEX_URL].strip() or None
    requirement = (environ.get(ENV_REQUIREMENT) or "").strip() or TORCH_REQUIREMENT
    return InstallPlan(
        user_dir=os.path.abspath(user_dir),
        base_python=base_python,
        torch_requirement=requirement,
        index_url=index_url,
        cuda=cuda,
        platform=platform,
    )


# --- progress and errors from pip's output (pure) --------------------------------------------------

_SIZE = re.compile(r"\(([\d.]+ [kMG]?B)\)")


class PipProgress:
    """Turns pip's output lines into a coarse fraction (0..1) of one ``pip install`` and a short message.

    pip does not say how much is left, so resolving and downloading approach 0.7 as packages are
    collected, installing is 0.8, "Successfully installed" 1.0. Lines that say nothing new return None.
    """

    def __init__(self) -> None:
        self.fraction = 0.0
        self.collected = 0.0

    def feed(self, line: str) -> tuple[float, str] | None:
        text = line.strip()
        message: str | None = None
        if text.startswith("Collecting "):
            self.collected += 1
            message = "Collecting " + text[len("Collecting ") :].split()[0]
        elif text.startswith(("Downloading ", "Processing ", "Using cached ")):
            verb, _, rest = text.partition(" ")
            if verb == "Using":
                verb, rest = "Using cached", rest[len("cached ") :]
            target = os.path.basename(rest.split()[0].rstrip("/")) if rest.split() else rest
            size = _SIZE.search(text)
            message = f"{verb} {target}" + (f" ({size.group(1)})" if size else "")
            self.collected += 0.5
        elif text.startswith("Installing collected packages:"):
            names = [n.strip() for n in text.split(":", 1)[1].split(",") if n.strip()]
            self.fraction = max(self.fraction, 0.8)
            return self.fraction, f"Installing {len(names)} package{'s' if len(names) != 1 else ''}"
        elif text.startswith("Successfully installed"):
            self.fraction = 1.0
            return self.fraction, "Installed"
        elif text.startswith("Requirement already satisfied:"):
            message = "Already there: " + text.split(":", 1)[1].split()[0]
        if message is None:
            return None
        self.fraction = max(self.fraction, 0.7 * (1.0 - 0.8**self.collected))
        return self.fraction, message


_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|nodename nor servname|getaddrinfo failed|Network is unreachable|"
    r"Connection refused|ConnectTimeoutError|ReadTimeoutError|Max retries exceeded|ProxyError|"
    r"No route to host|Connection reset by peer|SSLError|CERTIFICATE_VERIFY_FAILED",
    re.IGNORECASE,
)
_NO_VERSION = re.compile(
    r"(?:Could not find a version that satisfies the requirement|"
    r"No matching distribution found for) (\S+)"
)
_DISK_FULL = re.compile(
    r"No space left on device|\[Errno 28\]|There is not enough space on the disk|"
    r"\[WinError 112\]",
    re.IGNORECASE,
)
_NO_VENV = re.compile(
    r"No module named '?(venv|ensurepip)'?|ensurepip is not available|"
    r"ensurepip.*returned non-zero exit status",
    re.IGNORECASE,
)
_PERMISSION = re.compile(r"Permission denied|\[Errno 13\]|Access is denied|\[WinError 5\]", re.IGNORECASE)
_CONFLICT = re.compile(r"conflicting dependencies|ResolutionImpossible")
_REQUESTED = re.compile(r"^\s*The user requested (.+)$", re.MULTILINE)
_HASH = re.compile(r"THESE PACKAGES DO NOT MATCH THE HASHES", re.IGNORECASE)


def classify_error(output: str, plan: InstallPlan, step: str, returncode: int | None = None) -> str:
    """One line saying why ``step`` failed, from pip's / venv's ``output`` (the tail is enough)."""
    if _DISK_FULL.search(output):
        return f"not enough disk space in {plan.user_dir} (PyTorch needs several GB): free some space and try again"
    if _NO_VENV.search(output):
        return (
            f"Blender's Python ({plan.base_python}) cannot make virtual environments (venv/ensurepip "
            "missing): set Worker Python to an environment where texup[torch] is installed instead"
        )
    if _PERMISSION.search(output):
        return f"permission denied writing to {plan.user_dir}: check that folder's permissions"
    if _NETWORK.search(output):
        return (
            f"no network: pip could not reach {plan.index_label}; check the internet connection "
            f"(or proxy) and try again, or name a reachable index in {ENV_INDEX_URL} (empty: pip's configured one)"
        )
    missing = _NO_VERSION.search(output)
    if missing:
        return f"no {missing.group(1)} for Blender's Python and this platform on {plan.index_label}"
    if _CONFLICT.search(output):
        requested = list(dict.fromkeys(m.strip() for m in _REQUESTED.findall(output)))
        said = f": {'; '.join(requested)}" if requested else ""
        return f"{step} failed: pip found conflicting requirements{said}"
    if _HASH.search(output):
        return "a download was damaged (its hash does not match): try again"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    said = (errors or lines or [""])[-1]
    code = "" if returncode is None else f" (exit code {returncode})"
    return " ".join(f"{step} failed{code}: {said}".split()) if said else f"{step} failed{code}"


# --- running it ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    label: str
    start: float
    end: float


STEPS = {
    "probe": _Step("checking Blender's Python", 0.0, 0.02),
    "venv": _Step("creating the virtual environment", 0.02, 0.1),
    "torch": _Step("installing PyTorch", 0.1, 0.85),
    "numpy": _Step("installing numpy", 0.85, 0.95),
    "verify": _Step("checking the installed PyTorch", 0.95, 1.0),
}


def _subprocess_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for venv and pip: Blender's own Python settings and user-install switches removed."""
    env = {
        k: v
        for k, v in environ.items()
        if k
        not in (
            "PYTHONHOME",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "VIRTUAL_ENV",
            "PIP_USER",
            "PIP_TARGET",
            "PIP_PREFIX",
            "PIP_REQUIRE_VIRTUALENV",
            "__PYVENV_LAUNCHER__",
        )
    }
    env.update(
        {
            "PYTHONNOUSERSITE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    return env


#: pip settings that add package sources; a step that names its index leaves them out (:func:`index_only_env`).
PIP_SOURCE_SETTINGS = ("index-url", "extra-index-url", "find-links", "no-index")
#: Sections of pip's configuration files that apply to ``pip install``.
_PIP_SECTIONS = ("global", "install")


def index_only_env(environ: Mapping[str, str], config_listing: str) -> dict[str, str]:
    """The environment for a ``pip install --index-url URL`` that must see URL only.

    ``config_listing`` is what ``pip config list`` printed in the new environment (``section.key='value'``
    lines, from pip's configuration files and ``PIP_*`` variables). pip adds ``extra-index-url`` and
    ``find-links`` from its configuration to any ``--index-url``, and picks the highest version among all of
    them; so configuration files are switched off (``PIP_CONFIG_FILE`` = the null device) and every other
    setting of their ``global`` and ``install`` sections comes back as a ``PIP_*`` variable (a variable the
    user set wins), without :data:`PIP_SOURCE_SETTINGS`.
    """
    drop = {"PIP_" + key.upper().replace("-", "_") for key in PIP_SOURCE_SETTINGS} | {"PIP_CONFIG_FILE"}
    env = {k: v for k, v in environ.items() if k not in drop}
    env["PIP_CONFIG_FILE"] = os.devnull
    for line in config_listing.splitlines():
        name, sep, quoted = line.strip().partition("=")
        section, _, key = name.partition(".")
        if not sep or section not in _PIP_SECTIONS or not key or key in PIP_SOURCE_SETTINGS:
            continue
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            continue
        env.setdefault("PIP_" + key.upper().replace("-", "_"), str(value))
    return env


def _remove_tree(path: str) -> None:
    """Remove ``path`` (a folder) if it exists; read-only files (Windows) are made writable first."""

    def retry(func: Callable[[str], Any], name: str, _info: Any) -> None:
        os.chmod(name, 0o700)
        func(name)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=retry)


def _fix_scripts(bin_dir: str, old_prefix: str, new_prefix: str) -> None:
    """Point the console scripts' shebangs (pip, torchrun) at the environment's final place (POSIX)."""
    if not os.path.isdir(bin_dir):
        return
    old, new = old_prefix.encode(), new_prefix.encode()
    for name in os.listdir(bin_dir):
        path = os.path.join(bin_dir, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            head = handle.read(2)
            if head != b"#!":
                continue
            data = head + handle.read()
        # The interpreter is on line 1, or on line 2 in pip's "#!/bin/sh" form for long or spaced paths.
        lines = data.split(b"\n", 2)
        first_two = [line.replace(old, new) for line in lines[:2]]
        if first_two != lines[:2]:
            with open(path, "wb") as handle:
                handle.write(b"\n".join(first_two + lines[2:]))


def remove_torch_env(user_dir: str) -> bool:
    """Delete the PyTorch environment (and a leftover ``.partial``); True when there was one.

    The marker goes first, so a removal that fails half-way never leaves an environment that looks usable.
    """
    env_dir = os.path.join(user_dir, TORCH_ENV_DIRNAME)
    existed = os.path.isdir(env_dir)
    marker = os.path.join(env_dir, TORCH_ENV_MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    _remove_tree(env_dir)
    _remove_tree(env_dir + PARTIAL_SUFFIX)
    return existed


def installed(user_dir: str | None) -> dict[str, Any] | None:
    """The marker of a finished PyTorch environment in ``user_dir`` (``None``: none installed)."""
    return torch_env_marker(user_dir) if user_dir else None


def check_build(plan: InstallPlan, found: Mapping[str, Any]) -> None:
    """:class:`InstallError` when the installed torch (``found``: the verify step's report, ``cuda`` = its
    ``torch.version.cuda``) is not the build the plan said: a CUDA build where the plan was the CPU one (5 GB
    for nothing on a machine without an NVIDIA GPU), or a CPU build where it was the CUDA one."""
    if plan.build is None:
        return
    cuda = found.get("cuda")
    if plan.build == "CPU" and cuda:
        got = f"the CUDA {cuda} build"
    elif plan.build == "CUDA" and not cuda:
        got = "a CPU-only build"
    else:
        return
    raise InstallError(
        f"pip installed {got} of torch {found.get('torch')} where the plan was the {plan.build} build from "
        f"{plan.index_label}; set {ENV_INDEX_URL} to the index to use (see {plan.log_path})"
    )


class TorchInstaller:
    """Runs an :class:`InstallPlan` on a background thread; the UI reads ``fraction``, ``message`` and,
    once ``done``, ``error`` (one line, ``None`` on success) or ``marker``. ``cancel()`` kills pip's
    process tree and removes the partial environment; it never blocks.

    ``numpy_version``: pin numpy to this version (default: ask ``plan.base_python`` which it has).
    """

    def __init__(
        self, plan: InstallPlan, *, numpy_version: str | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.plan = plan
        self._numpy_version = numpy_version
        self._env = _subprocess_env(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._log: Any | None = None
        self.fraction = 0.0
        self.message = "waiting to start"
        self.done = False
        self.cancelled = False
        self.error: str | None = None
        self.marker: dict[str, Any] | None = None

    # --- control -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this installer was already started; make a new one")
        self._thread = threading.Thread(target=self._run, name="texup-torch-install", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self.done

    def cancel(self) -> None:
        """Stop the install (pip's process tree is killed); the thread removes the partial environment."""
        self._cancel.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _kill_tree(proc)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the install ends (scripts, tests); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    # --- the thread --------------------------------------------------------------------------

    def _progress(self, step: str, within: float, message: str) -> None:
        spec = STEPS[step]
        with self._lock:
            self.fraction = max(self.fraction, spec.start + (spec.end - spec.start) * min(1.0, within))
            self.message = message

    def _write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text if text.endswith("\n") else text + "\n")
            self._log.flush()

    def _run(self) -> None:
        plan = self.plan
        try:
            os.makedirs(plan.user_dir, exist_ok=True)
            self._log = open(plan.log_path, "w", encoding="utf-8")
        except OSError as err:
            self._finish(error=f"cannot write to {plan.user_dir}: {err.strerror or err}")
            return
        try:
            self._write_log(f"texup: installing {plan.summary()}")
            self._write_log(f"texup: started {datetime.datetime.now().isoformat(timespec='seconds')}")
            marker = self._install()
        except InstallCancelled:
            self._cleanup()
            self._write_log("texup: cancelled; the partial environment was removed")
            self._finish(cancelled=True)
        except InstallError as err:
            self._cleanup()
            self._write_log(f"texup: FAILED: {err}")
            self._finish(error=str(err))
        except OSError as err:
            self._cleanup()
            reason = classify_error(f"[Errno {err.errno}] {err}", plan, "the install", None)
            if err.errno == errno.ENOSPC:
                reason = classify_error("No space left on device", plan, "the install")
            self._write_log(f"texup: FAILED: {err}")
            self._finish(error=reason)
        else:
            self._write_log(f"texup: installed {plan.env_dir}: {json.dumps(marker)}")
            self._finish(marker=marker)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _finish(
        self, *, error: str | None = None, cancelled: bool = False, marker: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            self.error, self.cancelled, self.marker = error, cancelled, marker
            if marker is not None:
                self.fraction, self.message = 1.0, f"PyTorch {marker.get('torch')} installed"
            elif cancelled:
                self.message = "cancelled; nothing was changed"
            else:
                self.message = f"failed: {error}"
            self.done = True

    def _cleanup(self) -> None:
        try:
            _remove_tree(self.plan.partial_dir)
        except OSError as err:
            self._write_log(f"texup: could not remove {self.plan.partial_dir}: {err}")

    def _install(self) -> dict[str, Any]:
        plan = self.plan
        _remove_tree(plan.partial_dir)  # a leftover of a crashed earlier attempt
        numpy_version = self._numpy_version
        if numpy_version is None:
            said = self._call("probe", [plan.base_python, "-c", _PROBE_NUMPY]).strip().splitlines()
            numpy_version = said[-1].strip() if said else ""
        self._call("venv", [plan.base_python, "-m", "venv", plan.partial_dir])
        if not os.path.isfile(plan.venv_python()):
            raise InstallError(f"Blender's Python ({plan.base_python}) made no interpreter in {plan.partial_dir}")
        torch_env = None
        if plan.index_url:  # that index only: see index_only_env
            listing = self._call("venv", [plan.venv_python(), "-m", "pip", "config", "list"])
            torch_env = index_only_env(self._env, listing)
        self._call("torch", plan.pip_install(plan.torch_requirement, plan.index_url), env=torch_env)
        self._call("numpy", plan.pip_install(f"numpy=={numpy_version}" if numpy_version else "numpy", None))
        output = self._call("verify", [plan.venv_python(), "-c", _VERIFY])
        try:
            found = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError) as err:
            raise InstallError(f"the installed PyTorch did not report its version ({err})") from None
        check_build(plan, found)
        if self._cancel.is_set():
            raise InstallCancelled()
        if plan.platform != "win32":
            _fix_scripts(os.path.join(plan.partial_dir, "bin"), plan.partial_dir, plan.env_dir)
        marker = {
            "format": MARKER_FORMAT,
            "python": plan.venv_python(plan.env_dir),
            "torch": found["torch"],
            "cuda": found.get("cuda") is not None,
            "cuda_version": found.get("cuda"),
            "numpy": found.get("numpy"),
            "python_version": found.get("python"),
            "requirement": plan.torch_requirement,
            "index_url": plan.index_url,
            "base_python": plan.base_python,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        with open(os.path.join(plan.partial_dir, TORCH_ENV_MARKER), "w", encoding="utf-8") as handle:
            json.dump(marker, handle, indent=1)
        old = plan.env_dir + ".old"
        _remove_tree(old)
        if os.path.lexists(plan.env_dir):  # an unfinished or older environment: replaced only now
            os.replace(plan.env_dir, old)
        os.replace(plan.partial_dir, plan.env_dir)
        _remove_tree(old)
        return marker

    def _call(self, step: str, command: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
        """Run one step (in ``env``, default the installer's environment), streaming its output to the log and
        the progress; return its output."""
        if self._cancel.is_set():
            raise InstallCancelled()
        spec = STEPS[step]
        self._progress(step, 0.0, spec.label[0].upper() + spec.label[1:])
        self._write_log("$ " + subprocess.list2cmdline(list(command)))
        popen_kwargs: dict[str, Any] = {}
        if os.name == "nt":
            popen_kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            popen_kwargs["start_new_session"] = True  # its own process group: cancel kills pip's children too
        try:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(self._env if env is None else env),
                cwd=self.plan.user_dir,
                **popen_kwargs,
            )
        except OSError as err:
            raise InstallError(f"{spec.label} failed: cannot run {command[0]}: {err.strerror or err}") from err
        with self._lock:
            self._proc = proc
        if self._cancel.is_set():  # cancelled between the check above and Popen
            _kill_tree(proc)
        tail: collections.deque[str] = collections.deque(maxlen=400)
        parser = PipProgress()
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            tail.append(line)
            self._write_log(line)
            parsed = parser.feed(line)
            if parsed is not None:
                self._progress(step, parsed[0], parsed[1])
        proc.stdout.close()
        try:
            returncode = proc.wait(timeout=10 if self._cancel.is_set() else None)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            returncode = proc.wait()
        with self._lock:
            self._proc = None
        if self._cancel.is_set():
            raise InstallCancelled()
        output = "\n".join(tail)
        if returncode != 0:
            raise InstallError(classify_error(output, self.plan, spec.label, returncode))
        self._progress(step, 1.0, spec.label[0].upper() + spec.label[1:] + ": done")
        return output


def _kill_tree(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and its children (its own process group on POSIX, ``taskkill /T`` on Windows)."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            subprocess.Popen(
                ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
            )
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # a half-written partial environment is deleted anyway
    except OSError:  # the group is gone already, or taskkill is missing: kill what we can
        if proc.poll() is None:
            proc.kill()
