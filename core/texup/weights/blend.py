"""Network interpolation (ESRGAN, Wang et al. 2018, section 3.4): one model's weights blended with another's.

``out = (1 - alpha) * A + alpha * B``, tensor by tensor, as ESRGAN's ``net_interp.py`` does with A the PSNR-oriented
network and B the GAN one: **alpha 0 gives A, alpha 1 gives B**, bit for bit (the parents' tensors as float32; the
float16 of ncnn files widens exactly), and anything between is computed in float64 and rounded once to float32
(alpha 0.5 gives the rounded mean). Both parents must be the same architecture with the same hyper-parameters (so
every tensor has the same shape); anything else is refused in one line naming both.

A parent is anything texup reads: a known model name (the files :meth:`texup.weights.ref.ModelRef.sources` says its
pixels come from: the official download, or the installed package's ncnn files), a ``.safetensors``, a ``.pth``
(needs torch), an ncnn ``.param``/``.bin`` pair. Reading and blending use numpy only, so a blend runs where only the
ncnn engine is installed.

A **blend reference** names a blend wherever a model is named (``texup upscale --model``, the Python API, the worker's
``model`` option)::

    blend:A,B@ALPHA        e.g.  blend:realesrnet-x4plus,realesrgan-x4plus@0.3

``ALPHA`` (0..1) follows the last ``@``; A and B are split at the comma that leaves a model (a known name or an
existing file) on both sides, and a reference in which more than one comma does so is refused as ambiguous. An
existing file whose name starts with ``blend:`` is that file, not a blend. A reference is blended once and cached in
``models_dir()/blends/`` under a name derived from both parents' SHA-256 and alpha (recorded in the models manifest
and verified like every cached model), so a changed parent or alpha is a new file and an unchanged one is reused.
The syntax (:func:`parse_blend`, :func:`format_blend`, :data:`BLEND_PREFIX`, :class:`BlendError`) lives in
:mod:`texup.weights.blend_ref`, below :class:`~texup.weights.ref.ModelRef`, and is importable from here too.

Every blend carries its provenance in texup's ``texup.provenance`` metadata: ``blend`` = both parents' reference and
SHA-256, alpha and the formula. A model's **partner** is the network at the other end of its dial (:func:`partner_of`):
the registry's published PSNR/GAN pairs, or ``partner`` in a file's provenance (``texup train --stage gan`` from a
PSNR-stage generator keeps that generator beside its result and names it there).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from texup.errors import ModelLoadError, UnknownModelError
from texup.weights.arrays import ArrayModel
from texup.weights.blend_ref import (
    BLEND_PREFIX,
    BlendError,
    BlendRef,
    _alpha_text,
    check_alpha,
    format_blend,
    is_blend,
    parse_blend,
)
from texup.weights.catalog import KNOWN_MODELS
from texup.weights.safetensors_lib import safetensors_module

__all__ = [
    "BLEND_PREFIX",
    "BlendError",
    "BlendRef",
    "Partner",
    "blend_arrays",
    "blend_file",
    "blend_models",
    "detail_ref",
    "format_blend",
    "is_blend",
    "parse_blend",
    "partner_of",
    "read_parent",
    "write_blend",
]

#: Bumped when the blend's bytes for the same parents and alpha would change (the cache key includes it).
BLEND_VERSION = 1
FORMULA = "(1 - alpha) * A + alpha * B"
_BLENDS_SUBDIR = "blends"

StatusCallback = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Reading parents and blending
# --------------------------------------------------------------------------------------------------


@dataclass
class Parent:
    """A parent model's weights as float32 arrays, the files they were read from and their SHA-256."""

    ref: str
    model: ArrayModel
    files: list[Path]
    sha256: str


def _sha256_of(files: list[Path]) -> str:
    """One file: its SHA-256; an ncnn pair: the SHA-256 of the two hex digests joined (as the output manifest)."""
    from texup.weights.ref import combined_sha256

    return combined_sha256(files)


def parent_files(ref: str | os.PathLike[str]) -> list[Path]:
    """The files a parent's weights are read from (:meth:`texup.weights.ref.ModelRef.sources`); a one-line error
    when there are none (unknown name, model not installed, a blend reference as a parent)."""
    text = os.fspath(ref)
    if is_blend(text):
        raise BlendError(f"{text!r}: a parent must be a model, not another blend (save that blend to a file first)")
    from texup.weights.ref import ModelRef

    label, files = ModelRef.of(text).sources()
    if files:
        return files
    if text in KNOWN_MODELS:
        raise ModelLoadError(text, f"not installed; run `texup models fetch {text}` first")
    raise UnknownModelError(f"unknown model '{text}': not a file and not one of: {', '.join(KNOWN_MODELS)}")


