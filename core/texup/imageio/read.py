"""Reading: :func:`probe_image` (header only) and :func:`read_image` (pixels).

The format is recognised from the file's first bytes, not its name (a JPEG saved as ``.png`` reads
as JPEG); only TGA, which has no signature, is recognised by its ``.tga`` suffix. The size is
checked from the header before any pixel is decoded, so a crafted header cannot make texup
allocate gigabytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ..limits import DEFAULT_MAX_PIXELS  # noqa: F401 (DEFAULT_MAX_PIXELS re-exported)
from ..limits import max_pixels as _default_max_pixels
from . import _dds, _exr, _pillow, _png, _tiff
from ._sniff import HEAD_BYTES, describe_unknown, sniff_format
from .types import Image, ImageInfo


def _open_checked(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Resolve the file's format from its signature, turning every file-system problem into a one-line reason."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageReadError(p, "is a folder, not an image file")
        if not stat.S_ISREG(p.stat().st_mode):  # opening a FIFO blocks until someone writes to it: never open one
            raise ImageReadError(p, "not a regular file (a pipe, device or socket is not an image file)")
        with open(p, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            size = fh.seek(0, 2)
            fh.seek(max(size - 18, 0))
            tail = fh.read(18)
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except PermissionError:
        raise ImageReadError(p, "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError(p, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageReadError(p, f"cannot open file ({exc.strerror or exc})") from exc
    if not head:
        raise ImageReadError(p, "file is empty (0 bytes)")
    format = sniff_format(head, p, tail)
    if format is None:
        raise ImageReadError(p, describe_unknown(head))
    return p, format


def _one_line(err: ImageReadError) -> ImageReadError:
    """``err`` with its reason made one printable line: a reason may quote bytes of the damaged file (a PNG chunk
    type, an EXR attribute name), and a line break or control character among them split the CLI's one-line
    error (found by scripts/fuzz.py); those characters are written as escapes (``\\n``, ``\\x8d``)."""
    if err.reason.isprintable():
        return err
    reason = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in err.reason)
    clean = ImageReadError(err.path, reason)
    clean.__cause__ = err.__cause__
    return clean


def _decoder_error(path: Path, format: str, exc: Exception) -> ImageReadError:
    """A third-party decoder's exception as this file's one-line error. Decoders report damaged files through an
    open-ended set of exception types (a fuzzed TIFF tag: TypeError or AttributeError from tifffile, in its header
    as in its pixels): any of them is this file's problem, never the batch's."""
    reason = " ".join(str(exc).split())[:200] or "no message"
    return _one_line(
        ImageReadError(path, f"corrupt or unsupported {format} file (decoder: {type(exc).__name__}: {reason})")
    )


def _probe(path: Path, format: str, max_pixels: int | None) -> ImageInfo:
    if format == "png":
        return _png.probe(path, max_pixels)
    if format == "exr":
        return _exr.probe(path, max_pixels)
    if format == "tiff":
        return _tiff.probe(path, max_pixels)
    if format == "dds":
        return _dds.probe(path, max_pixels)
    return _pillow.probe(path, format, max_pixels)


def probe_image(path: str | os.PathLike[str]) -> ImageInfo:
    """Read an image file's header: format, size, channels, sample type, colour space, extras.

    No pixel data is decoded (PNG chunks are skipped by seeking), so this is cheap even for huge
    files and does not apply a size limit. Raises :class:`~texup.errors.ImageReadError` naming the
    file and the reason for the same problems :func:`read_image` reports from the header
    (missing, folder, empty, unknown or unsupported format, corrupt header).
    """
    p, format = _open_checked(path)
    try:
        return _probe(p, format, None)
    except ImageReadError as err:
        raise _one_line(err) from err.__cause__
    except MemoryError:
        raise ImageReadError(p, "not enough memory to read its header") from None
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file, cause chained (as read_image does)
        raise _decoder_error(p, format, exc) from exc


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Image:
    """Decode an image file into an :class:`Image`.

    ``pixels`` is a C-contiguous ``(H, W, C)`` array with C and dtype as stored in the file
    (:class:`ImageInfo`): uint8 or uint16 full-range for PNG/TIFF/JPEG/TGA/BMP/WebP (bit depth from the
    file, never from the values), float16 or float32 for EXR and float TIFF. Palette images are
    expanded to RGB or RGBA (RGBA when the file has a transparency table); PNG colour-key
    transparency (tRNS) becomes an alpha channel; CMYK/YCbCr JPEGs are converted to RGB; 1-bit
    images become uint8 gray with 0/255.

    Raises :class:`~texup.errors.ImageReadError` ("<path>: <reason>") for a missing file, a folder,
    an empty, truncated or corrupt file, an unknown or unsupported format or pixel layout, and an
    image whose header claims a zero size or more than ``max_pixels`` pixels (checked before
    decoding; ``None``: :func:`texup.limits.max_pixels`, 8192x8192 unless ``TEXUP_MAX_PIXELS`` says otherwise).
    """
    if max_pixels is None:
        max_pixels = _default_max_pixels()
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    p, format = _open_checked(path)
    try:
        info = _probe(p, format, max_pixels)
        if format == "png":
            pixels = _png.decode(p, info)
        elif format == "exr":
            pixels = _exr.decode(p, info)
        elif format == "tiff":
            pixels = _tiff.decode(p, info)
        elif format == "dds":
            pixels = _dds.decode(p, info)
        else:
            pixels = _pillow.decode(p, format, info)
    except ImageReadError as err:
        raise _one_line(err) from err.__cause__
    except MemoryError:
        raise ImageReadError(p, "not enough memory to decode it") from None
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file, cause chained
        raise _decoder_error(p, format, exc) from exc
    if pixels.dtype != np.dtype(info.dtype):
        raise ImageReadError(p, f"decoder returned {pixels.dtype} samples, header says {info.dtype}")
    return Image(pixels=pixels, info=info)
