"""Training data from a texture library folder.

* :func:`scan_textures` finds every image texup reads, recursively.
* :func:`split_files` holds out a validation share, chosen by a hash of each file's relative path
  (stable when files are added or the folder moves).
* :func:`load_textures` decodes each file once into an RGB :class:`Texture`; files that cannot be
  used are reported once through a callback and skipped.
* :class:`CropDataset` turns a *global sample index* into one (LR, HR) training pair. Everything
  random about a sample (which texture, where to crop, flips, rotation, degradation) is drawn from
  a generator seeded by ``(seed, index)``, so a sample is a pure function of its index: workers,
  ranks and resumed runs all see exactly the same data.
* :class:`StepSampler` is the distributed sampler: at step ``s`` with global batch ``B`` over ``W``
  ranks, rank ``r`` takes indices ``s*B + r*B/W ... s*B + (r+1)*B/W - 1``. Its position is the step,
  which the checkpoint stores; resuming at step ``s`` continues with exactly the batches an
  uninterrupted run would have drawn. (torch's ``DistributedSampler`` shards a finite epoch and
  cannot restart mid-epoch, so it is not used.)

Pixels: gray is repeated to RGB, alpha is dropped, 8/16-bit samples map to [0, 1]; linear float
images (EXR, float TIFF) are encoded to sRGB and clipped to [0, 1], because the generator works on
display-referred sRGB values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from texup.errors import ImageReadError
from texup.training.config import TrainConfig

ProblemCallback = Callable[[Path, str], None]
"""Called once per unusable file with the path and the reason."""


@dataclass
class Texture:
    """One decoded texture: ``pixels`` (H, W, 3) uint8/uint16/float16/float32 as stored (alpha
    dropped, gray expanded); ``linear`` when the samples are scene-linear floats; ``tileable`` whether
    crops may wrap around the edges. ``pixels`` is ``None`` when images are not cached."""

    path: Path
    height: int
    width: int
    linear: bool
    tileable: bool
    pixels: np.ndarray | None = None


def scan_textures(root: str | Path, exclude: Sequence[str | Path] = ()) -> list[Path]:
    """Every file under ``root`` (recursively) with a suffix texup reads, sorted; hidden folders and
    the folders in ``exclude`` (e.g. the run's own output folder) are skipped.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder (message names it).
    """
    from texup.imageio import SUPPORTED_EXTENSIONS

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    skip = [Path(e).resolve() for e in exclude]
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if skip and any(path.resolve().is_relative_to(s) for s in skip):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS:
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(
    files: Sequence[Path], root: str | Path, val_fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """(train, validation): a file is held out when the hash of ``seed`` and its path relative to
    ``root`` falls below ``val_fraction``. With two or more files and ``val_fraction > 0`` at least one
    file is held out and at least one kept for training."""
    root = Path(root)
    if val_fraction <= 0 or len(files) < 2:
        return list(files), []

    def key(path: Path) -> float:
        digest = hashlib.sha256(f"{seed}:{path.relative_to(root).as_posix()}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    keyed = sorted(files, key=key)
    n_val = sum(1 for p in files if key(p) < val_fraction)
    n_val = min(max(n_val, 1), len(files) - 1)
    val = set(keyed[:n_val])
    return [p for p in files if p not in val], [p for p in files if p in val]


def _rgb(pixels: np.ndarray) -> np.ndarray:
    channels = pixels.shape[2]
    if channels in (1, 2):
        return np.ascontiguousarray(np.repeat(pixels[:, :, :1], 3, axis=2))
    return np.ascontiguousarray(pixels[:, :, :3])


def read_texture(path: Path, tileable: str = "auto") -> Texture:
    """Decode ``path`` into a cached :class:`Texture` (RGB, alpha dropped). Raises ``ImageReadError``."""
    from texup.imageio import read_image
    from texup.inference.tiling import is_tileable

    image = read_image(path)
    pixels = _rgb(image.pixels)
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise ImageReadError(path, "contains NaN or infinite samples")
    wrap = tileable == "on" or (tileable == "auto" and is_tileable(pixels))
    return Texture(
        path=path,
        height=pixels.shape[0],
        width=pixels.shape[1],
        linear=image.info.colorspace == "linear",
        tileable=wrap,
        pixels=pixels,
    )


def load_textures(
    files: Sequence[Path],
    *,
    min_size: int,
    tileable: str = "auto",
    cache: bool = True,
    on_problem: ProblemCallback | None = None,
) -> list[Texture]:
    """Decode every file once; report (once each) and skip those that cannot be used.

    A file is unusable when it cannot be read, or when it is smaller than ``min_size`` on a side
    and not tileable (a tileable texture smaller than the crop is repeated by wrap-around crops).
    With ``cache=False`` pixels are dropped after the check and re-read per sample.
    """
    textures = []
    for path in files:
        try:
            tex = read_texture(path, tileable)
        except ImageReadError as exc:
            if on_problem is not None:
                on_problem(path, exc.reason)
            continue
        if min(tex.height, tex.width) < min_size and not tex.tileable:
            if on_problem is not None:
                on_problem(
                    path,
                    f"{tex.width}x{tex.height} is smaller than the {min_size}x{min_size} training crop "
                    "and not tileable",
                )
            continue
        if not cache:
            tex.pixels = None
        textures.append(tex)
    return textures


def to_srgb_float(pixels: np.ndarray, linear: bool) -> np.ndarray:
    """(H, W, 3) samples as float32 sRGB in [0, 1] (see the module docstring)."""
    from texup.imageio import linear_to_srgb, to_float32

    out = to_float32(pixels)
    if linear:
        out = linear_to_srgb(np.clip(out, 0.0, 1.0))
    return np.clip(out, 0.0, 1.0, out=out)


def _crop(tex: Texture, pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = pixels.shape[:2]
    if tex.tileable:
        y0, x0 = int(rng.integers(h)), int(rng.integers(w))
        rows = np.arange(y0, y0 + size) % h
        cols = np.arange(x0, x0 + size) % w
        return pixels[rows][:, cols]
    y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return pixels[y0 : y0 + size, x0 : x0 + size]


class CropDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Index -> (LR (3, crop/scale, crop/scale), HR (3, crop, crop)) float32 tensors in [0, 1], sRGB.

    Any non-negative integer is a valid index (the sampler decides which are used); the sample is
    determined by ``(seed, index)`` alone.
    """

    def __init__(
        self,
        textures: Sequence[Texture],
        *,
        crop: int,
        scale: int,
        degradation: str = "bicubic",
        flips: bool = True,
        rot90: bool = True,
        seed: int = 0,
    ) -> None:
        if not textures:
            raise ValueError("no usable training images")
        if crop % scale:
            raise ValueError(f"the HR crop ({crop}) must be a multiple of the scale ({scale})")
        self.textures = list(textures)
        self.crop, self.scale = crop, scale
        self.degradation, self.flips, self.rot90, self.seed = degradation, flips, rot90, seed

    def __len__(self) -> int:
        # Samples are generated from their index; the sampler bounds the range actually used.
        return 2**62

    def _pixels(self, tex: Texture) -> np.ndarray:
        if tex.pixels is not None:
            return tex.pixels
        return read_texture(tex.path, "on" if tex.tileable else "off").pixels  # type: ignore[return-value]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        tex = self.textures[int(rng.integers(len(self.textures)))]
        patch = to_srgb_float(_crop(tex, self._pixels(tex), self.crop, rng), tex.linear)
        if self.flips:
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            if rng.random() < 0.5:
                patch = patch[::-1]
        if self.rot90 and rng.random() < 0.5:
            patch = patch.transpose(1, 0, 2)
        hr = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).contiguous()
        return make_lr(hr, self.scale, self.degradation, rng), hr


