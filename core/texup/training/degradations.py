"""Making the low-resolution input from a high-resolution crop, on the fly.

Both functions take ``hr``: a (3, H, W) float32 CPU tensor in [0, 1] (sRGB) with H and W multiples
of ``scale``, and return the (3, H / scale, W / scale) float32 LR image in [0, 1].

* :func:`bicubic_downscale` — antialiased bicubic, deterministic (ESRGAN's setting).
* :func:`realesrgan_degrade` — a Real-ESRGAN-style pipeline: Gaussian blur (isotropic or anisotropic,
  rotated), a random resize, Gaussian or Poisson noise (colour or gray), JPEG compression (Pillow,
  in memory), a final resize to the LR size and 8-bit quantisation. Every random choice comes from
  the ``numpy.random.Generator`` passed in, so a seeded generator gives the same LR every time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling by ``scale``, clamped to [0, 1]."""
    _check(hr, scale)
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    lr = F.interpolate(hr[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0]
    return lr.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class DegradationParams:
    """Ranges of the Real-ESRGAN-style pipeline (defaults follow Real-ESRGAN's first order)."""

    blur_kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_anisotropic_prob: float = 0.5
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # in 8-bit levels
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


_MODES = ("area", "bilinear", "bicubic")


def _check(hr: torch.Tensor, scale: int) -> None:
    if hr.ndim != 3 or hr.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(hr.shape)}")
    if scale < 1 or hr.shape[-2] % scale or hr.shape[-1] % scale:
        raise ValueError(f"H and W ({hr.shape[-2]}x{hr.shape[-1]}) must be multiples of the scale {scale}")


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """A normalised (size, size) float32 Gaussian with axis sigmas and rotation ``angle`` (radians)."""
    half = (size - 1) / 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * xs + sin * ys
    v = -sin * xs + cos * ys
    kernel = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def _blur(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    k = torch.from_numpy(kernel)[None, None].expand(3, 1, *kernel.shape)
    pad = kernel.shape[0] // 2
    padded = F.pad(img[None], (pad, pad, pad, pad), mode="reflect" if min(img.shape[-2:]) > pad else "replicate")
    return F.conv2d(padded, k, groups=3)[0]


def _resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    kwargs = {} if mode == "area" else {"align_corners": False, "antialias": True}
    return F.interpolate(img[None], size=size, mode=mode, **kwargs)[0]


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


def realesrgan_degrade(
    hr: torch.Tensor, scale: int, rng: np.random.Generator, params: DegradationParams = DegradationParams()
) -> torch.Tensor:
    """Blur -> random resize -> noise -> JPEG -> resize to (H / scale, W / scale) -> 8-bit levels."""
    _check(hr, scale)
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    img = hr.float()

    size = int(rng.choice(params.blur_kernel_sizes))
    sx = float(rng.uniform(*params.blur_sigma))
    if rng.random() < params.blur_anisotropic_prob:
        sy, angle = float(rng.uniform(*params.blur_sigma)), float(rng.uniform(-np.pi, np.pi))
    else:
        sy, angle = sx, 0.0
    img = _blur(img, gaussian_kernel(size, sx, sy, angle))

    kind = rng.choice(3, p=np.asarray(params.resize_probs) / sum(params.resize_probs))
    factor = (
        float(rng.uniform(1.0, params.resize_range[1]))
        if kind == 0
        else (float(rng.uniform(params.resize_range[0], 1.0)) if kind == 1 else 1.0)
    )
    mode = _MODES[int(rng.integers(len(_MODES)))]
    mid = (max(1, round(hr.shape[-2] * factor)), max(1, round(hr.shape[-1] * factor)))
    img = _resize(img, mid, mode)

    gray = rng.random() < params.gray_noise_prob
    shape = (1, *img.shape[-2:]) if gray else tuple(img.shape)
    if rng.random() < params.gaussian_noise_prob:
        sigma = float(rng.uniform(*params.noise_sigma)) / 255.0
        noise = rng.standard_normal(shape).astype(np.float32) * sigma
        img = img + torch.from_numpy(noise)
    else:
        vals = float(10 ** rng.uniform(np.log10(params.poisson_scale[0]), np.log10(params.poisson_scale[1])))
        base = img.clamp(0, 1).numpy()
        if gray:
            base = (base * np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]).sum(0, keepdims=True)
        levels = 255.0 * vals
        noisy = rng.poisson(base * levels).astype(np.float32) / levels
        img = img + torch.from_numpy(noisy - base)
    img = img.clamp(0.0, 1.0)

    img = _jpeg(img, int(rng.integers(params.jpeg_quality[0], params.jpeg_quality[1] + 1)))

    mode = _MODES[int(rng.integers(len(_MODES)))]
    img = _resize(img, (h, w), mode)
    return (img.clamp(0.0, 1.0) * 255.0).round() / 255.0


__all__ = ["DegradationParams", "bicubic_downscale", "gaussian_kernel", "realesrgan_degrade"]
