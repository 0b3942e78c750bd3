#!/usr/bin/env python3
"""Write a few real sample textures to try texup on (from photos scikit-image ships, CC0).

    python scripts/make_samples.py samples/ && texup upscale samples/ -o upscaled/

Writes small crops in several kinds a texture library holds: an 8-bit RGB photo (JPEG), a gray
texture (PNG), a 16-bit RGBA texture with a soft alpha edge (PNG), and a tileable texture (TGA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from realdata import real_image  # noqa: E402

from texup.imageio import write_image  # noqa: E402


def sample_images() -> dict[str, np.ndarray]:
    """The samples as arrays, by file name (also the ground truth of scripts/bench_quality.py)."""
    photo = real_image("coffee.png", crop=(40, 160, 160, 200))
    gravel = real_image("gravel.png", crop=(100, 100, 128, 128))
    brick = real_image("brick.png", crop=(0, 0, 150, 150))[:, :, 0]
    rgb16 = (np.stack([brick, brick * 0.8, brick * 0.6], axis=2).astype(np.float64) * 257).astype(np.uint16)
    yy, xx = np.mgrid[0:150, 0:150]
    alpha = np.clip((60 - np.hypot(yy - 75, xx - 75)) / 15, 0, 1)
    rgba16 = np.concatenate([rgb16, (alpha * 65535).astype(np.uint16)[:, :, None]], axis=2)
    grass = real_image("grass.png", crop=(0, 0, 64, 64))
    tile = np.concatenate([grass, grass[::-1]], axis=0)
    tileable = np.repeat(np.concatenate([tile, tile[:, ::-1]], axis=1), 3, axis=2)

    return {
        "coffee.jpg": photo,
        "gravel.png": gravel,
        "brick_rgba16.png": rgba16,
        "grass_tileable.tga": tileable,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("samples"))
    args = parser.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    written = [write_image(out / name, pixels) for name, pixels in sample_images().items()]
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
