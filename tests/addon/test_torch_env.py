"""The PyTorch installer: the plan per platform/GPU, pip's output read as progress, errors in one line,
and real installs into a temporary user folder (a success, a failure, no network, a cancel), with the
bpy environment's Python standing in for Blender's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "blender_addon"))

from bridge import torch_env  # noqa: E402
from bridge.bundle import TORCH_ENV_MARKER, torch_env_launch, torch_env_marker  # noqa: E402
from bridge.torch_env import (  # noqa: E402
    CPU_INDEX_URL,
    CUDA_INDEX_URL,
    InstallPlan,
    PipProgress,
    TorchInstaller,
    classify_error,
    has_nvidia_gpu,
    plan_install,
    remove_torch_env,
)

BLENDER_PYTHON = ROOT / ".venv-blender" / "bin" / "python"
TEST_REQUIREMENT = "torch==2.13.0"


# --- the plan ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "platform, nvidia, index, cuda",
    [
        ("linux", True, CUDA_INDEX_URL, True),
        ("linux", False, CPU_INDEX_URL, False),  # PyPI's Linux torch is the multi-GB CUDA build
        ("win32", True, CUDA_INDEX_URL, True),
        ("win32", False, None, False),  # PyPI's Windows torch is the CPU build
        ("darwin", False, None, False),
        ("darwin", True, None, False),  # no CUDA torch on macOS
    ],
)
def test_plan_picks_the_index_for_platform_and_gpu(tmp_path, platform, nvidia, index, cuda):
    plan = plan_install(str(tmp_path), "/blender/python", platform=platform, nvidia=nvidia, environ={})

    assert (plan.index_url, plan.cuda, plan.torch_requirement) == (index, cuda, torch_env.TORCH_REQUIREMENT)
    assert plan.env_dir == str(tmp_path / "torch-env")
    assert plan.partial_dir == str(tmp_path / "torch-env.partial")
    assert plan.log_path == str(tmp_path / "torch-install.log")
    venv_python = plan.venv_python()
    assert venv_python.startswith(plan.partial_dir)
    assert venv_python.endswith(
        os.path.join("Scripts", "python.exe") if platform == "win32" else os.path.join("bin", "python")
    )
    command = plan.pip_install("torch", plan.index_url)
    assert command[:4] == [venv_python, "-m", "pip", "install"] and command[-1] == "torch"
    assert ("--index-url" in command) == (index is not None)


def test_environment_overrides_requirement_and_index(tmp_path):
    plan = plan_install(
        str(tmp_path),
        platform="linux",
        nvidia=True,
        environ={"TEXUP_TORCH_REQUIREMENT": "torch==2.13.0", "TEXUP_TORCH_INDEX_URL": ""},
    )
    assert (plan.torch_requirement, plan.index_url, plan.cuda) == ("torch==2.13.0", None, True)
    assert "pip's configured package index" in plan.summary()
    plan = plan_install(
        str(tmp_path),
        platform="win32",
        nvidia=False,
        environ={"TEXUP_TORCH_INDEX_URL": "https://mirror.example/simple"},
    )
    assert plan.index_url == "https://mirror.example/simple"


def test_the_default_requirement_is_texups_torch_extra():
    tomllib = pytest.importorskip("tomllib")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["torch"]
    assert extra == [torch_env.TORCH_REQUIREMENT]


def test_nvidia_detection():
    assert has_nvidia_gpu("linux", which=lambda name: "/usr/bin/nvidia-smi", exists=lambda p: False)
    assert has_nvidia_gpu("linux", which=lambda name: None, exists=lambda p: p == "/proc/driver/nvidia/version")
    assert not has_nvidia_gpu("linux", which=lambda name: None, exists=lambda p: False)
    assert has_nvidia_gpu("win32", which=lambda name: name == "nvidia-smi.exe" or None, exists=lambda p: False)
    assert not has_nvidia_gpu("darwin", which=lambda name: "/x/nvidia-smi", exists=lambda p: True)


# --- progress and errors ----------------------------------------------------------------------------

PIP_TRANSCRIPT = """\
Looking in indexes: https://download.pytorch.org/whl/cpu
Collecting torch==2.13.0
  Downloading https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl (190.5 MB)
