#!/usr/bin/env python3
"""Make README's before/after crop: bicubic vs texup's default model on a real photo.

A crop of a real photo (scikit-image's coffee.png, CC0) is shrunk 4x (antialiased), then brought back
to full size by bicubic interpolation and by texup (realesrgan-x4plus). The figure shows, left to right:
the small input (nearest-neighbour, so its pixels are visible), bicubic, texup, and the original.
Prints PSNR against the original and a sharpness figure (mean gradient magnitude) for both.

    python scripts/make_readme_figure.py [--out docs/images/before_after.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from realdata import real_image  # noqa: E402

import texup  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def sharpness(a: np.ndarray) -> float:
    g = a.astype(np.float64).mean(axis=2)
    return float(np.mean(np.hypot(np.diff(g, axis=0)[:, :-1], np.diff(g, axis=1)[:-1, :])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/before_after.png"))
    parser.add_argument("--model", default="realesrgan-x4plus")
    args = parser.parse_args()

    original = real_image("coffee.png", crop=(60, 180, 192, 192))
    small = np.asarray(Image.fromarray(original).resize((48, 48), Image.Resampling.BOX))
    bicubic = np.asarray(Image.fromarray(small).resize((192, 192), Image.Resampling.BICUBIC))
    upscaled = texup.upscale_array(small, model=args.model)
    nearest = np.asarray(Image.fromarray(small).resize((192, 192), Image.Resampling.NEAREST))

    gap = np.full((192, 6, 3), 255, np.uint8)
    figure = np.concatenate([nearest, gap, bicubic, gap, upscaled, gap, original], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).save(args.out, optimize=True)

    print(f"wrote {args.out}  (input 48x48 -> 192x192; panels: input, bicubic, texup {args.model}, original)")
    print(f"PSNR vs original:  bicubic {psnr(bicubic, original):.2f} dB   texup {psnr(upscaled, original):.2f} dB")
    print(
        f"sharpness (mean gradient):  bicubic {sharpness(bicubic):.2f}   texup {sharpness(upscaled):.2f}   "
        f"original {sharpness(original):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
