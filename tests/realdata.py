"""Real photographs and textures for tests, read from the files scikit-image ships in its wheel.

The files are located without importing scikit-image (its import is slow and not needed here).
No test downloads anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image


def real_image_path(name: str) -> Path:
    """Path of a bundled sample, e.g. ``"coffee.png"`` (RGB photo), ``"gravel.png"`` (gray texture)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed: pip install -e '.[test]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def real_image(name: str, crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A bundled sample as a uint8 H×W×C array (C = 1 or 3), optionally cropped to (top, left, h, w)."""
    with Image.open(real_image_path(name)) as im:
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if crop is not None:
        top, left, h, w = crop
        arr = arr[top : top + h, left : left + w]
    return np.ascontiguousarray(arr)