Collecting filelock (from torch==2.13.0)
  Using cached filelock-3.16.1-py3-none-any.whl (16 kB)
Collecting sympy>=1.13.3 (from torch==2.13.0)
  Downloading sympy-1.14.0-py3-none-any.whl (6.3 MB)
Requirement already satisfied: setuptools in ./torch-env.partial/lib/python3.11/site-packages (from torch) (65.5.0)
Installing collected packages: mpmath, sympy, filelock, torch
Successfully installed filelock-3.16.1 mpmath-1.3.0 sympy-1.14.0 torch-2.13.0+cpu
"""


def test_pip_output_becomes_a_rising_fraction_and_short_messages():
    parser = PipProgress()
    seen = [parsed for parsed in map(parser.feed, PIP_TRANSCRIPT.splitlines()) if parsed is not None]

    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0 < fractions[0] < 0.7 and fractions[-1] == 1.0
    messages = [m for _, m in seen]
    assert messages[0] == "Collecting torch==2.13.0"
    assert "Downloading torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl (190.5 MB)" in messages
    assert "Using cached filelock-3.16.1-py3-none-any.whl (16 kB)" in messages
    assert "Installing 4 packages" in messages and messages[-1] == "Installed"
    assert parser.feed("Looking in indexes: x") is None


@pytest.fixture
def plan(tmp_path) -> InstallPlan:
    return plan_install(str(tmp_path), "/blender/python", platform="linux", nvidia=False, environ={})


@pytest.mark.parametrize(
    "output, expected",
    [
        (
            "WARNING: Retrying (Retry(total=0)) after connection broken by "
            "'NewConnectionError(... Failed to establish a "
            "new connection: [Errno -3] Temporary failure in name resolution')': /whl/cpu/torch/\n"
            "ERROR: Could not find a version that satisfies the requirement torch>=2.4 (from versions: none)\n"
            "ERROR: No matching distribution found for torch>=2.4",
            "no network: pip could not reach " + CPU_INDEX_URL,
        ),
        (
            "ERROR: Could not find a version that satisfies the requirement torch==0.0.0 (from versions: 2.4.0)\n"
            "ERROR: No matching distribution found for torch==0.0.0",
            "no torch==0.0.0 for Blender's Python",
        ),
        (
            "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
            "not enough disk space in ",
        ),
        (
            "Error: Command '['/u/torch-env.partial/bin/python3.11', '-m', 'ensurepip', '--upgrade', '--default-pip']' "
            "returned non-zero exit status 1.",
            "Blender's Python (/blender/python) cannot make virtual environments",
        ),
        (
            "/blender/python: No module named venv",
            "Blender's Python (/blender/python) cannot make virtual environments",
        ),
        (
            "ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: '/u/x'",
            "permission denied writing to ",
        ),
        (
            "ERROR: Cannot install torch==0.0.0 because these package versions have conflicting dependencies.\n\n"
            "The conflict is caused by:\n    The user requested torch==0.0.0\n"
            "    The user requested (constraint) torch<=2.14.1\n",
            "installing PyTorch failed: pip found conflicting requirements: torch==0.0.0; (constraint) torch<=2.14.1",
        ),
        ("Collecting x\nsomething odd happened\n", "installing PyTorch failed (exit code 2): something odd happened"),
    ],
)
def test_errors_are_one_clear_line(plan, output, expected):
    message = classify_error(output, plan, "installing PyTorch", 2)
    assert message.startswith(expected) and "\n" not in message


def test_remove_deletes_the_marker_first_and_the_folders(tmp_path):
    env = tmp_path / "torch-env"
    (env / "bin").mkdir(parents=True)
    (env / TORCH_ENV_MARKER).write_text("{}")
    (tmp_path / "torch-env.partial").mkdir()
    assert torch_env_marker(str(tmp_path)) == {}
    assert remove_torch_env(str(tmp_path))
    assert not env.exists() and not (tmp_path / "torch-env.partial").exists()
    assert not remove_torch_env(str(tmp_path))


def test_console_scripts_are_pointed_at_the_final_folder(tmp_path):
    bin_dir = tmp_path / "torch-env.partial" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "pip").write_text(f"#!{tmp_path}/torch-env.partial/bin/python\nimport sys\n")
    (bin_dir / "data").write_bytes(b"\x00\x01 not a script")
    partial, final = tmp_path / "torch-env.partial", tmp_path / "torch-env"
    long_form = "#!/bin/sh\n'''exec' \"{}/bin/python\" \"$0\" \"$@\"\n' '''\nprint('{}')\n"  # pip's form for long paths
    (bin_dir / "long").write_text(long_form.format(partial, partial))
    torch_env._fix_scripts(str(bin_dir), str(partial), str(final))
    assert (bin_dir / "pip").read_text() == f"#!{tmp_path}/torch-env/bin/python\nimport sys\n"
    assert (bin_dir / "long").read_text() == long_form.format(final, partial)  # the script's code untouched
    assert (bin_dir / "data").read_bytes() == b"\x00\x01 not a script"


# --- real installs ----------------------------------------------------------------------------------


def _blender_python() -> str:
    return str(BLENDER_PYTHON) if BLENDER_PYTHON.exists() else sys.executable


@pytest.fixture(scope="module")
def pip_reaches_an_index(tmp_path_factory) -> str:
    """Blender's Python (the bpy venv's) when its pip can fetch the test's torch, else skip with the reason."""
    python = _blender_python()
    folder = tmp_path_factory.mktemp("probe")
    env = {**os.environ, "PIP_RETRIES": "0"}
    try:
        done = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-input",
                "--progress-bar",
                "off",
                "-d",
                str(folder),
                TEST_REQUIREMENT,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not fetch {TEST_REQUIREMENT} within 120 s from its configured index")
    if done.returncode != 0:
        last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-1:]
        pytest.skip(f"pip cannot reach a package index with {TEST_REQUIREMENT}: {' '.join(last)}")
    return python


