"""Import boundaries: core/ never imports bpy; blender_addon/ never imports torch or texup; the
add-on's bridge/ imports only the standard library (it runs in Blender's Python, tested without bpy)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module name) of every absolute import in a file; relative imports are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_scanner_sees_every_import_form(tmp_path):
    sample = tmp_path / "s.py"
    sample.write_text(
        "import os.path\nfrom bpy.types import Operator\nfrom . import x\n"
        "def f():\n    import torch\n    importlib.import_module('texup.api')\n"
    )
    assert {name for _, name in imported_modules(sample)} == {"os", "bpy", "torch", "texup"}


def test_core_never_imports_bpy():
    files = python_files(ROOT / "core")
    assert files
    offenders = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in files
        for line, mod in imported_modules(p)
        if mod in ("bpy", "bmesh", "mathutils", "bpy_extras")
    ]
    assert offenders == []


def test_blender_addon_never_imports_torch_or_texup():
    files = python_files(ROOT / "blender_addon")
    assert files
    offenders = [
        f"{p.relative_to(ROOT)}:{line} {mod}"
        for p in files
        for line, mod in imported_modules(p)
        if mod in ("torch", "texup", "numpy", "torchvision", "safetensors")
    ]
    assert offenders == []


def test_bridge_imports_only_the_standard_library():
    files = python_files(ROOT / "blender_addon" / "bridge")
    assert {p.name for p in files} >= {"__init__.py", "worker_protocol.py", "client.py", "jobs.py", "naming.py"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = [
        f"{p.relative_to(ROOT)}:{line} {mod}" for p in files for line, mod in imported_modules(p) if mod not in stdlib
    ]
    assert offenders == []


def test_bridge_parses_as_python_3_10():
    """Blender 3.4 ships Python 3.10: no syntax from later versions in the bridge."""
    for path in python_files(ROOT / "blender_addon" / "bridge"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_torch_is_imported_only_by_its_engine_the_models_and_training():
    """The pipeline, image I/O, the ncnn engine and the CLI's upscale path run without torch (texup[torch] is
    an extra); only these folders and files may import it, anywhere in the module (also inside functions)."""
    allowed_dirs = {"archs", "training"}
    allowed_files = {
        "devices.py",  # device and precision choice for the torch engine and training
        "engines/torch_engine.py",
        "engines/torch_spec.py",  # the torch engine's spec: only to list what torch can do here
        "weights/model.py",
        "weights/state_dict.py",
        "weights/ncnn.py",
        "weights/arrays.py",
        "worker/server.py",  # the torch version in the hello line, when torch is there
    }
    core = ROOT / "core" / "texup"
    offenders = []
    for p in python_files(core):
        rel = p.relative_to(core).as_posix()
        if rel.split("/")[0] in allowed_dirs or rel in allowed_files:
            continue
        offenders += [f"{rel}:{line}" for line, mod in imported_modules(p) if mod in ("torch", "torchvision")]
    assert offenders == []