def make_lr(hr: torch.Tensor, scale: int, degradation: str, rng: np.random.Generator) -> torch.Tensor:
    """The LR input for ``hr`` (3, H, W) with ``degradation`` ("bicubic" or "realesrgan")."""
    from texup.training.degradations import bicubic_downscale, realesrgan_degrade

    if degradation == "bicubic":
        return bicubic_downscale(hr, scale)
    if degradation == "realesrgan":
        return realesrgan_degrade(hr, scale, rng)
    raise ValueError(f"unknown degradation {degradation!r} (bicubic or realesrgan)")


class StepSampler(Sampler[int]):
    """Global sample indices for one rank, step by step from ``start_step`` to ``total_steps``.

    ``batch_size`` is the global batch; it must divide evenly over ``world_size`` ranks. Use with a
    ``DataLoader(batch_size=batch_size // world_size, sampler=..., drop_last=False)``.
    """

    def __init__(
        self, *, batch_size: int, total_steps: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"the batch size ({batch_size}) must be a multiple of the number of ranks ({world_size})")
        self.batch_size, self.total_steps, self.start_step = batch_size, total_steps, start_step
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.per_rank

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.total_steps):
            first = step * self.batch_size + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)


@dataclass
class ValidationItem:
    """A held-out image: ``lr`` (1, 3, h, w), ``hr`` (1, 3, h*scale, w*scale), float32 in [0, 1]."""

    name: str
    lr: torch.Tensor
    hr: torch.Tensor


