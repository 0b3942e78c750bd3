"""OpenEXR: the header is parsed here (channel list, pixel types, data window) so a file is probed
without decoding; pixels are decoded by the official ``OpenEXR`` bindings.

Channel selection: ``R,G,B`` (+``A``) -> RGB(A); else ``Y`` (+``A``) -> gray(+alpha); else a single
channel of any name (a height or roughness map) -> gray; else a single layer holding ``R,G,B``
(``diffuse.R`` ...) -> that layer. HALF channels give float16, FLOAT float32 (mixed: float32).
Subsampled (luminance/chroma) channels, UINT channels and deep data are refused with a reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import ImageReadError
from ._common import check_dimensions, check_limit, decode_error
from .types import ImageInfo

MAGIC = b"\x76\x2f\x31\x01"
_PIXEL_TYPES = {0: "uint", 1: "half", 2: "float"}
COMPRESSIONS = ("none", "rle", "zips", "zip", "piz", "pxr24", "b44", "b44a", "dwaa", "dwab")
_MAX_ATTRIBUTE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ExrChannel:
    name: str
    pixel_type: str  # "uint" | "half" | "float"
    x_sampling: int
    y_sampling: int


@dataclass(frozen=True)
class ExrHeader:
    channels: tuple[ExrChannel, ...]
    width: int
    height: int
    compression: str | None
    multipart: bool
    tiles: tuple[int, int, int] | None  # (x size, y size, level mode) for tiled files
    header_end: int  # file offset of the chunk offset table


class _Truncated(Exception):
    pass


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def _read_name(fh: BinaryIO, limit: int = 256) -> bytes:
    out = bytearray()
    while True:
        byte = _read(fh, 1)
        if byte == b"\x00":
            return bytes(out)
        out += byte
        if len(out) > limit:
            raise ValueError("attribute name longer than 255 bytes")


def _parse_chlist(data: bytes) -> tuple[ExrChannel, ...]:
    channels: list[ExrChannel] = []
    pos = 0
    while pos < len(data) and data[pos] != 0:
        end = data.index(b"\x00", pos)
        name = data[pos:end].decode("utf-8", "replace")
        pixel_type, _plinear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", data, end + 1)
        channels.append(ExrChannel(name, _PIXEL_TYPES.get(pixel_type, f"type {pixel_type}"), x_sampling, y_sampling))
        pos = end + 1 + 16
    return tuple(channels)


def read_header(path: Path, fh: BinaryIO) -> ExrHeader:
    try:
        magic, version = struct.unpack("<4sI", _read(fh, 8))
        if magic != MAGIC:
            raise ValueError("bad magic number")
        if version & 0x800:
            raise ImageReadError(path, "deep EXR data is not supported (it holds samples, not an image)")
        channels: tuple[ExrChannel, ...] | None = None
        window: tuple[int, int, int, int] | None = None
        compression: str | None = None
        tiles: tuple[int, int, int] | None = None
        views: list[str] = []
        while True:
            name = _read_name(fh)
            if not name:
                break
            type_name = _read_name(fh)
            (size,) = struct.unpack("<i", _read(fh, 4))
            if size < 0 or size > _MAX_ATTRIBUTE_BYTES:
                raise ValueError(f"attribute {name.decode('latin-1')} claims {size} bytes")
            value = _read(fh, size)
            if name == b"channels" and type_name == b"chlist":
                channels = _parse_chlist(value)
            elif name == b"dataWindow" and type_name == b"box2i":
                window = struct.unpack("<4i", value)
            elif name == b"compression" and type_name == b"compression":
                compression = COMPRESSIONS[value[0]] if value[0] < len(COMPRESSIONS) else f"method {value[0]}"
            elif name == b"tiles" and type_name == b"tiledesc":
                x_size, y_size, mode = struct.unpack("<IIB", value)
                tiles = (x_size, y_size, mode & 0x0F)
            elif name == b"multiView" and type_name == b"stringvector":
                views = _string_vector(value)
        parts = _count_more_parts(fh) + 1 if version & 0x1000 else 1
    except _Truncated:
        raise ImageReadError(path, "truncated EXR data (file ends inside the header)") from None
    except (ValueError, struct.error, IndexError) as exc:
        raise ImageReadError(path, f"corrupt EXR header ({exc})") from exc
    if channels is None or window is None:
        raise ImageReadError(path, "corrupt EXR header (no channel list or data window)")
    if len(views) > 1:  # a stereo pair: the default view's channels alone would be taken for the whole file
        shown = ", ".join(v[:20] for v in views[:4])
        raise ImageReadError(
            path,
            f"multi-view EXR ({len(views)} views: {shown}) is not supported: texup upscales single images "
            "(save each view as its own file)",
        )
    if parts > 1:  # the first part alone would be silently taken for the whole file
        raise ImageReadError(
            path,
            f"multi-part EXR ({parts} parts) is not supported: texup upscales single images (save each part as "
            "its own file)",
        )
    x_min, y_min, x_max, y_max = window
    width, height = x_max - x_min + 1, y_max - y_min + 1
    check_dimensions(path, width, height)
    return ExrHeader(channels, width, height, compression, bool(version & 0x1000), tiles, fh.tell())


def _string_vector(value: bytes) -> list[str]:
    """An EXR ``stringvector`` attribute: strings, each after its int32 length."""
    out, pos = [], 0
    while pos + 4 <= len(value):
        (size,) = struct.unpack_from("<i", value, pos)
        if size < 0 or pos + 4 + size > len(value):
            raise ValueError("a stringvector attribute runs past its end")
        out.append(value[pos + 4 : pos + 4 + size].decode("utf-8", "replace"))
        pos += 4 + size
    return out


def _count_more_parts(fh: BinaryIO) -> int:
    """After a multi-part file's first header: how many more headers follow (the list ends with an empty one)."""
    more = 0
    while _read_name(fh):  # the next header's first attribute name, or the end of the list
        more += 1
        _read_name(fh)  # its type
        while True:
            (size,) = struct.unpack("<i", _read(fh, 4))
            if size < 0 or size > _MAX_ATTRIBUTE_BYTES:
                raise ValueError(f"an attribute of part {more + 1} claims {size} bytes")
            fh.seek(size, 1)
            if not _read_name(fh):
                break
            _read_name(fh)
    return more


