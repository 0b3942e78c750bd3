"""TIFF through tifffile: 1-bit (as gray), 8/16-bit integer and 16/32-bit float; gray, RGB, palette,
with or without alpha; contiguous or planar, stripped or tiled. A file holds one image: a multi-page TIFF or a
3D volume is refused (its first page alone would be silently taken for the whole file); reduced-resolution copies
of the image (thumbnails, pyramid levels) are not other images and are ignored.

Associated (premultiplied) alpha is converted to straight alpha on reading, since texup images
carry straight alpha; files are always written with unassociated alpha.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError
from ._common import check_dimensions, check_limit, decode_error
from .types import ImageInfo

_SUPPORTED_DTYPES = ("bool", "uint8", "uint16", "float16", "float32")
_LOSSLESS_COMPRESSIONS = ("none", "lzw", "adobe_deflate", "deflate", "zstd", "lzma", "packbits")
_ICC_TAG = 34675


class _QuietWhileReading(logging.Filter):
    """tifffile logs a line for every damaged tag it skips; while texup reads a TIFF on this thread those lines
    are dropped, so a bad file stays one error line (the exception that fails the read says what is wrong)."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "reading", False)


_QUIET = _QuietWhileReading()
logging.getLogger("tifffile").addFilter(_QUIET)


@contextmanager
def _quiet() -> Iterator[None]:
    previous = getattr(_QUIET.local, "reading", False)
    _QUIET.local.reading = True
    try:
        yield
    finally:
        _QUIET.local.reading = previous


def _layout(path: Path, page: Any) -> tuple[int, str, bool]:
    """(channels, dtype name as decoded, associated alpha) for a page, from its tags only."""
    photometric = page.photometric.name if page.photometric is not None else "MINISBLACK"
    samples = int(page.samplesperpixel)
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    dtype = np.dtype(page.dtype).name if page.dtype is not None else "unknown"
    if dtype not in _SUPPORTED_DTYPES:
        raise ImageReadError(
            path, f"unsupported TIFF sample type {dtype} (supported: 1-bit, uint8, uint16, float16, float32)"
        )
    associated = bool(extras) and extras[0] == 1
    if photometric in ("MINISBLACK", "MINISWHITE"):
        if samples not in (1, 2):
            raise ImageReadError(path, f"unsupported TIFF layout: {samples} gray samples per pixel")
        if photometric == "MINISWHITE" and dtype not in ("bool", "uint8", "uint16"):
            raise ImageReadError(path, "unsupported TIFF layout: white-is-zero float samples")
        channels = samples
    elif photometric == "RGB" or (photometric == "YCBCR" and page.compression.name == "JPEG"):
        if samples not in (3, 4):
            raise ImageReadError(path, f"unsupported TIFF layout: RGB with {samples} samples per pixel")
        channels = samples
    elif photometric == "PALETTE":
        if samples != 1 or page.colormap is None:
            raise ImageReadError(path, "corrupt TIFF data (palette image without a colour map)")
        channels = 3
        dtype = "uint8" if int(page.bitspersample) <= 8 else "uint16"
    else:
        raise ImageReadError(path, f"unsupported TIFF colour model {photometric} (supported: gray, RGB, palette)")
    return channels, ("uint8" if dtype == "bool" else dtype), associated


def _open(path: Path) -> Any:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError, struct.error, EOFError) as exc:
        raise decode_error(path, "tiff", exc) from exc
    if not tif.pages:
        tif.close()
        raise ImageReadError(path, "corrupt TIFF data (no image in the file)")
    try:
        images = _image_count(tif)
        depth = int(getattr(tif.pages.first, "imagedepth", 1) or 1)
    except (tifffile.TiffFileError, OSError, ValueError, struct.error, EOFError, IndexError) as exc:
        tif.close()
        raise decode_error(path, "tiff", exc) from exc
    if images > 1 or depth > 1:
        tif.close()
        what = f"multi-page TIFF ({images} pages)" if images > 1 else f"3D TIFF volume ({depth} slices)"
        raise ImageReadError(
            path,
            f"{what} is not supported: texup upscales single images (save each page as its own file)",
        )
    return tif


#: Pages looked at one by one to tell reduced-resolution copies from other images; beyond them every page counts.
_PAGES_EXAMINED = 64


def _image_count(tif: Any) -> int:
    """The images a TIFF holds: its pages, less those marked as reduced-resolution copies (NewSubfileType bit 0:
    a thumbnail or a pyramid level of the image before it)."""
    pages = tif.pages
    count = len(pages)
    images = 1
    for index in range(1, min(count, _PAGES_EXAMINED)):
        subfile = int(getattr(pages[index], "subfiletype", 0) or 0)
        if not subfile & 1:
            images += 1
    return images + max(0, count - _PAGES_EXAMINED)


