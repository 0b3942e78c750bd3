"""DDS (DirectDraw Surface): the top mip level of a 2D texture in, a texture with its mip chain out.

Read: BC1 to BC7 (BC6H signed and unsigned, as float16), and uncompressed RGBA8, BGRA8, BGRX8, BGR8, R8, RG8, R16,
RGBA16F and RGBA32F, from the legacy header (FourCC or bit masks) or the DX10 one. What the pixels become:

* BC1, BC2, BC3, BC7, RGBA8, BGRA8: RGBA uint8 (RGB when a DX10 header says the alpha is opaque); BGRX8, BGR8: RGB;
* BC4, R8: one channel uint8; R16: one channel uint16;
* BC5, RG8: a two-channel normal map: X and Y as stored and Z rebuilt (``sqrt(1 - x^2 - y^2)``), RGB uint8, so the
  model sees a whole normal map; ``extra["dds_normal"]`` says so;
* BC6H, RGBA16F: float16, RGBA32F: float32, linear. The 8- and 16-bit formats are ``"srgb"`` as PNG is (their
  values go to the model as stored), with ``extra["dds_srgb"]`` set by an ``_SRGB`` DXGI format.

Cube maps, texture arrays, volume (3D) and 1D textures are refused in one line, as are premultiplied (DXT2/DXT4)
and signed (SNORM) formats. Every size in the header is checked against the file before anything is decoded: a
mip count larger than the size allows, levels the file does not hold, a size over the pixel limit.

Write: the format the writer is given (``dds_format``: a run's ``--dds-format``), else the one ``TEXUP_DDS_FORMAT``
names (both convert DDS inputs too), else ``extra["dds_format"]`` (the input's own, so BC7 stays BC7 and BC6H_SF16
stays signed), else by the samples: float -> BC6H (BC6H_SF16 with negative values; RGBA16F with alpha), one channel
-> BC4 (R16 for uint16), else BC7; unsigned BC6H refuses negative values. A full mip chain is made from the written
top level (a DDS input without mips is written without), each level a box filter of the one above (in linear light
when the sRGB flag is set); a normal map's levels (BC5, RG8, or any format when the role is "normal") are
renormalised; a cut-out alpha (BC1's, or one soft on at most a quarter of its pixels) keeps its
coverage at 0.5 at every level. The header kind (legacy or DX10) is the input's where the format allows it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageReadError, ImageWriteError
from . import _bc
from ._common import check_dimensions, check_limit
from .convert import linear_to_srgb, srgb_to_linear
from .types import Dtype, ImageInfo

ENV_DDS_FORMAT = "TEXUP_DDS_FORMAT"

_MAGIC = b"DDS "
_HEADER = 128  # magic + DDS_HEADER
_DX10 = 20

# DDS_HEADER.dwFlags, DDS_PIXELFORMAT.dwFlags, dwCaps, dwCaps2
_DDSD_CAPS, _DDSD_HEIGHT, _DDSD_WIDTH, _DDSD_PITCH = 0x1, 0x2, 0x4, 0x8
_DDSD_PIXELFORMAT, _DDSD_MIPMAPCOUNT, _DDSD_LINEARSIZE = 0x1000, 0x20000, 0x80000
_DDPF_ALPHAPIXELS, _DDPF_ALPHA, _DDPF_FOURCC, _DDPF_RGB, _DDPF_LUMINANCE = 0x1, 0x2, 0x4, 0x40, 0x20000
_CAPS_COMPLEX, _CAPS_TEXTURE, _CAPS_MIPMAP = 0x8, 0x1000, 0x400000
_CAPS2_CUBEMAP, _CAPS2_VOLUME = 0x200, 0x200000
_DX10_TEXTURE2D, _DX10_MISC_CUBE = 3, 0x4
_ALPHA_MODE_OPAQUE = 3
_BAND_ROWS = 256  # rows of the top level prepared at a time when writing (even: each band halves on its own)
_RGBA_MASKS = (_DDPF_RGB | _DDPF_ALPHAPIXELS, 32, 0xFF, 0xFF00, 0xFF0000, 0xFF000000)
_BGRA_MASKS = (_DDPF_RGB | _DDPF_ALPHAPIXELS, 32, 0xFF0000, 0xFF00, 0xFF, 0xFF000000)


@dataclass(frozen=True)
class Layout:
    """One DDS pixel format: how its data is laid out and what texup makes of it."""

    name: str
    block: int  # bytes per 4x4 block; 0 for an uncompressed format
    pixel: int  # bytes per pixel of an uncompressed format
    channels: int  # channels of the decoded image
    dtype: Dtype
    dxgi: int | None  # the DXGI format written (None: legacy header only)
    dxgi_srgb: int | None = None
    fourcc: bytes | int | None = None  # legacy FourCC written, if any
    masks: tuple[int, int, int, int, int, int] | None = None  # legacy (flags, bits, R, G, B, A) written, if any
    normal: bool = False  # two stored channels = X, Y of a normal map

    def level_bytes(self, width: int, height: int) -> int:
        if self.block:
            return max(1, (width + 3) // 4) * max(1, (height + 3) // 4) * self.block
        return width * height * self.pixel


_LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("BC1", 8, 0, 4, "uint8", 71, 72, fourcc=b"DXT1"),
        Layout("BC2", 16, 0, 4, "uint8", 74, 75, fourcc=b"DXT3"),
        Layout("BC3", 16, 0, 4, "uint8", 77, 78, fourcc=b"DXT5"),
        Layout("BC4", 8, 0, 1, "uint8", 80, fourcc=b"ATI1"),
        Layout("BC5", 16, 0, 3, "uint8", 83, fourcc=b"ATI2", normal=True),
        Layout("BC6H", 16, 0, 3, "float16", 95),
        Layout("BC6H_SF16", 16, 0, 3, "float16", 96),
        Layout("BC7", 16, 0, 4, "uint8", 98, 99),
        Layout("RGBA8", 0, 4, 4, "uint8", 28, 29, masks=_RGBA_MASKS),
        Layout("BGRA8", 0, 4, 4, "uint8", 87, 91, masks=_BGRA_MASKS),
        Layout("BGRX8", 0, 4, 3, "uint8", 88, 93, masks=(_DDPF_RGB, 32, 0xFF0000, 0xFF00, 0xFF, 0)),
        Layout("BGR8", 0, 3, 3, "uint8", None, masks=(_DDPF_RGB, 24, 0xFF0000, 0xFF00, 0xFF, 0)),
        Layout("R8", 0, 1, 1, "uint8", 61, masks=(_DDPF_LUMINANCE, 8, 0xFF, 0, 0, 0)),
        Layout("RG8", 0, 2, 3, "uint8", 49, normal=True),
        Layout("R16", 0, 2, 1, "uint16", 56, masks=(_DDPF_LUMINANCE, 16, 0xFFFF, 0, 0, 0)),
        Layout("RGBA16F", 0, 8, 4, "float16", 10, fourcc=113),
        Layout("RGBA32F", 0, 16, 4, "float32", 2, fourcc=116),
    )
}  # fmt: skip

#: Names accepted for ``--dds-format`` / ``TEXUP_DDS_FORMAT`` / ``extra["dds_format"]``.
DDS_FORMATS: tuple[str, ...] = tuple(name.lower() for name in _LAYOUTS)


def chosen_dds_format(asked: str | None = None) -> str | None:
    """The DDS format a run asks for: ``asked`` (one of :data:`DDS_FORMATS`, any case), else ``TEXUP_DDS_FORMAT``
    when set, else None (each output keeps its input's format, or one chosen from the samples). Raises
    ``ValueError`` naming an unknown format (and the variable when it came from there)."""
    source = "" if asked else f" in {ENV_DDS_FORMAT}"
    value = (asked or os.environ.get(ENV_DDS_FORMAT, "")).strip()
    if not value:
        return None
    if value.lower() not in DDS_FORMATS:
        raise ValueError(f"unknown DDS format {value!r}{source} (choose from: {', '.join(DDS_FORMATS)})")
    return value.lower()


# DXGI format -> (layout name, sRGB, decode as). TYPELESS formats read as their UNORM twins.
_DXGI: dict[int, tuple[str, bool, str]] = {
    70: ("BC1", False, "BC1"), 71: ("BC1", False, "BC1"), 72: ("BC1", True, "BC1"),
    73: ("BC2", False, "BC2"), 74: ("BC2", False, "BC2"), 75: ("BC2", True, "BC2"),
    76: ("BC3", False, "BC3"), 77: ("BC3", False, "BC3"), 78: ("BC3", True, "BC3"),
    79: ("BC4", False, "BC4"), 80: ("BC4", False, "BC4"),
    82: ("BC5", False, "BC5"), 83: ("BC5", False, "BC5"),
    94: ("BC6H", False, "BC6H"), 95: ("BC6H", False, "BC6H"), 96: ("BC6H_SF16", False, "BC6H_SF16"),
    97: ("BC7", False, "BC7"), 98: ("BC7", False, "BC7"), 99: ("BC7", True, "BC7"),
    27: ("RGBA8", False, ""), 28: ("RGBA8", False, ""), 29: ("RGBA8", True, ""),
    87: ("BGRA8", False, ""), 90: ("BGRA8", False, ""), 91: ("BGRA8", True, ""),
    88: ("BGRX8", False, ""), 92: ("BGRX8", False, ""), 93: ("BGRX8", True, ""),
    60: ("R8", False, ""), 61: ("R8", False, ""),
    48: ("RG8", False, ""), 49: ("RG8", False, ""),
    53: ("R16", False, ""), 56: ("R16", False, ""),
    9: ("RGBA16F", False, ""), 10: ("RGBA16F", False, ""),
    1: ("RGBA32F", False, ""), 2: ("RGBA32F", False, ""),
}  # fmt: skip
_DXGI_SIGNED = {81: "BC4_SNORM", 84: "BC5_SNORM", 31: "R8G8B8A8_SNORM", 63: "R8_SNORM", 51: "R8G8_SNORM"}
_FOURCC: dict[bytes, str] = {b"DXT1": "BC1", b"DXT3": "BC2", b"DXT5": "BC3", b"ATI1": "BC4", b"BC4U": "BC4"}
_FOURCC.update({b"ATI2": "BC5", b"BC5U": "BC5"})
_FOURCC_NUMBER = {113: "RGBA16F", 116: "RGBA32F"}
_FOURCC_REFUSED = {
    b"DXT2": "premultiplied-alpha DXT2",
    b"DXT4": "premultiplied-alpha DXT4",
    b"BC4S": "signed BC4",
    b"BC5S": "signed BC5",
}


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    levels: int
    layout: Layout
    decode_as: str
    srgb: bool
    dx10: bool
    opaque: bool
    data_offset: int


def _fourcc_text(code: bytes) -> str:
    text = code.decode("latin-1")
    return repr(text) if text.isprintable() else f"0x{int.from_bytes(code, 'little'):08x}"


def _legacy_layout(path: Path, pf_flags: int, fourcc: bytes, bits: int, masks: tuple[int, ...]) -> str:
    if pf_flags & _DDPF_FOURCC:
        if fourcc in _FOURCC:
            return _FOURCC[fourcc]
        if fourcc in _FOURCC_REFUSED:
            raise ImageReadError(path, f"{_FOURCC_REFUSED[fourcc]} DDS files are not supported")
        number = int.from_bytes(fourcc, "little")
        if number in _FOURCC_NUMBER:
            return _FOURCC_NUMBER[number]
        raise ImageReadError(path, f"unsupported DDS pixel format (FourCC {_fourcc_text(fourcc)})")
    if pf_flags & _DDPF_LUMINANCE and not pf_flags & _DDPF_ALPHAPIXELS and bits in (8, 16):
        return "R8" if bits == 8 else "R16"  # one channel fills the pixel, whatever the mask says (Pillow: 0xff000000)
    for name, layout in _LAYOUTS.items():
        if layout.masks is None:
            continue
        kind, want_bits, *want_masks = layout.masks
        if bits != want_bits or not pf_flags & kind & (_DDPF_RGB | _DDPF_LUMINANCE):
            continue
        has_alpha = bool(pf_flags & _DDPF_ALPHAPIXELS) and masks[3] != 0
        if tuple(masks[:3]) == tuple(want_masks[:3]) and (masks[3] if has_alpha else 0) == want_masks[3]:
            return name
    shown = ", ".join(f"0x{m:x}" for m in masks)
    return _refuse_masks(path, pf_flags, bits, shown)


def _refuse_masks(path: Path, pf_flags: int, bits: int, shown: str) -> str:
    kind = "luminance" if pf_flags & _DDPF_LUMINANCE else "alpha-only" if pf_flags & _DDPF_ALPHA else "RGB"
    raise ImageReadError(path, f"unsupported uncompressed DDS pixel format ({kind}, {bits} bits, masks {shown})")


def _parse(path: Path, head: bytes, file_size: int) -> _Header:
    if len(head) < _HEADER:
        raise ImageReadError(path, f"truncated DDS header ({len(head)} bytes; a DDS header is {_HEADER})")
    (size, flags, height, width, _pitch, depth, mip_count) = struct.unpack_from("<7I", head, 4)
    if size != 124:
        raise ImageReadError(path, f"corrupt DDS header (header size {size}, expected 124)")
    pf_size, pf_flags, fourcc, bits, r, g, b, a = struct.unpack_from("<II4sIIIII", head, 76)
    caps, caps2 = struct.unpack_from("<II", head, 108)
    if caps2 & _CAPS2_CUBEMAP:
        raise ImageReadError(path, "DDS cube maps are not supported (texup upscales 2D textures; export the faces)")
    if caps2 & _CAPS2_VOLUME or (flags & 0x800000 and depth > 1):
        raise ImageReadError(path, "DDS volume (3D) textures are not supported (texup upscales 2D textures)")
    check_dimensions(path, width, height)
    dx10 = bool(pf_flags & _DDPF_FOURCC) and fourcc == b"DX10"
    srgb = opaque = False
    if dx10:
        if len(head) < _HEADER + _DX10:
            raise ImageReadError(path, "truncated DDS header (the DX10 extension is missing)")
        dxgi, dimension, misc, array_size, misc2 = struct.unpack_from("<5I", head, _HEADER)
        if dimension != _DX10_TEXTURE2D:
            kinds = {2: "1D", 4: "volume (3D)"}
            raise ImageReadError(
                path, f"DDS {kinds.get(dimension, f'resource dimension {dimension}')} textures are not supported"
            )
        if misc & _DX10_MISC_CUBE:
            raise ImageReadError(path, "DDS cube maps are not supported (texup upscales 2D textures; export the faces)")
        if array_size > 1:  # 0 is written by some tools (Pillow) for a single texture
            raise ImageReadError(path, f"DDS texture arrays are not supported (this one holds {array_size} textures)")
        if dxgi in _DXGI_SIGNED:
            raise ImageReadError(path, f"signed DDS formats are not supported ({_DXGI_SIGNED[dxgi]})")
        if dxgi not in _DXGI:
            raise ImageReadError(path, f"unsupported DDS pixel format (DXGI format {dxgi})")
        name, srgb, decode_as = _DXGI[dxgi]
        opaque = (misc2 & 0x7) == _ALPHA_MODE_OPAQUE
        offset = _HEADER + _DX10
    else:
        if pf_size != 32:
            raise ImageReadError(path, f"corrupt DDS header (pixel format size {pf_size}, expected 32)")
        name = _legacy_layout(path, pf_flags, fourcc, bits, (r, g, b, a))
        decode_as = name if _LAYOUTS[name].block else ""
        offset = _HEADER
    layout = _LAYOUTS[name]
    most = max(width, height).bit_length()
    levels = max(1, mip_count) if (flags & _DDSD_MIPMAPCOUNT or caps & _CAPS_MIPMAP or mip_count > 1) else 1
    if levels > most:
        raise ImageReadError(
            path, f"DDS header claims {levels} mip levels; a {width}x{height} texture has at most {most}"
        )
    top = layout.level_bytes(width, height)
    total = sum(layout.level_bytes(max(1, width >> i), max(1, height >> i)) for i in range(levels))
    held = file_size - offset
    if held < top:
        raise ImageReadError(
            path,
            f"truncated DDS data: a {width}x{height} {name} top level needs {top:,} bytes, "
            f"the file holds {max(held, 0):,}",
        )
    if held < total:
        raise ImageReadError(
            path, f"truncated DDS data: the header's {levels} mip levels need {total:,} bytes, the file holds {held:,}"
        )
    return _Header(width, height, levels, layout, decode_as, srgb, dx10, opaque, offset)


def _read_header(path: Path) -> tuple[_Header, int]:
    with open(path, "rb") as fh:
        head = fh.read(_HEADER + _DX10)
        size = fh.seek(0, 2)
    if not head.startswith(_MAGIC):
        raise ImageReadError(path, "not a DDS file (no 'DDS ' signature)")
    return _parse(path, head, size), size


def _channels(header: _Header) -> int:
    if header.opaque and header.layout.channels == 4 and header.layout.dtype == "uint8":
        return 3
    return header.layout.channels


def probe(path: Path, max_pixels: int | None) -> ImageInfo:
    header, _ = _read_header(path)
    check_limit(path, header.width, header.height, max_pixels)
    layout = header.layout
    return ImageInfo(
        path=path,
        format="dds",
        width=header.width,
        height=header.height,
        channels=_channels(header),
        dtype=layout.dtype,
        colorspace="linear" if layout.dtype.startswith("float") else "srgb",
        extra={
            "dds_format": layout.name.lower(),
            "dds_srgb": header.srgb,
            "dds_dx10": header.dx10,
            "dds_mipmaps": header.levels,
            "dds_normal": layout.normal,
        },
    )


def rebuild_z(xy: np.ndarray) -> np.ndarray:
    """(H, W, 2) uint8 X, Y of a unit normal (``v * 0.5 + 0.5``) -> (H, W, 3) uint8 with Z = sqrt(1 - x^2 - y^2)."""
    v = xy.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
    z = np.sqrt(np.clip(1.0 - (v * v).sum(axis=2), 0.0, 1.0))
    out = np.empty((*xy.shape[:2], 3), np.uint8)
    out[:, :, :2] = xy
    out[:, :, 2] = np.rint((z * 0.5 + 0.5) * 255)
    return out


def decode(path: Path, info: ImageInfo) -> np.ndarray:
    header, _ = _read_header(path)
    layout = header.layout
    with open(path, "rb") as fh:
        fh.seek(header.data_offset)
        data = fh.read(layout.level_bytes(header.width, header.height))
    w, h = header.width, header.height
    if layout.block:
        pixels = _bc.decode(data, header.decode_as, w, h)
        if header.decode_as == "BC6H_SF16" or pixels.dtype != np.uint8:
            pixels = pixels.astype(np.float16, copy=False)
    else:
        stored = np.dtype(layout.dtype).newbyteorder("<")
        pixels = np.frombuffer(data, stored).reshape(h, w, layout.pixel // stored.itemsize)
        if layout.name in ("BGRA8", "BGRX8", "BGR8"):
            pixels = pixels[:, :, [2, 1, 0, 3][: 4 if layout.name == "BGRA8" else 3]]
        pixels = pixels.astype(layout.dtype)
    if layout.normal:
        pixels = rebuild_z(pixels[:, :, :2])
    return np.ascontiguousarray(pixels[:, :, : info.channels])


# --- writing ------------------------------------------------------------------------------------------------------


def _choose(path: Path, pixels: np.ndarray, extra: dict[str, Any], dds_format: str | None) -> Layout:
    try:
        asked = chosen_dds_format(dds_format) or extra.get("dds_format")
    except ValueError as err:
        raise ImageWriteError(path, str(err)) from None
    if asked:
        name = str(asked).upper()
        if name not in _LAYOUTS:
            raise ImageWriteError(path, f"unknown DDS format {asked!r} (choose from: {', '.join(DDS_FORMATS)})")
        return _LAYOUTS[name]
    dtype, channels = pixels.dtype.name, pixels.shape[2]
    if dtype.startswith("float"):
        if channels not in (1, 3):
            return _LAYOUTS["RGBA16F"]
        return _LAYOUTS["BC6H_SF16" if _least(pixels) < 0 else "BC6H"]
    if channels == 1:
        return _LAYOUTS["R16" if dtype == "uint16" else "BC4"]
    return _LAYOUTS["BC7"]


def _least(pixels: np.ndarray) -> float:
    """The smallest colour sample of a float image (NaN ignored; 0 for an image of NaN)."""
    colour = pixels[:, :, : min(3, pixels.shape[2])]
    return float(np.nanmin(colour)) if not np.isnan(colour).all() else 0.0


def _refuse_negative(path: Path, pixels: np.ndarray, layout: Layout) -> None:
    """BC6H_UF16 has no sign: an image with negative samples is refused rather than clipped at 0."""
    if layout.name != "BC6H" or pixels.dtype.kind != "f":
        return
    least = _least(pixels)
    if least < 0:
        raise ImageWriteError(
            path,
            f"DDS BC6H (unsigned) cannot store negative values (this image goes down to {least:.4g}); "
            "use --dds-format bc6h_sf16, rgba16f or rgba32f",
        )


def _to_float(path: Path, pixels: np.ndarray, layout: Layout) -> np.ndarray:
    """The samples as float32 in the target's terms: 0..1 for the integer formats, as stored for the float ones."""
    is_float = pixels.dtype.kind == "f"
    if is_float != layout.dtype.startswith("float"):
        want = "float (linear) samples" if layout.dtype.startswith("float") else "integer samples"
        fits = "bc6h, rgba16f or rgba32f" if is_float else "bc1-bc5, bc7, rgba8, bgra8, bgrx8, r8, rg8 or r16"
        raise ImageWriteError(
            path, f"DDS {layout.name} stores {want}; this image has {pixels.dtype} samples (use --dds-format {fits})"
        )
    if is_float:
        return pixels.astype(np.float32)
    return pixels.astype(np.float32) * np.float32(1.0 / np.iinfo(pixels.dtype).max)


def _fit_channels(path: Path, x: np.ndarray, layout: Layout) -> np.ndarray:
    """(H, W, C) float32 -> the target's channels: RGBA (gray expanded, alpha 1 when absent), RGB, one channel (the
    first: red or gray), or a normal map's XYZ (3 or 4 channels needed)."""
    h, w, c = x.shape
    want = layout.channels
    if layout.normal:
        if c < 3:
            raise ImageWriteError(
                path, f"DDS {layout.name} stores a normal map's X and Y; this image has {c} channel(s)"
            )
        return x[:, :, :3]
    if want == 1:
        return x[:, :, :1]
    out = np.empty((h, w, want), np.float32)
    out[:, :, :3] = x[:, :, :3] if c >= 3 else x[:, :, :1]
    if want == 4:
        out[:, :, 3] = x[:, :, -1] if c in (2, 4) else 1.0
    return out


def _normalise(xyz: np.ndarray) -> np.ndarray:
    """Encoded normals (``v * 0.5 + 0.5``) renormalised to unit length; (0, 0, 0) becomes (0, 0, 1)."""
    v = xyz * 2.0 - 1.0
    length = np.sqrt((v * v).sum(axis=2, keepdims=True))
    flat = length[:, :, 0] < 1e-6
    v /= np.maximum(length, 1e-6)
    v[flat] = (0.0, 0.0, 1.0)
    return np.asarray(v * 0.5 + 0.5, np.float32)


def _half_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """Halve one axis with a box filter (``n // 2``, at least 1); an odd length spreads 2 + 1/m pixels per output."""
    n = x.shape[axis]
    if n == 1:
        return x
    m = n // 2
    x = np.moveaxis(x, axis, 0)
    if n % 2 == 0:
        out = (x[0::2] + x[1::2]) * 0.5
    else:
        i = np.arange(m, dtype=np.float32)
        shape = (m,) + (1,) * (x.ndim - 1)
        w0 = (1.0 - i / m).reshape(shape)
        w2 = ((i + 1) / m).reshape(shape)
        out = (x[0 : 2 * m : 2] * w0 + x[1 : 2 * m : 2] + x[2 : 2 * m + 1 : 2] * w2) * np.float32(m / n)
    return np.moveaxis(out.astype(np.float32), 0, axis)


def _keep_coverage(alpha: np.ndarray, coverage: float) -> np.ndarray:
    """``alpha`` scaled so that the share of pixels at or above 0.5 is as close as possible to ``coverage``."""
    lo, hi = 0.0, 4.0
    for _ in range(12):
        mid = (lo + hi) / 2
        if float(np.mean(alpha * mid >= 0.5)) < coverage:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda s: abs(float(np.mean(alpha * s >= 0.5)) - coverage))
    return np.clip(alpha * np.float32(best), 0.0, 1.0)


