"""JPEG, TGA, BMP and WebP through Pillow.

Pillow's plugin classes are instantiated directly (not through ``Image.open``) so that only the
format the signature named is tried and texup's own pixel limit, checked from the header, applies
instead of Pillow's global decompression-bomb setting.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError
from ._common import FORMAT_NAMES, check_dimensions, check_limit, decode_error
from .types import ImageInfo

# Pillow mode -> (mode to convert to, or None to keep; channels)
_MODES: dict[str, tuple[str | None, int]] = {
    "1": ("L", 1),
    "L": (None, 1),
    "LA": (None, 2),
    "La": ("LA", 2),
    "RGB": (None, 3),
    "RGBX": ("RGB", 3),
    "YCbCr": ("RGB", 3),
    "CMYK": ("RGB", 3),
    "RGBA": (None, 4),
    "RGBa": ("RGBA", 4),
    "PA": ("RGBA", 4),
}

# IEC 10918-1 Annex K.1 luminance quantisation table, the base the IJG quality scale multiplies.
_IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def _ijg_table_sum(quality: int) -> int:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return sum(min(max((q * scale + 50) // 100, 1), 255) for q in _IJG_LUMA)


_IJG_SUMS = {q: _ijg_table_sum(q) for q in range(1, 101)}


def estimate_jpeg_quality(luma_table: list[int] | tuple[int, ...]) -> int:
    """The IJG quality (1..100) whose scaled luminance table is closest to ``luma_table``.

    Compares table sums, so the coefficient order (zigzag or natural) does not matter; for encoders
    that do not use the IJG tables the answer is the nearest equivalent, not an exact setting.
    """
    total = sum(int(v) for v in luma_table)
    return min(range(100, 0, -1), key=lambda q: abs(_IJG_SUMS[q] - total))


def _webp_lossless(path: Path) -> bool | None:
    """Whether a WebP file's first image chunk is VP8L (lossless); None if no image chunk was found."""
    with open(path, "rb") as fh:
        fh.seek(12)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            fourcc, size = struct.unpack("<4sI", head)
            if fourcc == b"VP8L":
                return True
            if fourcc == b"VP8 ":
                return False
            if fourcc == b"ANMF":
                fh.seek(16, 1)  # frame position, size and duration; the frame's own chunks follow
                continue
            fh.seek(size + (size & 1), 1)


def _plugin_class(format: str) -> Any:
    if format == "jpeg":
        from PIL import JpegImagePlugin

        return JpegImagePlugin.JpegImageFile
    if format == "tga":
        from PIL import TgaImagePlugin

        return TgaImagePlugin.TgaImageFile
    if format == "bmp":
        from PIL import BmpImagePlugin

        return BmpImagePlugin.BmpImageFile
    if format == "webp":
        from PIL import WebPImagePlugin

        return WebPImagePlugin.WebPImageFile
    raise ValueError(f"no Pillow reader for {format}")


