"""Measure issue 11 items 5 and 6: the HDR colour policy and seamless detection (CPU, about a minute).

HDR: a real photo as linear float (coffee.png, 64x64) with one pixel set to 4, 100, 1000 or 50000; PSNR (peak 1)
of its upscale against the upscale without that pixel, more than 24 input pixels away from it; also a plain
[0, 1] image against the previous policy. "previous" re-implements the old divide-by-maximum policy here.
Seamless: the score of tiling._seam_score (largest of both axes) over periodic textures and photos.

    python scripts/bench_hdr_seamless.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

from realdata import real_image  # noqa: E402
from test_seamless_detect import PERIODIC, PHOTOS  # noqa: E402

from texup.imageio import linear_to_srgb, srgb_to_linear  # noqa: E402
from texup.inference import policy, tiling  # noqa: E402
from texup.inference.pipeline import UpscaleOptions, Upscaler  # noqa: E402

NEW = policy.encode_for_model


def previous_policy(rgb, role, colorspace):
    """The policy before issue 11: the whole image divided by its maximum."""
    if role != "color":
        return NEW(rgb, role, colorspace)
    x = np.maximum(np.nan_to_num(rgb), 0.0)
    peak = max(float(x.max()), 1.0)
    x = x / np.float32(peak)
    x = np.clip(linear_to_srgb(x) if colorspace == "linear" else x, 0, 1)

    def decode(y, *_position):  # the pipeline also passes the block's output rows (HdrCurve's knees)
        return (srgb_to_linear(y) if colorspace == "linear" else y) * np.float32(peak)

    return x, decode


def psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def hdr() -> None:
    up = Upscaler("realesr-animevideov3", engine="torch", device="cpu", precision="fp32")
    s = up.engine.scale
    photo = srgb_to_linear(real_image("coffee.png", (100, 200, 64, 64)).astype(np.float32) / 255)
    options = UpscaleOptions(tile=96, seamless="off")
    mask = np.ones((64 * s, 64 * s), bool)
    mask[: 24 * s, : 24 * s] = False
    results = {}
    for name, encode in (("previous", previous_policy), ("tone curve", NEW)):
        policy.encode_for_model = encode
        clean = up.upscale_array(photo, options, colorspace="linear")
        row = []
        for peak in (4, 100, 1000, 50000):
            img = photo.copy()
            img[5, 5] = peak
            out = up.upscale_array(img, options, colorspace="linear")
            row.append(psnr(out[mask], clean[mask]))
        results[name] = (row, clean)
    policy.encode_for_model = NEW
    for name, (row, _) in results.items():
        print(
            f"HDR bright pixel, {name:10s}: "
            + ", ".join(f"peak {p}: {v:.1f} dB" for p, v in zip((4, 100, 1000, 50000), row))
        )
    print(
        f"plain [0, 1] image, tone curve vs previous: {psnr(results['tone curve'][1], results['previous'][1]):.1f} dB"
    )


def seamless() -> None:
    def score(img):
        img = img if img.ndim == 3 else img[:, :, None]
        return max(v for v in (tiling._seam_score(img), tiling._seam_score(img.transpose(1, 0, 2))) if v is not None)

    periodic = {k: score(f()) for k, f in PERIODIC.items()}
    photos = {k: score(f()) for k, f in PHOTOS.items()}
    print(
        f"seamless threshold {tiling._SEAM_THRESHOLD}: periodic max {max(periodic.values()):.3f} "
        f"({max(periodic, key=periodic.get)}), photos min {min(photos.values()):.3f} ({min(photos, key=photos.get)})"
    )


if __name__ == "__main__":
    hdr()
    seamless()