def validation_items(
    textures: Sequence[Texture], *, scale: int, crop: int, multiple: int, degradation: str, seed: int, max_items: int
) -> list[ValidationItem]:
    """Centred HR crops (side ``crop``, or the whole image when smaller, cut to a multiple of
    ``scale * multiple``) of the first ``max_items`` held-out textures, with their LR inputs
    (degraded with a fixed per-file seed, so every evaluation sees the same inputs)."""
    items = []
    step = scale * max(multiple, 1)
    for i, tex in enumerate(textures[:max_items]):
        pixels = tex.pixels if tex.pixels is not None else read_texture(tex.path, "off").pixels
        assert pixels is not None
        h = min(crop, tex.height) // step * step
        w = min(crop, tex.width) // step * step
        if h == 0 or w == 0:
            continue
        y0, x0 = (tex.height - h) // 2, (tex.width - w) // 2
        patch = to_srgb_float(pixels[y0 : y0 + h, x0 : x0 + w], tex.linear)
        hr = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).contiguous()
        lr = make_lr(hr, scale, degradation, np.random.default_rng([seed, 1_000_003, i]))
        items.append(ValidationItem(name=tex.path.name, lr=lr[None], hr=hr[None]))
    return items


def load_training_data(
    cfg: TrainConfig, scale: int, multiple: int, out_dir: Path, say: Callable[[str], None]
) -> tuple[CropDataset, list[ValidationItem], list[tuple[str, str]]]:
    """A run's training crops, its held-out items and the files left out (each reported once through ``say``).

    ``out_dir`` (the run's own outputs, possibly inside the data folder) is never read as data."""
    skipped: list[tuple[str, str]] = []

    def problem(path: Path, reason: str) -> None:
        skipped.append((str(path), reason))
        say(f"skipping {path}: {reason}")

    files = scan_textures(cfg.data.root, exclude=[out_dir])
    train_files, val_files = split_files(files, cfg.data.root, cfg.data.val_fraction, cfg.seed)
    train_tex = load_textures(
        train_files,
        min_size=cfg.data.hr_crop,
        tileable=cfg.data.tileable,
        cache=cfg.data.cache_images,
        on_problem=problem,
    )
    val_tex = load_textures(val_files, min_size=scale * multiple, tileable="off", cache=True, on_problem=problem)
    if not train_tex:
        raise ValueError(f"{cfg.data.root}: no usable training images ({len(files)} image files found)")
    say(
        f"data: {len(train_tex)} training and {len(val_tex)} held-out images from {cfg.data.root}"
        f" ({sum(t.tileable for t in train_tex)} tileable)"
    )
    dataset = CropDataset(
        train_tex,
        crop=cfg.data.hr_crop,
        scale=scale,
        degradation=cfg.data.degradation,
        flips=cfg.data.flips,
        rot90=cfg.data.rot90,
        seed=cfg.seed,
    )
    val_items = validation_items(
        val_tex,
        scale=scale,
        crop=cfg.data.val_crop,
        multiple=multiple,
        degradation=cfg.data.degradation,
        seed=cfg.seed,
        max_items=cfg.data.val_max_images,
    )
    return dataset, val_items, skipped


__all__ = [
    "CropDataset",
    "ProblemCallback",
    "StepSampler",
    "Texture",
    "ValidationItem",
    "load_textures",
    "load_training_data",
    "make_lr",
    "read_texture",
    "scan_textures",
    "split_files",
    "to_srgb_float",
    "validation_items",
]
