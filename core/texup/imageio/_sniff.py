"""Recognise an image file by its first bytes (the suffix only decides for TGA, which has no signature)."""

from __future__ import annotations

from pathlib import Path

HEAD_BYTES = 32

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXR_MAGIC = b"\x76\x2f\x31\x01"
_TGA_FOOTER = b"TRUEVISION-XFILE.\x00"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff_format(head: bytes, path: Path, tail: bytes = b"") -> str | None:
    """The texup format name of a file starting with ``head`` and ending with ``tail`` (its last
    18 bytes), or None when it is not one texup reads.

    TGA files carry no signature at the start: a file with the TGA 2.0 footer, or with the
    ``.tga`` suffix and none of the other signatures, is taken as TGA (its header is then
    checked by the decoder).
    """
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_EXR_MAGIC):
        return "exr"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head.startswith(b"DDS "):
        return "dds"
    if tail == _TGA_FOOTER or (path.suffix.lower() == ".tga" and len(head) >= 18):
        return "tga"
    return None


def describe_unknown(head: bytes) -> str:
    """A one-line reason for a file whose signature was not recognised."""
    known = {
        b"GIF8": "GIF",
        b"8BPS": "Photoshop PSD",
        b"\x00\x00\x01\x00": "ICO",
        b"\xabKTX": "KTX",
        b"%PDF": "PDF",
        b"PK\x03\x04": "ZIP archive",
    }
    for magic, name in known.items():
        if head.startswith(magic):
            return f"{name} files are not supported (supported: PNG, JPEG, TGA, TIFF, BMP, WebP, EXR, DDS)"
    if head[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "AVIF/HEIF files are not supported (supported: PNG, JPEG, TGA, TIFF, BMP, WebP, EXR, DDS)"
    return "not an image file (unknown format)"