def _overrides(requirement: str = TEST_REQUIREMENT, index: str = "") -> dict:
    return {**os.environ, "TEXUP_TORCH_REQUIREMENT": requirement, "TEXUP_TORCH_INDEX_URL": index, "PIP_RETRIES": "0"}


def _run(
    user_dir: Path, python: str, environ: dict, *, cancel_at: float | None = None, timeout: float = 900
) -> TorchInstaller:
    plan = plan_install(str(user_dir), python, environ=environ)
    installer = TorchInstaller(plan, environ=environ)
    installer.start()
    seen = set()
    deadline = time.monotonic() + timeout
    while not installer.wait(0.05):
        seen.add(installer.message)
        if cancel_at is not None and installer.fraction >= cancel_at:
            installer.cancel()
            cancel_at = None
        assert time.monotonic() < deadline, "the install did not end in time"
    installer.seen = seen  # type: ignore[attr-defined]
    return installer


@pytest.mark.slow  # a real pip install of PyTorch
def test_a_real_install_makes_a_working_torch_env(pip_reaches_an_index, tmp_path):
    installer = _run(tmp_path, pip_reaches_an_index, _overrides())

    assert installer.error is None and not installer.cancelled and installer.fraction == 1.0
    env = tmp_path / "torch-env"
    assert not (tmp_path / "torch-env.partial").exists()
    marker = json.loads((env / TORCH_ENV_MARKER).read_text())
    assert marker["torch"].startswith("2.13.0") and marker["cuda"] is False
    assert marker["python"] == str(env / "bin" / "python") and marker["index_url"] is None
    blender_numpy = subprocess.run(
        [pip_reaches_an_index, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    if blender_numpy:
        assert marker["numpy"] == blender_numpy  # pinned to Blender's own
    done = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == marker["torch"], done.stderr
    assert (env / "bin" / "pip").read_text().startswith(f"#!{env}/bin/python")
    log = (tmp_path / "torch-install.log").read_text()
    assert "Successfully installed" in log and "texup: installed" in log
    assert any(m.startswith(("Collecting torch", "Processing ", "Installing ")) for m in installer.seen)
    launch = torch_env_launch(str(tmp_path), str(ROOT / "blender_addon"))
    assert launch is not None and launch.python == marker["python"] and launch.source == "torch-env"

    # A second run replaces the environment only when it succeeds: a failing one leaves it as it was.
    failed = _run(tmp_path, pip_reaches_an_index, _overrides("torch==0.0.0"))
    assert failed.error and (env / TORCH_ENV_MARKER).exists() and not (tmp_path / "torch-env.partial").exists()
    assert remove_torch_env(str(tmp_path)) and not env.exists()


def test_a_failing_install_changes_nothing_and_says_why_in_one_line(tmp_path):
    python = _blender_python()
    installer = _run(tmp_path, python, _overrides("torch==0.0.0"))

    assert installer.error and "\n" not in installer.error and "torch==0.0.0" in installer.error
    assert not (tmp_path / "torch-env").exists() and not (tmp_path / "torch-env.partial").exists()
    assert "FAILED" in (tmp_path / "torch-install.log").read_text()


def test_no_network_is_named(tmp_path):
    # Only an index nobody listens on: no pip config, no local wheel folder; one retry, as pip's default five.
    environ = {
        k: v for k, v in _overrides(TEST_REQUIREMENT, "http://127.0.0.1:9/simple").items() if k != "PIP_FIND_LINKS"
    }
    environ.update({"PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "1"})
    installer = _run(tmp_path, _blender_python(), environ)

    assert installer.error is not None and installer.error.startswith(
        "no network: pip could not reach http://127.0.0.1:9/simple"
    )
    assert not (tmp_path / "torch-env").exists() and not (tmp_path / "torch-env.partial").exists()


def test_cancel_kills_pip_and_removes_the_partial_environment(pip_reaches_an_index, tmp_path):
    started = time.monotonic()
    installer = _run(tmp_path, pip_reaches_an_index, _overrides(), cancel_at=0.11)  # pip is installing torch

    assert installer.cancelled and installer.error is None and installer.marker is None
    assert not (tmp_path / "torch-env").exists() and not (tmp_path / "torch-env.partial").exists()
    assert time.monotonic() - started < 120
    log = (tmp_path / "torch-install.log").read_text()
    assert "pip install" in log and "Successfully installed" not in log and "cancelled" in log


def test_a_python_without_venv_is_a_clear_error(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$0: No module named venv" >&2\nexit 1\n')
    fake.chmod(0o755)
    if os.name == "nt":
        pytest.skip("a shell script stands in for a Python without venv")
    installer = TorchInstaller(
        plan_install(str(tmp_path / "user"), str(fake), environ=_overrides()), numpy_version="1.26.4"
    )
    installer.start()
    assert installer.wait(60)
    assert installer.error is not None and "cannot make virtual environments" in installer.error
    assert not (tmp_path / "user" / "torch-env.partial").exists()


# --- the plan's index only (issue 19: "CPU build" in the plan, the 5 GB CUDA build installed) -----------


def test_the_plan_names_the_build_its_index_gives(tmp_path):
    def summary(platform: str, nvidia: bool, environ: dict) -> str:
        return plan_install(str(tmp_path), platform=platform, nvidia=nvidia, environ=environ).summary()

    assert "(CPU build) from " + CPU_INDEX_URL in summary("linux", False, {})
    assert "(CUDA build) from " + CUDA_INDEX_URL in summary("linux", True, {})
    assert "(CPU build) from pip's configured package index" in summary("win32", False, {})
    # On Linux pip's own index (PyPI) has the CUDA build: the plan must not call that "CPU".
    assert "(the build that index offers) from pip's" in summary("linux", False, {"TEXUP_TORCH_INDEX_URL": ""})


def test_a_build_other_than_the_plans_is_an_error(tmp_path):
    cpu = plan_install(str(tmp_path), platform="linux", nvidia=False, environ={})
    cuda = plan_install(str(tmp_path), platform="linux", nvidia=True, environ={})
    torch_env.check_build(cpu, {"torch": "2.13.0+cpu", "cuda": None})
    torch_env.check_build(cuda, {"torch": "2.13.0+cu128", "cuda": "12.8"})
    with pytest.raises(torch_env.InstallError, match=r"the CUDA 12.8 build of torch 2.14.1 where the plan was the CPU"):
        torch_env.check_build(cpu, {"torch": "2.14.1", "cuda": "12.8"})
    with pytest.raises(torch_env.InstallError, match="a CPU-only build"):
        torch_env.check_build(cuda, {"torch": "2.13.0+cpu", "cuda": None})
    mirror = plan_install(str(tmp_path), platform="linux", nvidia=False, environ={"TEXUP_TORCH_INDEX_URL": "x"})
    torch_env.check_build(mirror, {"torch": "2.14.1", "cuda": "12.8"})  # a user's index: whatever it has


def test_only_the_plans_index_keeps_pip_settings_but_no_other_package_source():
    listing = (
        "global.cert='/etc/ssl/certs/ca.pem'\n"
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'\n"
        "global.find-links='/opt/wheels'\n"
        "install.timeout='33'\n"
        "download.dest='/x'\n"
        ":env:.find-links='/opt/wheels'\n"
        "global.proxy='http://proxy:3128'\n"
    )
    environ = {"PIP_FIND_LINKS": "/opt/wheels", "PIP_EXTRA_INDEX_URL": "y", "PIP_PROXY": "http://mine:1", "HOME": "/h"}
    env = torch_env.index_only_env(environ, listing)
    assert env == {
        "HOME": "/h",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_CERT": "/etc/ssl/certs/ca.pem",
        "PIP_TIMEOUT": "33",
        "PIP_PROXY": "http://mine:1",  # the user's variable wins over the file
    }


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of ``name`` ``version``."""
    import zipfile

    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}.dist-info/RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def _simple_index(root: Path, name: str, version: str) -> str:
    """A PEP 503 index at ``root`` holding one wheel; returns its file:// URL."""
    wheel = _wheel(root / name, name, version)
    (root / name / "index.html").write_text(f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>')
    return root.as_uri()


def test_the_torch_step_installs_from_the_plans_index_whatever_pip_is_configured_with(tmp_path):
    # The plan's index has 1.0 (think: 2.13.0+cpu); the user's pip configuration adds an extra index with 2.0 and
    # a wheel folder with 3.0 (think: PyPI's newer CUDA build). pip alone would take 3.0.
    name = "texup-probe"
    plan_index = _simple_index(tmp_path / "plan", name, "1.0")
    extra_index = _simple_index(tmp_path / "extra", name, "2.0")
    wheels = _wheel(tmp_path / "wheels", name, "3.0").parent
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nextra-index-url = {extra_index}\nfind-links = {wheels}\ntimeout = 33\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environ.update(PIP_CONFIG_FILE=str(config), TEXUP_TORCH_REQUIREMENT=name, TEXUP_TORCH_INDEX_URL=plan_index)
    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-d",
            str(tmp_path / "d"),
            "--index-url",
            plan_index,
            name,
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0 and "texup_probe-3.0" in plain.stdout, plain.stdout + plain.stderr

    installer = _run(tmp_path / "user", _blender_python(), environ)

    log = (tmp_path / "user" / "torch-install.log").read_text()
    assert "Successfully installed texup-probe-1.0" in log, log
    # (it is not torch: the later steps fail, in one line, and leave nothing behind)
    assert installer.error and "\n" not in installer.error and not (tmp_path / "user" / "torch-env").exists()
