"""texup: ESRGAN texture upscaling for Blender and asset pipelines.

The Python API mirrors the CLI::

    import texup
    model = texup.load_model("realesrgan-x4plus")          # a known name or a weights file
    out = texup.upscale_array(pixels, model=model, scale=2)  # (H, W, C) uint8/uint16/float16/float32 -> same C, dtype
    texup.upscale_file("wall.png", "wall_x4.png")            # same format and bit depth as the input

``import texup`` is cheap: torch and the model code are imported on first use of a name that needs them,
so a Blender add-on or a CLI's ``--help`` does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from texup._lazy import lazy_getattr

__version__ = "0.2.0"

# public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "load_model": "texup.api",
    "upscale_array": "texup.api",
    "upscale_file": "texup.api",
    "list_models": "texup.api",
    "blend_models": "texup.api",
    "detail_model": "texup.api",
    "Upscaler": "texup.inference.pipeline",
    "UpscaleOptions": "texup.inference.pipeline",
    "LoadedModel": "texup.weights",
    "save_model": "texup.weights",
    "read_image": "texup.imageio",
    "write_image": "texup.imageio",
    "probe_image": "texup.imageio",
    "Image": "texup.imageio",
    "ImageInfo": "texup.imageio",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from texup.api import blend_models, detail_model, list_models, load_model, upscale_array, upscale_file
    from texup.imageio import Image, ImageInfo, probe_image, read_image, write_image
    from texup.inference.pipeline import UpscaleOptions, Upscaler
    from texup.weights import LoadedModel, save_model


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