def _levels_from(work: np.ndarray, count: int, *, srgb: bool, normal: bool, coverage: float | None) -> list[np.ndarray]:
    """``count`` mip levels: ``work`` itself (colour in linear light when ``srgb``), then each a box filter of the
    one before; each back in the stored encoding, normals renormalised, cut-out alpha at ``coverage``."""
    levels = []
    for index in range(count):
        if index:
            work = _half_axis(_half_axis(work, 0), 1)
        levels.append(_finish(work, srgb=srgb, normal=normal, coverage=coverage))
    return levels


def _finish(work: np.ndarray, *, srgb: bool, normal: bool, coverage: float | None) -> np.ndarray:
    level = work.copy()
    colour = min(3, level.shape[2])
    if srgb:
        level[:, :, :colour] = linear_to_srgb(level[:, :, :colour])
    if normal:
        level[:, :, :3] = _normalise(level[:, :, :3])
    if coverage is not None:
        level[:, :, 3] = _keep_coverage(level[:, :, 3], coverage)
    return level


def mip_chain(top: np.ndarray, levels: int, *, srgb: bool, normal: bool, cutout: bool) -> list[np.ndarray]:
    """``levels`` float32 levels from ``top`` (0..1 or float values): each a box filter of the one above, colour in
    linear light when ``srgb``, normals renormalised, cut-out alpha (the last of 2 or 4 channels) at the top
    level's coverage. (The writer makes the same levels without a float copy of the whole top level.)"""
    coverage = float(np.mean(top[:, :, 3] >= 0.5)) if cutout and top.shape[2] == 4 else None
    work = top.copy()
    if srgb:
        work[:, :, : min(3, work.shape[2])] = srgb_to_linear(work[:, :, : min(3, work.shape[2])])
    if levels < 2:
        return [top]
    first = _half_axis(_half_axis(work, 0), 1)
    return [top, *_levels_from(first, levels - 1, srgb=srgb, normal=normal, coverage=coverage)]


