"""Weights: safe reading of every common file format, key canonicalisation, architecture
detection from tensor shapes, and texup's own self-describing ``.safetensors`` format.

The known-model registry, cache and downloads live in sibling modules (``registry``, ``cache``,
``download``) and are not re-exported here. Importing this package does not import torch: the names
below load their module on first use, and :mod:`texup.weights.arrays` (numpy weights for the ncnn
engine), :mod:`~texup.weights.ncnn`'s parser, ``detect``, ``keymaps``, ``cache`` and ``download`` work
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from texup._lazy import lazy_getattr

_LAZY: dict[str, str] = {
    "LoadedModel": "texup.weights.model",
    "instantiate": "texup.weights.model",
    "load_model": "texup.weights.model",
    "save_model": "texup.weights.model",
    "NcnnModel": "texup.weights.ncnn",
    "load_ncnn": "texup.weights.ncnn",
    "read_ncnn": "texup.weights.ncnn",
    "canonicalize": "texup.weights.keymaps",
    "naming_style": "texup.weights.keymaps",
    "detect_architecture": "texup.weights.detect",
    "read_state_dict": "texup.weights.state_dict",
    "unwrap_state_dict": "texup.weights.state_dict",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from texup.weights.detect import detect_architecture
    from texup.weights.keymaps import canonicalize, naming_style
    from texup.weights.model import LoadedModel, instantiate, load_model, save_model
    from texup.weights.ncnn import NcnnModel, load_ncnn, read_ncnn
    from texup.weights.state_dict import read_state_dict, unwrap_state_dict


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