_LINES_PER_CHUNK = {
    "none": 1,
    "rle": 1,
    "zips": 1,
    "zip": 16,
    "pxr24": 16,
    "piz": 32,
    "b44": 32,
    "b44a": 32,
    "dwaa": 32,
    "dwab": 256,
}


def _check_complete(path: Path, fh: BinaryIO, header: ExrHeader) -> None:
    """Refuse a truncated single-part file before decoding: every chunk offset in the offset table,
    and the last chunk's data, must lie inside the file. (The bindings only print a warning and
    return partial data for such files.) Multi-part and mip-mapped files are left to the decoder."""
    if header.multipart:
        return
    if header.tiles is None:
        lines = _LINES_PER_CHUNK.get(header.compression or "", 0)
        if not lines:
            return
        count = -(-header.height // lines)
        leader = 8  # y coordinate, packed size
    elif header.tiles[2] == 0:
        count = -(-header.width // max(header.tiles[0], 1)) * -(-header.height // max(header.tiles[1], 1))
        leader = 20  # tile x, y, level x, level y, packed size
    else:
        return
    fh.seek(0, 2)
    file_size = fh.tell()
    fh.seek(header.header_end)
    table = fh.read(8 * count)
    if len(table) != 8 * count:
        raise ImageReadError(path, "truncated EXR data (file ends inside the chunk offset table)")
    offsets = np.frombuffer(table, dtype="<u8")
    last = int(offsets.max())
    if last + leader > file_size:
        raise ImageReadError(path, "truncated EXR data (pixel chunks missing at the end of the file)")
    fh.seek(last + leader - 4)
    (packed,) = struct.unpack("<i", fh.read(4))
    if packed < 0 or last + leader + packed > file_size:
        raise ImageReadError(path, "truncated EXR data (the last pixel chunk runs past the end of the file)")


def select_channels(path: Path, header: ExrHeader) -> tuple[list[str], str]:
    """The channel names to stack (in order) and the resulting dtype."""
    by_name = {c.name: c for c in header.channels}
    names = list(by_name)
    chosen: list[str] | None = None
    if {"R", "G", "B"} <= by_name.keys():
        chosen = ["R", "G", "B"] + (["A"] if "A" in by_name else [])
    elif "Y" in by_name:
        chosen = ["Y"] + (["A"] if "A" in by_name else [])
    elif len(names) == 1:
        chosen = names
    else:
        layers = {n.rsplit(".", 1)[0] for n in names if "." in n and n.rsplit(".", 1)[1] in ("R", "G", "B")}
        if len(layers) == 1:
            layer = layers.pop()
            if all(f"{layer}.{c}" in by_name for c in "RGB"):
                chosen = [f"{layer}.{c}" for c in "RGB"] + ([f"{layer}.A"] if f"{layer}.A" in by_name else [])
    if chosen is None:
        raise ImageReadError(path, f"EXR has no R,G,B or Y channels to read (channels: {', '.join(names) or 'none'})")
    for name in chosen:
        channel = by_name[name]
        if channel.x_sampling != 1 or channel.y_sampling != 1:
            raise ImageReadError(path, f"EXR channel {name} is subsampled (luminance/chroma EXR is not supported)")
        if channel.pixel_type not in ("half", "float"):
            raise ImageReadError(
                path, f"EXR channel {name} holds {channel.pixel_type} samples (only half and float are supported)"
            )
    dtype = "float16" if all(by_name[n].pixel_type == "half" for n in chosen) else "float32"
    return chosen, dtype


def _info(path: Path, header: ExrHeader) -> ImageInfo:
    chosen, dtype = select_channels(path, header)
    extra: dict[str, Any] = {}
    if header.compression is not None:
        extra["exr_compression"] = header.compression
    if len(chosen) < len(header.channels):
        extra["exr_channels"] = tuple(chosen)
    return ImageInfo(path, "exr", header.width, header.height, len(chosen), dtype, "linear", extra)  # type: ignore[arg-type]


def probe(path: Path, max_pixels: int | None) -> ImageInfo:
    with open(path, "rb") as fh:
        header = read_header(path, fh)
    check_limit(path, header.width, header.height, max_pixels)
    return _info(path, header)


def decode(path: Path, info: ImageInfo) -> np.ndarray:
    import OpenEXR

    with open(path, "rb") as fh:
        header = read_header(path, fh)
        _check_complete(path, fh, header)
    chosen, dtype = select_channels(path, header)
    try:
        exr = OpenEXR.File(str(path), separate_channels=True)
        parts = exr.parts
    except (RuntimeError, OSError, ValueError) as exc:
        raise decode_error(path, "exr", exc) from exc
    channels = parts[0].channels if parts else {}
    missing = [name for name in chosen if name not in channels or channels[name].pixels is None]
    if missing:
        raise ImageReadError(path, f"corrupt or truncated EXR data (no pixels decoded for {', '.join(missing)})")
    planes = [np.asarray(channels[name].pixels) for name in chosen]
    pixels = np.stack([p.astype(dtype, copy=False) for p in planes], axis=2)
    if pixels.shape != info.shape:
        raise ImageReadError(path, f"corrupt EXR data (decoded {pixels.shape}, header says {info.shape})")
    return np.ascontiguousarray(pixels)


def encode(target: Path, pixels: np.ndarray, extra: dict[str, Any]) -> None:
    """Write float16 (HALF) or float32 (FLOAT) ``pixels`` as a scanline EXR: Y, Y+A, RGB or RGBA channels."""
    import OpenEXR

    names = {1: ["Y"], 2: ["Y", "A"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}[pixels.shape[2]]
    compression_name = str(extra.get("exr_compression", "zip"))
    if compression_name not in COMPRESSIONS:
        compression_name = "zip"
    compression = getattr(
        OpenEXR, "NO_COMPRESSION" if compression_name == "none" else f"{compression_name.upper()}_COMPRESSION"
    )
    planes = {name: np.ascontiguousarray(pixels[:, :, i]) for i, name in enumerate(names)}
    header = {"compression": compression, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, planes).write(str(target))