def probe(path: Path, max_pixels: int | None) -> ImageInfo:
    with _quiet(), _open(path) as tif:
        page = tif.pages.first
        width, height = int(page.imagewidth), int(page.imagelength)
        check_dimensions(path, width, height)
        check_limit(path, width, height, max_pixels)
        channels, dtype, _ = _layout(path, page)
        extra: dict[str, Any] = {"tiff_compression": page.compression.name.lower()}
        icc = page.tags.get(_ICC_TAG)
        if icc is not None and icc.value:
            extra["icc_profile"] = bytes(icc.value)
        if page.photometric.name == "PALETTE":
            extra["palette"] = True
        colorspace = "linear" if dtype.startswith("float") else "srgb"
        return ImageInfo(path, "tiff", width, height, channels, dtype, colorspace, extra)  # type: ignore[arg-type]


def decode(path: Path, info: ImageInfo) -> np.ndarray:
    import tifffile

    with _quiet(), _open(path) as tif:
        page = tif.pages.first
        channels, dtype, associated = _layout(path, page)
        _check_complete(path, tif, page)
        try:
            raw = page.asarray()
        except (tifffile.TiffFileError, OSError, ValueError, RuntimeError, struct.error, EOFError) as exc:
            raise decode_error(path, "tiff", exc) from exc
        axes = page.axes
        photometric = page.photometric.name
        colormap = page.colormap
    if "S" in axes:
        raw = np.moveaxis(raw, axes.index("S"), -1)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.dtype == np.bool_:
        raw = raw.astype(np.uint8) * np.uint8(255)
    if photometric == "MINISWHITE":
        raw = np.iinfo(raw.dtype).max - raw
    elif photometric == "PALETTE":
        table = np.asarray(colormap).T  # (entries, 3), 16-bit values per the TIFF spec
        if dtype == "uint8":
            table = (table >> 8).astype(np.uint8) if table.max() > 255 else table.astype(np.uint8)
        raw = table.astype(dtype)[raw[:, :, 0]]
    if associated and raw.shape[2] in (2, 4):
        raw = _unpremultiply(raw)
    pixels = raw.astype(dtype, copy=False)
    if pixels.shape != info.shape:
        raise ImageReadError(path, f"corrupt TIFF data (decoded {pixels.shape}, header says {info.shape})")
    return np.ascontiguousarray(pixels)


def _check_complete(path: Path, tif: Any, page: Any) -> None:
    """Refuse a file whose strips or tiles lie past its end (the decoders report that only as bad data)."""
    file_size = tif.filehandle.size
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if offset + count > file_size:
            raise ImageReadError(path, "truncated TIFF data (image strips run past the end of the file)")


def _unpremultiply(raw: np.ndarray) -> np.ndarray:
    color, alpha = raw[:, :, :-1], raw[:, :, -1:]
    if raw.dtype.kind == "f":
        with np.errstate(divide="ignore", invalid="ignore"):
            straight = np.where(alpha > 0, color / alpha, 0).astype(raw.dtype)
    else:
        maximum = np.iinfo(raw.dtype).max
        a = alpha.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            straight = np.where(alpha > 0, np.rint(np.clip(color * maximum / a, 0, maximum)), 0).astype(raw.dtype)
    return np.concatenate([straight, alpha], axis=2)


def encode(target: Path, pixels: np.ndarray, extra: dict[str, Any]) -> None:
    """Write ``pixels`` (uint8, uint16, float16 or float32; 1..4 channels) as a single-page TIFF.

    Compression follows ``extra["tiff_compression"]`` when it is lossless, else Deflate; a
    horizontal (integer) or floating-point predictor is used with Deflate, LZW and Zstd.
    """
    import tifffile

    compression = str(extra.get("tiff_compression", "adobe_deflate"))
    if compression not in _LOSSLESS_COMPRESSIONS:
        compression = "adobe_deflate"
    channels = pixels.shape[2]
    options: dict[str, Any] = {
        "photometric": "minisblack" if channels <= 2 else "rgb",
        "planarconfig": "contig",
        "compression": None if compression == "none" else compression,
        "metadata": None,
    }
    if channels in (2, 4):
        options["extrasamples"] = ("unassalpha",)
    if compression in ("adobe_deflate", "deflate", "lzw", "zstd") and pixels.dtype != np.float16:
        options["predictor"] = True
    icc = extra.get("icc_profile")
    if icc:
        options["iccprofile"] = bytes(icc)
    data = pixels[:, :, 0] if channels == 1 else pixels
    tifffile.imwrite(target, data, **options)