def read_parent(ref: str | os.PathLike[str], files: list[Path] | None = None) -> Parent:
    """Read a parent's weights (numpy, float32, canonical names) from :func:`parent_files`."""
    text = os.fspath(ref)
    files = parent_files(text) if files is None else files
    first = files[0]
    from texup.weights.ncnn import is_ncnn

    if is_ncnn(first):
        model = _read_ncnn_arrays(first, files, text)
    else:
        from texup.weights.arrays import read_array_model

        model = read_array_model(first, name=text)
    return Parent(text, model, files, _sha256_of(files))


def _read_ncnn_arrays(first: Path, files: list[Path], name: str) -> ArrayModel:
    from texup.weights.arrays import scale_and_multiple
    from texup.weights.ncnn import ncnn_paths, read_ncnn

    param, weights = ncnn_paths(first) if len(files) < 2 else (files[0], files[1])
    ncnn = read_ncnn(param, weights, numpy=True)
    if ncnn.output_resize is not None:
        raise ModelLoadError(param, f"the ncnn graph resizes the network's output by {ncnn.output_resize:g}")
    scale, multiple = scale_and_multiple(ncnn.arch, ncnn.hparams)
    sd = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in ncnn.state_dict.items()}
    return ArrayModel(ncnn.arch, dict(ncnn.hparams), sd, scale, multiple, name, param)


def _describe(model: ArrayModel) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(model.hparams.items()))
    return f"{model.arch}({params})"


def _where(parent: Parent) -> str:
    return os.fspath(parent.files[0]) if parent.files else parent.ref


def blend_arrays(a: Parent, b: Parent, alpha: float) -> ArrayModel:
    """``(1 - alpha) * A + alpha * B`` tensor by tensor; alpha 0 and 1 return copies of A's or B's tensors.

    Raises BlendError (one line, naming both files) for different architectures, hyper-parameters or tensors.
    """
    alpha = check_alpha(alpha)
    ma, mb = a.model, b.model
    where = f"{_where(a)} and {_where(b)}"
    if ma.arch != mb.arch:
        raise BlendError(f"cannot blend {where}: different architectures ({ma.arch} and {mb.arch})")
    if ma.hparams != mb.hparams:
        raise BlendError(f"cannot blend {where}: different shapes ({_describe(ma)} and {_describe(mb)})")
    if ma.state_dict.keys() != mb.state_dict.keys():
        only = sorted(set(ma.state_dict) ^ set(mb.state_dict))
        raise BlendError(f"cannot blend {where}: different tensors (e.g. {', '.join(only[:3])})")
    wrong = [k for k, v in ma.state_dict.items() if v.shape != mb.state_dict[k].shape]
    if wrong:
        k = wrong[0]
        raise BlendError(
            f"cannot blend {where}: different shapes ({k} {tuple(ma.state_dict[k].shape)} and "
            f"{tuple(mb.state_dict[k].shape)})"
        )
    out: dict[str, np.ndarray] = {}
    for key, va in ma.state_dict.items():
        vb = mb.state_dict[key]
        if alpha == 0.0:
            out[key] = np.array(va, dtype=np.float32, copy=True)
        elif alpha == 1.0:
            out[key] = np.array(vb, dtype=np.float32, copy=True)
        else:
            mixed = (1.0 - alpha) * va.astype(np.float64) + alpha * vb.astype(np.float64)
            out[key] = np.ascontiguousarray(mixed.astype(np.float32))
    name = format_blend(a.ref, b.ref, alpha)
    return ArrayModel(ma.arch, dict(ma.hparams), out, ma.scale, ma.input_multiple, name, None)


def provenance(a: Parent, b: Parent, alpha: float) -> dict[str, Any]:
    """What a blend's ``texup.provenance`` holds: both parents (reference, SHA-256), alpha and the formula."""
    from texup import __version__

    return {
        "blend": {
            "a": {"ref": a.ref, "sha256": a.sha256},
            "b": {"ref": b.ref, "sha256": b.sha256},
            "alpha": float(alpha),
            "formula": FORMULA,
        },
        "blended_by": f"texup {__version__}",
    }


def blend_models(
    a: str | os.PathLike[str], b: str | os.PathLike[str], alpha: float
) -> tuple[ArrayModel, dict[str, Any]]:
    """Read both parents and blend them; return the blended weights and their provenance."""
    alpha = check_alpha(alpha)
    pa, pb = read_parent(a), read_parent(b)
    return blend_arrays(pa, pb, alpha), provenance(pa, pb, alpha)


