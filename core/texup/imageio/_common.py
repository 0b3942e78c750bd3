"""Helpers shared by the format modules."""

from __future__ import annotations

from pathlib import Path

from ..errors import ImageReadError

FORMAT_NAMES = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tga": "TGA",
    "tiff": "TIFF",
    "bmp": "BMP",
    "webp": "WebP",
    "exr": "EXR",
    "dds": "DDS",
}


def decode_error(path: Path, format: str, exc: BaseException) -> ImageReadError:
    """An ImageReadError for a decoder failure: "truncated X data" when the decoder says so, else "corrupt X data
    (...)"."""
    name = FORMAT_NAMES.get(format, format.upper())
    message = " ".join(str(exc).split()) or type(exc).__name__
    lowered = message.lower()
    if isinstance(exc, EOFError) or any(
        word in lowered
        for word in ("truncated", "too small", "unexpected end", "premature end", "end of file", "short read")
    ):
        detail = "" if "truncated" in lowered else f" ({message})"
        return ImageReadError(path, f"truncated {name} data (the file ends before the image data does){detail}")
    return ImageReadError(path, f"corrupt {name} data ({message})")


def check_dimensions(path: Path, width: int, height: int) -> None:
    """Reject a header that claims an empty image."""
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"image header claims an empty size of {width}x{height}")


def check_limit(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Reject an image whose header claims more than ``max_pixels`` pixels (None: no limit), before decoding."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            path,
            f"image is {width}x{height}, larger than the limit of {max_pixels:,} pixels "
            f"({width * height:,} pixels); raise it with --max-pixels or TEXUP_MAX_PIXELS (e.g. {width}x{height})",
        )