def _open(path: Path, format: str) -> Any:
    try:
        return _plugin_class(format)(path)
    except ImportError as exc:
        raise ImageReadError(path, f"this Pillow build cannot read {FORMAT_NAMES[format]} ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise decode_error(path, format, exc) from exc


def _target_mode(path: Path, format: str, im: Any) -> tuple[str | None, int]:
    if im.mode == "P":
        palette_mode = getattr(im.palette, "mode", "RGB") if im.palette is not None else "RGB"
        has_alpha = "transparency" in im.info or "A" in palette_mode
        return ("RGBA", 4) if has_alpha else ("RGB", 3)
    if im.mode not in _MODES:
        raise ImageReadError(path, f"unsupported {FORMAT_NAMES[format]} pixel mode {im.mode}")
    return _MODES[im.mode]


def _info(path: Path, format: str, im: Any) -> ImageInfo:
    width, height = im.size
    check_dimensions(path, width, height)
    _, channels = _target_mode(path, format, im)
    extra: dict[str, Any] = {}
    icc = im.info.get("icc_profile")
    if icc and im.mode not in ("CMYK", "YCbCr"):  # a CMYK profile does not describe the converted RGB
        extra["icc_profile"] = bytes(icc)
    if im.mode in ("P", "PA"):
        extra["palette"] = True
    if format == "jpeg":
        from PIL import JpegImagePlugin

        tables = getattr(im, "quantization", None) or {}
        if 0 in tables:
            extra["jpeg_quality"] = estimate_jpeg_quality(list(tables[0]))
        sampling = JpegImagePlugin.get_sampling(im)
        if sampling in (0, 1, 2):
            extra["jpeg_subsampling"] = sampling
        if im.mode == "CMYK":
            extra["converted_from"] = "cmyk"
    elif format == "tga":
        extra["tga_rle"] = im.info.get("compression") == "tga_rle"
    elif format == "webp":
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:  # the first frame alone would be silently taken as the whole file
            raise ImageReadError(
                path,
                f"animated WebP ({frames} frames) is not supported: texup upscales still "
                "images (export the frames as separate files)",
            )
        lossless = _webp_lossless(path)
        if lossless is not None:
            extra["webp_lossless"] = lossless
    return ImageInfo(path, format, width, height, channels, "uint8", "srgb", extra)


def _check_riff_size(path: Path) -> None:
    """A WebP's RIFF header states the file size; a shorter file was cut off."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        actual = fh.seek(0, 2)
    if len(head) < 12:
        raise ImageReadError(path, "truncated WebP data (file ends inside the header)")
    (declared,) = struct.unpack("<I", head[4:8])
    if declared + 8 > actual:
        raise ImageReadError(path, f"truncated WebP data (the file has {actual:,} of its {declared + 8:,} bytes)")


def probe(path: Path, format: str, max_pixels: int | None) -> ImageInfo:
    if format == "webp":
        _check_riff_size(path)
    with _open(path, format) as im:
        check_limit(path, im.size[0], im.size[1], max_pixels)
        return _info(path, format, im)


def decode(path: Path, format: str, info: ImageInfo) -> np.ndarray:
    with _open(path, format) as im:
        try:
            im.load()
            convert_to, _ = _target_mode(path, format, im)
            decoded = im.convert(convert_to) if convert_to else im
            pixels = np.array(decoded)  # a writeable copy (np.asarray of a Pillow image is read-only)
        except ImageReadError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise decode_error(path, format, exc) from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape != info.shape or pixels.dtype != np.uint8:
        raise ImageReadError(
            path,
            f"unsupported {FORMAT_NAMES[format]} data "
            f"(decoded {pixels.dtype} {pixels.shape}, expected uint8 {info.shape})",
        )
    return np.ascontiguousarray(pixels)


def _to_pil(pixels: np.ndarray) -> Any:
    from PIL import Image as PILImage

    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    return PILImage.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels), mode)


def _gray_to_color(pixels: np.ndarray) -> np.ndarray:
    """Gray -> RGB and gray+alpha -> RGBA, for formats without gray(+alpha) storage; values unchanged."""
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 2:
        return np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)
    return pixels


def _bmp_with_alpha(pixels: np.ndarray) -> bytes:
    """A 32-bit BMP with a BITMAPV4HEADER and an explicit alpha mask (read back as RGBA by Pillow and most tools)."""
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels[::-1][:, :, [2, 1, 0, 3]]).tobytes()
    header_size = 108
    offset = 14 + header_size
    info = struct.pack(
        "<IiiHHIIiiII4I4s36s3I",
        header_size, width, height, 1, 32, 3, len(data), 2835, 2835, 0, 0,
        0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000, b"BGRs", bytes(36), 0, 0, 0,
    )  # fmt: skip
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + data


def encode(target: Path, format: str, pixels: np.ndarray, extra: dict[str, Any]) -> None:
    """Write uint8 ``pixels`` at ``target`` as ``format`` (jpeg, tga, bmp or webp); input already validated."""
    icc = extra.get("icc_profile")
    if format == "jpeg":
        options: dict[str, Any] = {
            "quality": int(extra.get("jpeg_quality", 95)),
            "subsampling": int(extra.get("jpeg_subsampling", 0)),
        }
        if icc:
            options["icc_profile"] = bytes(icc)
        _to_pil(pixels).save(target, format="JPEG", **options)
    elif format == "tga":
        compression = "tga_rle" if extra.get("tga_rle") else None
        _to_pil(pixels).save(target, format="TGA", compression=compression)
    elif format == "bmp":
        if pixels.shape[2] in (2, 4):
            target.write_bytes(_bmp_with_alpha(_gray_to_color(pixels)))
        else:
            _to_pil(pixels).save(target, format="BMP")
    elif format == "webp":
        lossless = bool(extra.get("webp_lossless", True))
        options = {
            "lossless": lossless,
            "exact": True,
            "quality": 100 if lossless else int(extra.get("webp_quality", 95)),
        }
        if icc:
            options["icc_profile"] = bytes(icc)
        _to_pil(_gray_to_color(pixels)).save(target, format="WEBP", **options)
    else:
        raise ValueError(f"no Pillow writer for {format}")
