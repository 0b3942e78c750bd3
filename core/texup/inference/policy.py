"""Pixel policies around the model: what goes in, what comes out, per texture role (numpy only).

The model was trained on sRGB-encoded colour photographs in [0, 1]. Each role maps its pixels into that
domain with an exactly invertible transform (:func:`encode_for_model`) and maps the model's output back
(:class:`Decode`). Decided once, here:

* ``color`` + ``"srgb"``: values as they are. ``color`` + ``"linear"`` (EXR, linear TIFF): linear -> sRGB
  before the model, sRGB -> linear after. In both cases negative values are clipped to 0 (out-of-gamut
  colour has no meaning to the model), and an HDR image (maximum above 1) is divided by its maximum before
  encoding and multiplied back after, so highlights keep their energy instead of being clipped.
* ``normal``: tangent-space normals encoded as ``n * 0.5 + 0.5`` in [0, 1] (floats are clipped into it).
  The encoded RGB goes through the model; every output pixel is decoded to [-1, 1], renormalised to unit
  length and re-encoded. The handedness (OpenGL/DirectX Y) is kept: no channel is flipped. A vector that
  comes out as (0, 0, 0) becomes (0, 0, 1) (flat).
* ``data`` (roughness, height, masks...): no colour transform. Values already in [0, 1] go through
  unchanged; float data outside [0, 1] is mapped per channel by ``(v - lo) / (hi - lo)`` with
  ``lo = min(0, min)``, ``hi = max(1, max)`` and mapped back after, so its range survives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from texup.imageio import linear_to_srgb, srgb_to_linear

ROLES = ("color", "normal", "data")
COLORSPACES = ("srgb", "linear")


@dataclass(frozen=True)
class Decode:
    """How to turn the model's [0, 1] output back into the role's values (see the module docstring)."""

    role: str
    colorspace: str
    peak: float = 1.0  # colour: HDR images were divided by this
    lo: np.ndarray | None = None  # data: per-channel affine map back
    hi: np.ndarray | None = None

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """(h, w, 3) float32 model output in [0, 1] -> role values, float32 (modified in place when possible)."""
        if self.role == "normal":
            return renormalise_normals(y)
        if self.role == "data":
            if self.lo is not None and self.hi is not None:
                y *= (self.hi - self.lo).astype(np.float32)
                y += self.lo.astype(np.float32)
            return y
        if self.colorspace == "linear":
            y = srgb_to_linear(y)
        if self.peak != 1.0:
            y *= np.float32(self.peak)
        return y


def encode_for_model(rgb: np.ndarray, role: str, colorspace: str) -> tuple[np.ndarray, Decode]:
    """Map (H, W, 3) float32 role values into the model's sRGB [0, 1] domain; returns (encoded, decode).

    ``rgb`` comes from :func:`texup.imageio.to_float32` (integers scaled to [0, 1], floats as stored).
    NaN becomes 0 and +-inf the largest / smallest finite value, before the role's transform.
    The encoded array is new; ``rgb`` is not modified.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    if colorspace not in COLORSPACES:
        raise ValueError(f"unknown colour space {colorspace!r}: expected one of {', '.join(COLORSPACES)}")
    if not np.all(np.isfinite(rgb)):
        finite = rgb[np.isfinite(rgb)]
        top = float(finite.max()) if finite.size else 1.0
        bottom = float(finite.min()) if finite.size else 0.0
        rgb = np.nan_to_num(rgb, nan=0.0, posinf=top, neginf=bottom)
    if role == "normal":
        return np.clip(rgb, 0.0, 1.0), Decode(role, colorspace)
    if role == "data":
        lo = np.minimum(rgb.reshape(-1, 3).min(axis=0), 0.0).astype(np.float64)
        hi = np.maximum(rgb.reshape(-1, 3).max(axis=0), 1.0).astype(np.float64)
        if np.all(lo == 0.0) and np.all(hi == 1.0):
            return rgb.copy(), Decode(role, colorspace)
        encoded = ((rgb - lo.astype(np.float32)) / (hi - lo).astype(np.float32)).astype(np.float32)
        return np.clip(encoded, 0.0, 1.0), Decode(role, colorspace, lo=lo, hi=hi)
    x = np.maximum(rgb, 0.0)
    peak = float(x.max()) if x.size else 1.0
    peak = peak if np.isfinite(peak) and peak > 1.0 else 1.0
    if peak != 1.0:
        x /= np.float32(peak)
    if colorspace == "linear":
        x = linear_to_srgb(x)
    np.clip(x, 0.0, 1.0, out=x)  # x is always a new array here (np.maximum made it)
    return x, Decode(role, colorspace, peak=peak)


