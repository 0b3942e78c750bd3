"""Texture-grade image I/O: read and write PNG (8/16-bit), JPEG, TGA, TIFF (8/16-bit, float), BMP,
WebP, OpenEXR (half/float) and DDS (BC1-BC7, uncompressed; mips written) with bit depth, channels and colour space
taken from the file.

Images are numpy ``(H, W, C)`` arrays (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; straight alpha)
plus an :class:`ImageInfo` describing how the file stored them, so a result can be written back
the same way (``write_image(out, pixels, like=image.info)``). This package does not import torch.
"""

from __future__ import annotations

from ._dds import DDS_FORMATS, ENV_DDS_FORMAT, chosen_dds_format
from .convert import from_float32, linear_to_srgb, srgb_to_linear, to_float32
from .read import DEFAULT_MAX_PIXELS, probe_image, read_image
from .types import (
    FORMATS,
    SUPPORTED_EXTENSIONS,
    Dtype,
    Image,
    ImageInfo,
    extension_for,
    format_for_path,
)
from .write import FORMAT_DTYPES, write_image

__all__ = [
    "DDS_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ENV_DDS_FORMAT",
    "FORMATS",
    "FORMAT_DTYPES",
    "SUPPORTED_EXTENSIONS",
    "Dtype",
    "Image",
    "ImageInfo",
    "chosen_dds_format",
    "extension_for",
    "format_for_path",
    "from_float32",
    "linear_to_srgb",
    "probe_image",
    "read_image",
    "srgb_to_linear",
    "to_float32",
    "write_image",
]