def _pad4(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    ph, pw = -(-h // 4) * 4 - h, -(-w // 4) * 4 - w
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(x)


def _quantise(level: np.ndarray, layout: Layout) -> np.ndarray:
    """Float32 samples (0..1 for the integer formats) in the format's sample type."""
    if layout.dtype.startswith("float"):
        return level.astype(layout.dtype)
    top = np.iinfo(layout.dtype).max
    return np.rint(np.clip(level, 0.0, 1.0) * top).astype(layout.dtype)


def _encode_stored(values: np.ndarray, layout: Layout) -> bytes:
    """One level in the format's sample type and channels -> the format's bytes."""
    if layout.block:
        stored = values[:, :, :2] if layout.normal else values
        return _bc.ENCODERS[layout.name](_pad4(np.ascontiguousarray(stored)))
    if layout.normal:
        values = values[:, :, :2]
    elif layout.name in ("BGRA8", "BGRX8", "BGR8"):
        values = values[:, :, [2, 1, 0, 3][: values.shape[2]]]
        if layout.name == "BGRX8":
            values = np.concatenate([values, np.full((*values.shape[:2], 1), 255, np.uint8)], axis=2)
    elif layout.name == "RGBA8" and values.shape[2] == 3:
        values = np.concatenate([values, np.full((*values.shape[:2], 1), 255, np.uint8)], axis=2)
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def _header(layout: Layout, width: int, height: int, levels: int, srgb: bool, dx10: bool) -> bytes:
    flags = _DDSD_CAPS | _DDSD_HEIGHT | _DDSD_WIDTH | _DDSD_PIXELFORMAT
    flags |= _DDSD_LINEARSIZE if layout.block else _DDSD_PITCH
    pitch = layout.level_bytes(width, height) if layout.block else width * layout.pixel
    caps = _CAPS_TEXTURE
    if levels > 1:
        flags |= _DDSD_MIPMAPCOUNT
        caps |= _CAPS_COMPLEX | _CAPS_MIPMAP
    dxgi = layout.dxgi_srgb if srgb and layout.dxgi_srgb is not None else layout.dxgi
    legacy = layout.fourcc is not None or layout.masks is not None
    use_dx10 = dxgi is not None and (dx10 or not legacy or (srgb and layout.dxgi_srgb is not None))
    pf_masks = (0, 0, 0, 0)
    bits = 0
    if use_dx10:
        pf_flags, fourcc = _DDPF_FOURCC, b"DX10"
    elif layout.fourcc is not None:
        pf_flags = _DDPF_FOURCC
        fourcc = layout.fourcc if isinstance(layout.fourcc, bytes) else struct.pack("<I", layout.fourcc)
    else:
        assert layout.masks is not None
        pf_flags, bits, *masks = layout.masks
        pf_masks = (masks[0], masks[1], masks[2], masks[3])
        fourcc = b"\0\0\0\0"
    head = _MAGIC + struct.pack("<7I", 124, flags, height, width, pitch, 0, levels) + bytes(44)
    head += struct.pack("<II4sIIIII", 32, pf_flags, fourcc, bits, *pf_masks)
    head += struct.pack("<5I", caps, 0, 0, 0, 0)
    if use_dx10:
        assert dxgi is not None
        head += struct.pack("<5I", dxgi, _DX10_TEXTURE2D, 0, 1, 0)
    return head


def encode(
    target: Path, pixels: np.ndarray, extra: dict[str, Any], *, dds_format: str | None = None, role: str | None = None
) -> None:
    """Write ``pixels`` (H, W, C) as a DDS texture (format, mips and sRGB flag as the module docstring says):
    ``dds_format`` (else ``TEXUP_DDS_FORMAT``, else ``extra["dds_format"]``, else chosen from the samples);
    ``role`` "normal" (texup's role policy) renormalises every level as a BC5 normal map's are."""
    layout = _choose(target, pixels, extra, dds_format)
    _refuse_negative(target, pixels, layout)
    height, width, channels = pixels.shape
    # Cut-out alpha: BC1's 1 bit, or an alpha that is a mask, not a blend: at most a quarter of its pixels between
    # 5 % and 95 % (an upscaled mask is soft only along its edges; glass, smoke and fades are soft throughout).
    cutout = channels in (2, 4) and layout.channels == 4
    if cutout and layout.name != "BC1":
        alpha = pixels[:, :, -1]
        top = 1.0 if pixels.dtype.kind == "f" else float(np.iinfo(pixels.dtype).max)
        soft = np.count_nonzero((alpha > 0.05 * top) & (alpha < 0.95 * top))
        cutout = bool(soft <= alpha.size // 4)
    normal = layout.normal or bool(extra.get("dds_normal")) or role == "normal"
    normal = normal and layout.channels >= 3
    srgb = bool(extra.get("dds_srgb")) and layout.dxgi_srgb is not None
    full = max(width, height).bit_length()
    levels = full if int(extra.get("dds_mipmaps", full)) > 1 else 1
    # The top level is prepared in bands of rows (float32 only for a band: an 8K texture's float copy would be
    # 0.5-1 GB), and the band's half-size box filter is the first mip level's; an odd height is one band (its
    # filter spans more than two rows).
    stored = np.empty((height, width, layout.channels), layout.dtype)
    step = _BAND_ROWS if height % 2 == 0 or levels == 1 else height
    halves, covered = [], 0
    for row in range(0, height, step):
        band = _fit_channels(target, _to_float(target, pixels[row : row + step], layout), layout)
        if normal:
            band[:, :, :3] = _normalise(band[:, :, :3])
        stored[row : row + step] = _quantise(band, layout)
        if cutout:
            covered += int(np.count_nonzero(band[:, :, 3] >= 0.5))
        if levels > 1:
            if srgb:
                band[:, :, :3] = srgb_to_linear(band[:, :, :3])
            halves.append(_half_axis(_half_axis(band, 0), 1))
        del band
    coverage = covered / (width * height) if cutout else None
    below = []
    if halves:
        below = _levels_from(np.concatenate(halves), levels - 1, srgb=srgb, normal=normal, coverage=coverage)
    del halves
    with open(target, "wb") as fh:
        fh.write(_header(layout, width, height, levels, srgb, bool(extra.get("dds_dx10"))))
        fh.write(_encode_stored(stored, layout))
        del stored
        for level in below:
            fh.write(_encode_stored(_quantise(level, layout), layout))