def renormalise_normals(encoded: np.ndarray) -> np.ndarray:
    """(h, w, 3) normals encoded in [0, 1] -> the same, each pixel re-encoded from a unit vector.

    Decodes ``v = 2 e - 1``, divides by the length and encodes ``v * 0.5 + 0.5``. Zero vectors become
    (0, 0, 1). Channel order and signs are kept (no Y flip).
    """
    v = encoded.astype(np.float32) * 2.0 - 1.0
    length = np.sqrt(np.einsum("...c,...c->...", v, v))
    flat = length < 1e-6
    if np.any(flat):
        v[flat] = (0.0, 0.0, 1.0)
        length[flat] = 1.0
    v /= length[..., None]
    v *= 0.5
    v += 0.5
    return v


def is_constant(channel: np.ndarray) -> bool:
    """Whether every value of an array is equal (a constant alpha channel is passed through, not upscaled)."""
    return channel.size == 0 or bool(np.all(channel == channel.flat[0]))


def bleed_colour(rgb: np.ndarray, alpha: np.ndarray, *, max_levels: int = 32) -> np.ndarray:
    """Fill the colour under fully transparent pixels from their visible neighbours (push-pull).

    ``rgb``: (H, W, C) float32; ``alpha``: (H, W) float in [0, 1]. Pixels with alpha > 0 keep their colour
    exactly; each pixel with alpha == 0 gets the alpha-weighted average colour of the nearest visible
    region, found on an image pyramid (2x2 sums going down, nearest-neighbour fill going up), so large
    holes are filled in O(H W) with no iteration count to tune. Without this the black (or arbitrary)
    colour that editors store under alpha 0 leaks into visible pixels when the model and the resampler
    mix neighbours, and shows as a dark halo around cut-outs.

    Returns a new array; an image with no transparent pixels, or no visible ones, is returned as a copy.
    """
    weight = np.where(alpha > 0, alpha, 0.0).astype(np.float32)
    holes = weight == 0
    if not np.any(holes) or np.all(holes):
        return rgb.copy()
    levels_c = [rgb * weight[..., None]]
    levels_w = [weight]
    while min(levels_w[-1].shape) > 1 and len(levels_w) < max_levels and np.any(levels_w[-1] == 0):
        c, w = levels_c[-1], levels_w[-1]
        h, wd = w.shape
        ph, pw = h % 2, wd % 2
        if ph or pw:
            c = np.pad(c, ((0, ph), (0, pw), (0, 0)))
            w = np.pad(w, ((0, ph), (0, pw)))
        levels_c.append(c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2])
        levels_w.append(w[0::2, 0::2] + w[1::2, 0::2] + w[0::2, 1::2] + w[1::2, 1::2])
    # Coarsest level: average of what is known there (if still holes, they take the global mean).
    c, w = levels_c[-1], levels_w[-1]
    known = w > 0
    fill = np.empty_like(c)
    fill[known] = c[known] / w[known][:, None]
    if not np.all(known):
        fill[~known] = c[known].sum(axis=0) / w[known].sum()
    for c, w in zip(reversed(levels_c[:-1]), reversed(levels_w[:-1])):
        h, wd = w.shape
        up = np.repeat(np.repeat(fill, 2, axis=0), 2, axis=1)[:h, :wd]
        known = w > 0
        fill = up
        fill[known] = c[known] / w[known][:, None]
    out = fill
    out[~holes] = rgb[~holes]
    return out
