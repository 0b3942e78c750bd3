"""Lazy package attributes: names resolved from their module on first access (PEP 562).

Packages use it so that importing them stays cheap (no torch, no ncnn) while ``package.Name`` still works::

    __getattr__ = lazy_getattr(__name__, globals(), {"Upscaler": "texup.inference.pipeline"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, namespace: dict[str, Any], names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[name]`` on first use and caches the value in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
