"""Writing: :func:`write_image`, atomic (temporary file in the destination folder, fsync, rename)."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import create_temp, fsync_folder
from ..errors import ImageWriteError
from . import _dds, _exr, _pillow, _png, _tiff
from ._common import FORMAT_NAMES
from .types import DTYPES, ImageInfo, format_for_path, normalize_format

# Sample types each format stores without loss of range.
FORMAT_DTYPES: dict[str, tuple[str, ...]] = {
    "png": ("uint8", "uint16"),
    "jpeg": ("uint8",),
    "tga": ("uint8",),
    "tiff": ("uint8", "uint16", "float16", "float32"),
    "bmp": ("uint8",),
    "webp": ("uint8",),
    "exr": ("float16", "float32"),
    "dds": ("uint8", "uint16", "float16", "float32"),  # which of them a DDS format takes: _dds
}
#: The largest side each format stores: its header's fields (PNG, EXR, BMP: signed 32-bit; TIFF, DDS: 32-bit; TGA:
#: 16-bit), libjpeg's 65500, WebP's 14 bits. texup upscale checks --size against them before anything runs.
_MAX_SIDE: dict[str, int] = {
    "jpeg": 65500,
    "webp": 16383,
    "tga": 65535,
    "png": 2**31 - 1,
    "exr": 2**31 - 1,
    "bmp": 2**31 - 1,
    "tiff": 2**32 - 1,
    "dds": 2**32 - 1,
}
#: The largest side any format texup writes can store.
LARGEST_SIDE = max(_MAX_SIDE.values())


def size_problem(format: str, width: int, height: int) -> str | None:
    """Why ``format`` cannot store a ``width`` x ``height`` image (a side beyond its largest), or None."""
    limit = _MAX_SIDE.get(format)
    if limit is None or max(width, height) <= limit:
        return None
    return (
        f"{FORMAT_NAMES.get(format, format)} images are limited to {limit}x{limit} pixels, this one is {width}x{height}"
    )


_SUGGEST: dict[str, str] = {
    "uint8": "PNG, TIFF, TGA or WebP",
    "uint16": "PNG or TIFF",
    "float16": "EXR or TIFF",
    "float32": "EXR or TIFF",
}


def _resolve_format(path: Path, format: str | None) -> str:
    try:
        return normalize_format(format) if format is not None else format_for_path(path)
    except ValueError as exc:
        raise ImageWriteError(path, str(exc)) from None


def _validate(path: Path, format: str, pixels: np.ndarray) -> np.ndarray:
    """Return ``pixels`` as a C-contiguous (H, W, C) array or raise ImageWriteError saying why it cannot be stored."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ImageWriteError(path, f"pixels must be (H, W) or (H, W, C) with C in 1..4, got shape {pixels.shape}")
    height, width, channels = pixels.shape
    if height == 0 or width == 0:
        raise ImageWriteError(path, f"cannot write an empty {width}x{height} image")
    dtype = pixels.dtype.name
    name = FORMAT_NAMES[format]
    if dtype not in DTYPES:
        raise ImageWriteError(
            path, f"{dtype} samples are not an image sample type (use uint8, uint16, float16 or float32)"
        )
    if dtype not in FORMAT_DTYPES[format]:
        raise ImageWriteError(
            path,
            f"{name} cannot hold {dtype} samples (it stores {', '.join(FORMAT_DTYPES[format])}); "
            f"convert first or write {_SUGGEST[dtype]}",
        )
    if format == "jpeg" and channels in (2, 4):
        raise ImageWriteError(path, "JPEG has no alpha channel; drop the alpha or write PNG, TIFF, TGA or WebP")
    problem = size_problem(format, width, height)
    if problem:
        raise ImageWriteError(path, problem)
    return np.ascontiguousarray(pixels)


def _encode(
    target: Path, format: str, pixels: np.ndarray, extra: dict[str, Any], dds_format: str | None, role: str | None
) -> None:
    if format == "png":
        _png.encode(target, pixels, extra)
    elif format == "exr":
        _exr.encode(target, pixels, extra)
    elif format == "tiff":
        _tiff.encode(target, pixels, extra)
    elif format == "dds":
        _dds.encode(target, pixels, extra, dds_format=dds_format, role=role)
    else:
        _pillow.encode(target, format, pixels, extra)