def write_blend(
    a: str | os.PathLike[str], b: str | os.PathLike[str], alpha: float, out: str | os.PathLike[str]
) -> Path:
    """``texup models blend A B --alpha ALPHA -o OUT``: blend and save OUT (texup ``.safetensors``, atomically)."""
    from texup.weights.arrays import save_array_model

    target = Path(out)
    if target.suffix.lower() != ".safetensors":
        raise BlendError(f"{target}: the blend is written as .safetensors; name the output so")
    for parent in (a, b):
        src = Path(os.fspath(parent)).expanduser()
        if src.is_file() and target.exists() and src.resolve() == target.resolve():
            raise BlendError(f"{target}: refusing to overwrite a parent")
    model, prov = blend_models(a, b, alpha)
    return save_array_model(model, target, provenance=prov)


# --------------------------------------------------------------------------------------------------
# Blend references: blended once, cached by content
# --------------------------------------------------------------------------------------------------


def _cache_path(key: str) -> Path:
    from texup.weights import cache

    return cache.models_dir() / _BLENDS_SUBDIR / f"{key}.safetensors"


def cache_key(sha_a: str, sha_b: str, alpha: float) -> str:
    """The cached blend's name: from both parents' SHA-256, alpha and :data:`BLEND_VERSION`."""
    text = json.dumps({"a": sha_a, "b": sha_b, "alpha": repr(float(alpha)), "v": BLEND_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def blend_file(ref: str | BlendRef, *, progress: StatusCallback | None = None) -> Path:
    """The cached ``.safetensors`` of a blend reference, blended now if not cached yet (under the cache lock).

    The parents' files are hashed each time (the cache key), their weights read only when the blend is made.
    """
    from texup.weights import cache
    from texup.weights.arrays import save_array_model

    parsed = parse_blend(ref) if isinstance(ref, str) else ref
    files_a, files_b = parent_files(parsed.a), parent_files(parsed.b)
    sha_a, sha_b = _sha256_of(files_a), _sha256_of(files_b)
    target = _cache_path(cache_key(sha_a, sha_b, parsed.alpha))
    if cache.verify_file(target).status == "ok":
        return target
    with cache.cache_lock():
        if cache.verify_file(target).status == "ok":
            return target
        if progress is not None:
            progress(f"blending {parsed.a} and {parsed.b} at alpha {_alpha_text(parsed.alpha)} (once)")
        pa, pb = read_parent(parsed.a, files_a), read_parent(parsed.b, files_b)
        if (pa.sha256, pb.sha256) != (sha_a, sha_b):
            raise BlendError(f"{str(parsed)!r}: a parent changed while it was read; run again")
        model = blend_arrays(pa, pb, parsed.alpha)
        save_array_model(model, target, provenance=provenance(pa, pb, parsed.alpha))
        cache.record_file(target, model=str(parsed), source="blend", parents=[sha_a, sha_b], alpha=parsed.alpha)
    return target


# --------------------------------------------------------------------------------------------------
# Partners: the other end of a model's Detail dial
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partner:
    """``ref``: the partner model (the smooth, PSNR-oriented end), or None with ``reason`` saying why there is none."""

    ref: str | None
    reason: str = ""


def partner_of(model: str | os.PathLike[str]) -> Partner:
    """The partner of a model reference: the registry's for a known name, else ``partner`` in a texup
    ``.safetensors`` file's provenance (a file beside the model, checked against its recorded SHA-256)."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    if not path.is_file():
        if is_blend(text):
            return Partner(None, "a blend is dialled through its parents")
        info = KNOWN_MODELS.get(text)
        if info is None:
            return Partner(None, f"unknown model '{text}'")
        if info.partner is None:
            return Partner(None, f"{text} has no published PSNR partner")
        return Partner(info.partner)
    if path.suffix.lower() != ".safetensors":
        return Partner(None, f"{path.name} names no partner (only a texup .safetensors can)")
    entry = _provenance(path).get("partner")
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return Partner(None, f"{path.name} names no partner (texup train --stage gan from a PSNR model records one)")
    partner = path.parent / entry["file"]
    if not partner.is_file():
        return Partner(None, f"its partner {partner.name} is missing beside {path.name}")
    return Partner(os.fspath(partner))


def _provenance(path: Path) -> dict[str, Any]:
    safetensors = safetensors_module(path)
    try:
        with safetensors.safe_open(str(path), framework="np") as handle:
            text = (handle.metadata() or {}).get("texup.provenance", "{}")
        value = json.loads(text)
    except (safetensors.SafetensorError, OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def detail_ref(model: str | os.PathLike[str], detail: float) -> str:
    """The model reference for ``model`` dialled to ``detail`` (1: the model itself; 0: its partner): the blend
    ``blend:PARTNER,MODEL@DETAIL``. BlendError when ``detail`` < 1 and the model has no partner (the reason)."""
    detail = check_alpha(detail)
    text = os.fspath(model)
    if detail == 1.0:
        return text
    partner = partner_of(text)
    if partner.ref is None:
        raise BlendError(f"cannot dial the detail of {text}: {partner.reason}")
    return format_blend(partner.ref, text, detail)
