"""Data types shared by texup's image reader and writer, and the file-format table.

Nothing here decodes pixels; the module is safe to import anywhere (no torch, no codecs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

Dtype = Literal["uint8", "uint16", "float16", "float32"]
"""Sample types texup reads and writes; the name is also the numpy dtype name."""

DTYPES: frozenset[str] = frozenset(get_args(Dtype))

FORMATS: tuple[str, ...] = ("png", "jpeg", "tga", "tiff", "bmp", "webp", "exr", "dds")
"""Format names used in :attr:`ImageInfo.format` and accepted by ``write_image(format=...)`` (scripts/fuzz.py's
seeds cover every one; tests/core/test_fuzz.py checks)."""

_EXTENSION_OF_FORMAT: dict[str, str] = {
    "png": ".png",
    "jpeg": ".jpg",
    "tga": ".tga",
    "tiff": ".tif",
    "bmp": ".bmp",
    "webp": ".webp",
    "exr": ".exr",
    "dds": ".dds",
}

_FORMAT_OF_EXTENSION: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tga": "tga",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
    ".webp": "webp",
    ".exr": "exr",
    ".dds": "dds",
}

_FORMAT_ALIASES: dict[str, str] = {"jpg": "jpeg", "tif": "tiff", "targa": "tga", "openexr": "exr"}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_FORMAT_OF_EXTENSION)
"""Lower-case file suffixes (with the dot) that texup reads and writes."""


def normalize_format(format: str) -> str:
    """The canonical format name for ``format`` ("JPG" -> "jpeg", "tif" -> "tiff").

    Raises ``ValueError`` for a name that is not one of :data:`FORMATS` or a known alias.
    """
    name = format.strip().lower().lstrip(".")
    name = _FORMAT_ALIASES.get(name, name)
    if name not in _EXTENSION_OF_FORMAT:
        raise ValueError(f"unknown image format {format!r} (supported: {', '.join(FORMATS)})")
    return name


def extension_for(format: str) -> str:
    """The usual file suffix for a format, with the dot: ``extension_for("jpeg") == ".jpg"``.

    Raises ``ValueError`` for an unknown format name.
    """
    return _EXTENSION_OF_FORMAT[normalize_format(format)]


def format_for_path(path: str | Path) -> str:
    """The format a file name's suffix stands for (case-insensitive): ``"a/b.TIF"`` -> ``"tiff"``.

    Raises ``ValueError`` naming the suffix when it is missing or not one of :data:`SUPPORTED_EXTENSIONS`.
    """
    suffix = Path(path).suffix.lower()
    try:
        return _FORMAT_OF_EXTENSION[suffix]
    except KeyError:
        shown = suffix or "(no suffix)"
        known = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        raise ValueError(f"unsupported image file suffix {shown} (supported: {known})") from None


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds, read from its header: enough to write an upscaled result back the same way.

    ``channels`` and ``dtype`` describe the samples as stored (a palette image has 3 or 4 channels,
    an EXR half channel is ``"float16"``, a 16-bit PNG is ``"uint16"`` whatever its values).
    ``colorspace`` is ``"srgb"`` for integer formats and ``"linear"`` for EXR and float TIFF; it comes
    from the format, never from the pixel values. ``extra`` holds format details worth keeping when the
    file is written back (see :func:`texup.imageio.write_image`): ``icc_profile`` (bytes), ``palette``,
    ``jpeg_quality``, ``jpeg_subsampling``, ``exr_compression``, ``tiff_compression``, ``tga_rle``,
    ``webp_lossless``, ``bit_depth`` (PNG bit depth below 8, for information), ``dds_format``, ``dds_srgb``,
    ``dds_dx10``, ``dds_mipmaps``, ``dds_normal`` (:mod:`texup.imageio._dds`).
    """

    path: Path | None
    format: str
    width: int
    height: int
    channels: int
    dtype: Dtype
    colorspace: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        """True for gray+alpha and RGBA images."""
        return self.channels in (2, 4)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The ``(height, width, channels)`` shape of the decoded pixel array."""
        return (self.height, self.width, self.channels)


@dataclass
class Image:
    """Decoded pixels with the header they came from.

    ``pixels`` is a C-contiguous ``(H, W, C)`` array with ``C == info.channels`` and
    ``pixels.dtype == info.dtype``; integer samples are full-range (0..255 or 0..65535),
    alpha (when present) is the last channel, straight (not premultiplied).
    """

    pixels: np.ndarray
    info: ImageInfo