def _create_temp(path: Path) -> Path:
    """:func:`texup._atomic.create_temp` with its failures as one-line :class:`ImageWriteError` naming ``path``."""
    folder = path.parent
    try:
        return create_temp(path)
    except FileNotFoundError:
        raise ImageWriteError(path, f"folder does not exist: {folder}") from None
    except NotADirectoryError:
        raise ImageWriteError(path, f"not a folder: {folder}") from None
    except PermissionError:
        raise ImageWriteError(path, f"permission denied writing in {folder}") from None
    except FileExistsError:
        raise ImageWriteError(path, f"cannot create a temporary file in {folder}") from None
    except OSError as exc:
        raise ImageWriteError(path, f"cannot create a file in {folder} ({exc.strerror or exc})") from exc


def write_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    like: ImageInfo | None = None,
    format: str | None = None,
    role: str | None = None,
    dds_format: str | None = None,
) -> Path:
    """Write ``pixels`` to ``path`` atomically and return the path written.

    ``pixels`` is ``(H, W, C)`` (or ``(H, W)`` for gray) with C in 1..4: gray, gray+alpha, RGB, RGBA,
    straight alpha last. Its dtype is written as is (convert with :func:`from_float32` first):
    PNG takes uint8/uint16; JPEG, TGA, BMP, WebP uint8; TIFF uint8/uint16/float16/float32;
    EXR float16 (half) / float32 (float). Integer samples are taken as sRGB-encoded and float samples
    as linear; nothing is converted here.

    The format is ``format`` if given, else the path's suffix. ``like`` (usually the source's
    :class:`ImageInfo`) carries details to keep: ICC profile, JPEG quality and chroma subsampling
    (default 95, 4:4:4), EXR compression (default ZIP), TIFF compression when lossless (default
    Deflate), TGA RLE (default off), WebP lossless (default lossless; RGB under zero alpha is kept).
    A palette source is written as RGB(A): quantising the upscaled image again would lose detail.
    Formats without gray storage get gray expanded to RGB (WebP; BMP with alpha), values unchanged.

    DDS: ``dds_format`` (one of :data:`~texup.imageio.DDS_FORMATS`; else ``TEXUP_DDS_FORMAT``, else ``like``'s own)
    names the block format; ``role`` is the texture's role (:mod:`texup.inference.policy`): a ``"normal"`` one has
    every mip level renormalised, as a BC5 normal map has. Other formats ignore both.

    The image is encoded into a temporary file in the destination folder, flushed to disk and
    renamed over ``path``, so a reader never sees a half-written file and an existing file is left
    intact when anything fails. Raises :class:`~texup.errors.ImageWriteError` naming ``path`` and
    the reason: a format that cannot hold the dtype or channels, a missing folder, a permission
    problem, an encoder failure.
    """
    target = Path(path)
    fmt = _resolve_format(target, format)
    if not isinstance(pixels, np.ndarray):
        raise ImageWriteError(target, f"pixels must be a numpy array, got {type(pixels).__name__}")
    data = _validate(target, fmt, pixels)
    if target.is_dir():
        raise ImageWriteError(target, "is a folder")
    extra: dict[str, Any] = dict(like.extra) if like is not None else {}

    temp = _create_temp(target)
    done = False
    try:
        try:
            existing_mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            existing_mode = None
        try:
            _encode(temp, fmt, data, extra, dds_format, role)
            with open(temp, "rb+") as fh:
                os.fsync(fh.fileno())
            if existing_mode is not None:
                os.chmod(temp, existing_mode)
        except ImageWriteError:
            raise
        except (OSError, ValueError, RuntimeError, TypeError, KeyError, struct.error, zlib.error) as exc:
            reason = (
                exc.strerror
                if isinstance(exc, OSError) and exc.strerror
                else " ".join(str(exc).split()) or type(exc).__name__
            )
            raise ImageWriteError(target, f"{FORMAT_NAMES[fmt]} encoding failed: {reason}") from exc
        try:
            os.replace(temp, target)
        except OSError as exc:
            raise ImageWriteError(target, f"cannot replace the file ({exc.strerror or exc})") from exc
        done = True
        fsync_folder(target.parent)
    finally:
        if not done:
            temp.unlink(missing_ok=True)
    return target
