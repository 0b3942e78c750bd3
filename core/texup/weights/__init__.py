"""Weights: safe reading of every common file format, key canonicalisation, architecture
detection from tensor shapes, and texup's own self-describing ``.safetensors`` format.

The known-model registry, cache and downloads live in sibling modules (``registry``, ``cache``,
``download``) and are not re-exported here.
"""
from __future__ import annotations

from texup.weights.detect import detect_architecture
from texup.weights.keymaps import canonicalize, naming_style
from texup.weights.model import LoadedModel, instantiate, load_model, save_model
from texup.weights.ncnn import NcnnModel, load_ncnn, read_ncnn
from texup.weights.state_dict import read_state_dict, unwrap_state_dict

__all__ = [
    "LoadedModel",
    "NcnnModel",
    "canonicalize",
    "detect_architecture",
    "instantiate",
    "load_model",
    "load_ncnn",
    "naming_style",
    "read_ncnn",
    "read_state_dict",
    "save_model",
    "unwrap_state_dict",
]
