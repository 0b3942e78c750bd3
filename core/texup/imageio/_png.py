"""PNG: header and chunk walk done here; 8-bit and lower decoded by Pillow, 16-bit by imagecodecs.

Pillow reduces 48/64-bit PNGs to 8 bits per sample when it decodes them, so it never decodes a
16-bit PNG here; imagecodecs keeps the uint16 samples.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ImageReadError
from ._common import check_dimensions, check_limit, decode_error
from .types import Dtype, ImageInfo

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: zlib level of written PNGs: level 3 writes a few percent more bytes than zlib's default 6 in less than half the
#: time, which matters next to a fast model (docs/benchmarks.md). Lossless either way.
ZLIB_LEVEL = 3
_VALID_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_BASE_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_MAX_ICC_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    trns: bytes | None
    icc_profile: bytes | None


def _read_exact(fh: BinaryIO, n: int) -> bytes | None:
    data = fh.read(n)
    return data if len(data) == n else None


def _parse_ihdr(path: Path, fh: BinaryIO) -> tuple[int, int, int, int]:
    head = _read_exact(fh, 8 + 8 + 13 + 4)
    if head is None:
        raise ImageReadError(path, "truncated PNG data (file ends inside the header)")
    length, ctype = struct.unpack(">I4s", head[8:16])
    if ctype != b"IHDR" or length != 13:
        raise ImageReadError(path, "corrupt PNG data (first chunk is not a valid IHDR)")
    width, height, depth, color, compression, filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise ImageReadError(path, "corrupt PNG data (IHDR checksum mismatch)")
    if color not in _VALID_DEPTHS:
        raise ImageReadError(path, f"corrupt PNG data (invalid colour type {color})")
    if depth not in _VALID_DEPTHS[color]:
        raise ImageReadError(path, f"corrupt PNG data (bit depth {depth} is invalid for colour type {color})")
    if compression != 0 or filt != 0 or interlace > 1:
        raise ImageReadError(path, "corrupt PNG data (unknown compression, filter or interlace method)")
    check_dimensions(path, width, height)
    return width, height, depth, color


def _decode_iccp(path: Path, data: bytes) -> bytes:
    sep = data.find(b"\x00")
    if sep < 1 or sep + 2 > len(data):
        raise ImageReadError(path, "corrupt PNG data (malformed iCCP chunk)")
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(data[sep + 2 :], _MAX_ICC_BYTES)
    except zlib.error as exc:
        raise ImageReadError(path, f"corrupt PNG data (iCCP chunk: {exc})") from exc
    if inflater.unconsumed_tail:
        raise ImageReadError(path, "corrupt PNG data (ICC profile larger than 16 MiB)")
    return profile


def read_header(path: Path, fh: BinaryIO, *, full_walk: bool, max_pixels: int | None = None) -> PngHeader:
    """Parse IHDR, then walk the chunk list (lengths only, by seeking) up to the first IDAT,
    or to IEND when ``full_walk``; a chunk running past the end of the file means truncated data.
    The size is checked before the walk so an absurd header fails before anything else is read."""
    fh.seek(0, 2)
    file_size = fh.tell()
    fh.seek(0)
    width, height, depth, color = _parse_ihdr(path, fh)
    check_limit(path, width, height, max_pixels)
    return _walk(path, fh, file_size, width, height, depth, color, full_walk=full_walk)


def _walk(
    path: Path, fh: BinaryIO, file_size: int, width: int, height: int, depth: int, color: int, *, full_walk: bool
) -> PngHeader:
    trns: bytes | None = None
    icc: bytes | None = None
    seen_idat = False
    pos = fh.tell()
    while True:
        head = _read_exact(fh, 8)
        if head is None:
            if full_walk or not seen_idat:
                raise ImageReadError(path, "truncated PNG data (file ends before the IEND chunk)")
            break
        length, ctype = struct.unpack(">I4s", head)
        end = pos + 12 + length
        if end > file_size:
            raise ImageReadError(
                path, f"truncated PNG data (the {ctype.decode('latin-1')} chunk runs past the end of the file)"
            )
        if ctype == b"IDAT":
            seen_idat = True
            if not full_walk:
                break
        elif ctype == b"IEND":
            break
        elif ctype == b"acTL" and not seen_idat:  # APNG: the IDAT image is only the first frame (or a fallback)
            data = fh.read(length)
            frames = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else 0
            if frames > 1:
                raise ImageReadError(
                    path,
                    f"animated PNG ({frames} frames) is not supported: texup upscales still "
                    "images (export the frames as separate files)",
                )
        elif ctype in (b"tRNS", b"iCCP") and not seen_idat:
            data = fh.read(length)
            if ctype == b"tRNS":
                trns = data
            else:
                icc = _decode_iccp(path, data)
        fh.seek(end)
        pos = end
    if not seen_idat:
        raise ImageReadError(path, "corrupt PNG data (no IDAT chunk: the file holds no pixels)")
    return PngHeader(width, height, depth, color, trns, icc)


def info_from_header(path: Path, header: PngHeader) -> ImageInfo:
    channels = _BASE_CHANNELS[header.color_type]
    if header.trns is not None and header.color_type in (0, 2, 3):
        channels += 1
    extra: dict[str, object] = {}
    if header.color_type == 3:
        extra["palette"] = True
    if header.bit_depth < 8:
        extra["bit_depth"] = header.bit_depth
    if header.icc_profile:
        extra["icc_profile"] = header.icc_profile
    dtype: Dtype = "uint16" if header.bit_depth == 16 else "uint8"
    return ImageInfo(path, "png", header.width, header.height, channels, dtype, "srgb", extra)


def probe(path: Path, max_pixels: int | None) -> ImageInfo:
    with open(path, "rb") as fh:
        return info_from_header(path, read_header(path, fh, full_walk=False, max_pixels=max_pixels))


def _key_alpha(pixels: np.ndarray, header: PngHeader, maximum: int) -> np.ndarray:
    """Alpha from a tRNS colour key (colour types 0 and 2): transparent where the sample equals the key."""
    trns = header.trns or b""
    n = 1 if header.color_type == 0 else 3
    if len(trns) < 2 * n:
        raise ValueError("tRNS chunk too short for the colour type")
    key = np.array(struct.unpack(f">{n}H", trns[: 2 * n]), dtype=np.int64)
    if header.bit_depth < 8:
        # Pillow expands 1/2/4-bit gray to the full 0..255 range; the key is in the file's depth.
        key = key * 255 // ((1 << header.bit_depth) - 1)
    opaque = np.any(pixels != key.astype(pixels.dtype), axis=2)
    return np.where(opaque, maximum, 0).astype(pixels.dtype)[:, :, None]


def decode(path: Path, info: ImageInfo) -> np.ndarray:
    with open(path, "rb") as fh:
        header = read_header(path, fh, full_walk=True)
        if header.bit_depth == 16:
            fh.seek(0)
            data = fh.read()
    try:
        if header.bit_depth == 16:
            import imagecodecs

            pixels = np.asarray(imagecodecs.png_decode(data))
            if pixels.ndim == 2:
                pixels = pixels[:, :, None]
            if pixels.dtype != np.uint16:
                raise ValueError(f"decoder returned {pixels.dtype} samples for a 16-bit file")
            pixels = pixels.astype(np.uint16, copy=False)
        else:
            pixels = _decode_8bit(path, header)
        if header.trns is not None and header.color_type in (0, 2):
            pixels = np.concatenate(
                [pixels, _key_alpha(pixels, header, 65535 if header.bit_depth == 16 else 255)], axis=2
            )
    except ImageReadError:
        raise
    except (OSError, ValueError, RuntimeError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise decode_error(path, "png", exc) from exc
    if pixels.shape != info.shape:
        raise ImageReadError(path, f"corrupt PNG data (decoded {pixels.shape}, header says {info.shape})")
    return np.ascontiguousarray(pixels)


def _decode_8bit(path: Path, header: PngHeader) -> np.ndarray:
    from PIL import PngImagePlugin

    with PngImagePlugin.PngImageFile(path) as im:
        im.load()
        if header.color_type == 3:
            im = im.convert("RGBA" if header.trns is not None else "RGB")
        elif im.mode == "1":
            im = im.convert("L")
        arr = np.array(im)  # writeable (np.asarray of a Pillow image is read-only)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _iccp_chunk(profile: bytes) -> bytes:
    body = b"iCCP" + b"ICC profile\x00\x00" + zlib.compress(profile)
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def encode(target: Path, pixels: np.ndarray, extra: dict[str, object]) -> None:
    """Write ``pixels`` (uint8 or uint16, 1..4 channels) as PNG at ``target``, with the ICC profile from ``extra``."""
    icc = extra.get("icc_profile")
    if pixels.dtype == np.uint16:
        import imagecodecs

        data = bytes(imagecodecs.png_encode(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, level=ZLIB_LEVEL))
        if icc:
            ihdr_end = 8 + 25
            data = data[:ihdr_end] + _iccp_chunk(bytes(icc)) + data[ihdr_end:]  # type: ignore[call-overload]
        target.write_bytes(data)
        return
    from PIL import Image as PILImage

    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    im = PILImage.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, mode)
    options: dict[str, object] = {"compress_level": ZLIB_LEVEL}
    if icc:
        options["icc_profile"] = bytes(icc)  # type: ignore[call-overload]
    im.save(target, format="PNG", **options)
