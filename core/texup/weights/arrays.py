"""Weights as numpy arrays, without torch: what the ncnn engine exports from.

``.safetensors`` files (texup's own, with their arch metadata, or anyone's, detected from shapes) are read
with :mod:`safetensors.numpy`; pickles (``.pth``) need torch's weights-only unpickler and are read through
it when torch is installed. The same key maps and detection as the torch loader apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from texup.archs.spec import arch_names, get_spec
from texup.errors import ModelLoadError
from texup.weights.detect import detect_architecture
from texup.weights.keymaps import canonicalize
from texup.weights.safetensors_lib import safetensors_module


def arch_from_metadata(meta: dict[str, str], path: Path) -> tuple[str, dict[str, Any]] | None:
    """``(arch, hparams)`` from texup's ``texup.arch``/``texup.hparams`` safetensors metadata, or None when the
    file carries none; ModelLoadError for an unknown arch or hparams that are not a JSON object."""
    if "texup.arch" not in meta:
        return None
    arch = meta["texup.arch"]
    if arch not in arch_names():
        raise ModelLoadError(path, f"metadata names unknown architecture {arch!r}")
    try:
        hparams = json.loads(meta.get("texup.hparams", "{}"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(path, f"metadata 'texup.hparams' is not valid JSON ({exc})") from exc
    if not isinstance(hparams, dict):
        raise ModelLoadError(path, "metadata 'texup.hparams' is not a JSON object")
    return arch, hparams


def scale_and_multiple(arch: str, hparams: dict[str, Any]) -> tuple[int, int]:
    """(output scale, input multiple) of ``arch`` with ``hparams`` from its spec, without building the network
    (which needs torch); the same as the torch module's ``scale`` / ``input_multiple`` (tested).
    ValueError for an unknown architecture or hparams it refuses."""
    if arch not in arch_names():
        raise ValueError(f"unknown architecture {arch!r}")
    spec = get_spec(arch)
    return spec.scale(hparams), spec.input_multiple(hparams)


@dataclass
class ArrayModel:
    """A generator's weights as float32 numpy arrays with canonical names, its arch and hyperparameters."""

    arch: str
    hparams: dict[str, Any]
    state_dict: dict[str, np.ndarray]
    scale: int
    input_multiple: int
    name: str
    path: Path | None = None


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    safetensors = safetensors_module(path)
    SafetensorError, safe_open = safetensors.SafetensorError, safetensors.safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(path, f"not a valid safetensors file ({type(exc).__name__}: {exc})") from exc
    return tensors, meta


def _read_with_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: F401 - only to say clearly what is missing
    except ImportError:
        raise ModelLoadError(
            path,
            "reading PyTorch pickles needs torch (pip install 'texup[torch]'); or convert the file once "
            "where torch is installed: texup models convert IN OUT.safetensors",
        ) from None
    from texup.weights.state_dict import read_state_dict

    return {k: v.detach().to("cpu").float().numpy() for k, v in read_state_dict(path).items()}


def read_array_model(path: str | Path, *, name: str | None = None) -> ArrayModel:
    """Read a weights file into an :class:`ArrayModel` (float32 arrays, canonical names, detected arch).

    texup ``.safetensors`` carry their arch and hparams (``texup.arch``/``texup.hparams`` metadata); other
    files are canonicalised and detected from tensor shapes, as :func:`texup.weights.load_model` does.
    Raises :class:`~texup.errors.ModelLoadError` naming the file.
    """
    path = Path(path)
    arch_hparams: tuple[str, dict[str, Any]] | None = None
    if path.suffix.lower() == ".safetensors":
        tensors, meta = _read_safetensors(path)
        arch_hparams = arch_from_metadata(meta, path)
    else:
        tensors = _read_with_torch(path)
    sd = canonicalize(tensors, source=path)
    arch, hparams = arch_hparams if arch_hparams is not None else detect_architecture(sd, source=path)
    try:
        scale, multiple = scale_and_multiple(arch, hparams)
    except ValueError as exc:
        raise ModelLoadError(path, str(exc)) from None
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in sd.items()}
    return ArrayModel(arch, dict(hparams), arrays, scale, multiple, name or path.stem, path)


def save_array_model(model: ArrayModel, path: str | Path, *, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as texup ``.safetensors`` without torch: the same metadata as
    :func:`texup.weights.save_model` (format, arch, hparams, scale, provenance), float32 tensors, the header's
    keys sorted so equal models give equal files, written atomically (temporary file + rename)."""
    save = safetensors_module(path, "safetensors.numpy").save

    from texup._atomic import atomic_path
    from texup.weights.model_format import FORMAT_VERSION, sorted_header

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"save_array_model writes .safetensors files, got {path}")
    metadata = {
        "texup.format": FORMAT_VERSION,
        "texup.arch": model.arch,
        "texup.hparams": json.dumps(dict(model.hparams), sort_keys=True),
        "texup.scale": str(int(model.scale)),
        "texup.provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(sorted_header(save(tensors, metadata=metadata)))
    return path
