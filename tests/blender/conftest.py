"""Fixtures for the Blender tests: the worker's Python (with torch + texup) and a tiny model file.

The add-on never imports torch; its worker runs in another Python. Here that is TEXUP_PYTHON, else
this interpreter when it has texup (the main venv), else the repository's .venv.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
# HERE (scene_builder, ui_screenshot) and REPO_ROOT (the add-on as `blender_addon`) are on the path through
# pyproject.toml's `[tool.pytest.ini_options] pythonpath`, in both environments.


def _worker_python() -> str | None:
    env = os.environ.get("TEXUP_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("texup") is not None and importlib.util.find_spec("torch") is not None:
        return sys.executable
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else None


@pytest.fixture(scope="session")
def worker_python() -> str:
    python = _worker_python()
    if python is None:
        pytest.skip("no Python with texup for the worker (set TEXUP_PYTHON)")
    return python


@pytest.fixture(scope="session")
def tiny_model(worker_python: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random x4 RRDBNet (8 features, 1 block) saved as .safetensors by the worker's Python."""
    path = tmp_path_factory.mktemp("model") / "tiny_x4.safetensors"
    code = (
        "import sys, torch; torch.manual_seed(0); from texup.archs import RRDBNet; "
        "from texup.weights import save_model; "
        "save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), sys.argv[1])"
    )
    subprocess.run([worker_python, "-c", code, str(path)], check=True, timeout=300)
    return str(path)
