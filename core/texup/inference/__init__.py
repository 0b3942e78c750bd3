"""Tiled inference: image in, image out.

* :mod:`~texup.inference.tiling` — tile grid, blend weights, wrap-around, seamless detection (numpy only);
* :mod:`~texup.inference.policy` — role, colour-space and alpha policies (numpy only);
* :mod:`~texup.inference.resample` — antialiased cubic resampling with periodic borders (numpy only);
* :mod:`~texup.inference.pipeline` — :class:`Upscaler` and :class:`UpscaleOptions` (numpy; the network runs
  in an engine, :mod:`texup.engines`).

Nothing here imports torch or ncnn; the engine an Upscaler opens does.
"""

from __future__ import annotations

from texup._lazy import lazy_getattr
from texup.inference.tiling import Tile, blend_weights, is_tileable, plan_tiles

_LAZY = {
    "Upscaler": "texup.inference.pipeline",
    "UpscaleOptions": "texup.inference.pipeline",
    "Cancelled": "texup.inference.pipeline",
    "TileOutOfMemoryError": "texup.inference.pipeline",
}

__all__ = ["Tile", "blend_weights", "is_tileable", "plan_tiles", *_LAZY]


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
