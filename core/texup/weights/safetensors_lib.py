"""The ``safetensors`` package, imported where a ``.safetensors`` file is read or written, or one clear error.

texup depends on safetensors, yet a Python may lack it: Blender 4.3.0 does not install the extension's stable-ABI
safetensors wheel (``cp310-abi3``, the only kind safetensors publishes). Its worker still starts there
(``blender_addon/bridge/bundle.py``), the packaged ncnn models need no safetensors, and a ``.safetensors`` model
is refused in one line naming the file and the fix.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from texup.errors import ModelLoadError

NO_SAFETENSORS = (
    "reading or writing .safetensors needs the 'safetensors' package, which this Python lacks (Blender 4.3.0 "
    "does not install the extension's safetensors wheel: use Blender 4.4 or later, or set Worker Python to a "
    "Python with texup installed); the packaged models need no safetensors"
)


def safetensors_module(path: str | Path, name: str = "safetensors") -> ModuleType:
    """``safetensors`` (or its submodule ``name``, e.g. ``"safetensors.numpy"``) imported, or a
    :class:`ModelLoadError` naming ``path`` and why it cannot be read where the package is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "safetensors":
            raise
        raise ModelLoadError(Path(path), NO_SAFETENSORS) from exc
