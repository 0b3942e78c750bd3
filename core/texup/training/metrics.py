"""Validation metrics and the before/after sample grid.

Both metrics take (N, 3, H, W) float tensors in [0, 1] (sRGB) of the same shape; the prediction is
clamped to [0, 1] first, as it would be when written to an 8-bit file.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (peak 1.0); ``inf`` when equal."""
    mse = F.mse_loss(pred.float().clamp(0, 1), target.float()).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).float()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, data range 1), per channel, over the valid (unpadded) region. Images must be >= 11 px."""
    x, y = pred.float().clamp(0, 1), target.float()
    c = x.shape[1]
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {tuple(x.shape[-2:])}")
    w = _gaussian_window().to(x.device).expand(c, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean().item())


def sample_grid(rows: list[tuple[torch.Tensor, ...]], gap: int = 4) -> np.ndarray:
    """An (H, W, 3) uint8 image: one row per item, its (3, h, w) panels side by side, padded to the
    tallest panel of the row, with ``gap`` pixels of mid-gray between panels and rows."""
    rendered = []
    for panels in rows:
        arrays = [
            (p.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            for p in panels
        ]
        height = max(a.shape[0] for a in arrays)
        parts = []
        for a in arrays:
            padded = np.full((height, a.shape[1], 3), 128, np.uint8)
            padded[: a.shape[0]] = a
            parts += [padded, np.full((height, gap, 3), 128, np.uint8)]
        rendered.append(np.concatenate(parts[:-1], axis=1))
    width = max(r.shape[1] for r in rendered)
    out = []
    for r in rendered:
        padded = np.full((r.shape[0], width, 3), 128, np.uint8)
        padded[:, : r.shape[1]] = r
        out += [padded, np.full((gap, width, 3), 128, np.uint8)]
    return np.ascontiguousarray(np.concatenate(out[:-1], axis=0))


__all__ = ["psnr", "sample_grid", "ssim"]
