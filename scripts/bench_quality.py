"""How close texup's upscales come to the truth (issue 20 item 3): every packaged model, each with and without the
colour fix (texup.inference.colorfix), on textures with ground truth degraded x4 as studios do.

    python scripts/bench_quality.py [--size 64] [--models a,b] [--blends REF,REF] [--images a,b]
        [--json out.json] [--markdown out.md] [--grid docs/images/quality_grid.png] [--quick]

Truth: scikit-image's photos and textures (tests/realdata.py), scripts/make_samples.py's samples (an 8-bit photo, a
gray texture, a 16-bit RGBA brick with a soft alpha edge, a tileable grass) and procedural tileables made here
(coloured bricks, a marble of periodic noise, a plaid with hard edges), plus a normal map (role "normal", from a
real brick's heights) and a roughness map (role "data", the gravel photo). Each truth (at most 4 x --size pixels a
side, a multiple of 16) is downscaled x4 by area (block means) and by antialiased bicubic (texup's resampler;
periodic for tileables), stored in its own sample type (8- or 16-bit), then upscaled x4 by bicubic and by each
model with the colour fix off and on (seamless on for the tileables, the texture's role).

Metrics against the truth: PSNR (dB, peak 1, opaque pixels), SSIM (scikit-image, colour channels), low-frequency
CIEDE2000 (the output area-downscaled to the input's size, then 4x4-block means of it and of the input, compared in
CIELAB; blocks whose input pixels are all opaque; mean and 95th percentile), sharpness (mean gradient magnitude of
the luminance, as a ratio to the truth's: 1 = as much edge contrast as the truth, above 1 = invented detail) and,
for normal maps, the mean angle to the true normals (degrees). A model runs once per input: its tiles are memoised,
so the colour fix's run reuses them (the fix itself runs in the pipeline, as in ``texup upscale``).

Targets (issue 20 item 1), checked per model on every image: with the fix, low-frequency CIEDE2000 mean <= 0.3 and
95th percentile <= 0.8, sharpness within 5 % of the unfixed output's, PSNR not lower. The per-role verdict (does the
fix help: PSNR up and drift down on every image of the role, sharpness kept) is what
``texup.inference.colorfix.AUTO`` follows; the script says whether it agrees.

``--blends`` adds model references (e.g. blends, issue 20 item 2, when texup takes them) and ``--models`` any
model texup loads (a fine-tuned .safetensors such as scripts/finetune_demo.py's); both are measured like the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from make_samples import sample_images  # noqa: E402
from realdata import real_image  # noqa: E402

from texup.inference import colorfix  # noqa: E402
from texup.inference.pipeline import UpscaleOptions, Upscaler  # noqa: E402
from texup.inference.resample import resample  # noqa: E402
from texup.machine import describe  # noqa: E402

PACKAGED = ("realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3")
SCALE = 4
TARGET_DE_MEAN, TARGET_DE_P95, TARGET_SHARPNESS = 0.3, 0.8, 0.05
#: The grid's rows (those present): a face, stars, a gray texture, a photo, a 16-bit RGBA brick, hard edges.
GRID_ROWS = ("astronaut", "hubble", "gravel", "samples/coffee.jpg", "samples/brick_rgba16.png", "procedural plaid")
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


# --- the textures ----------------------------------------------------------------------------------------------


@dataclass
class Texture:
    name: str
    truth: np.ndarray  # (H, W, C) uint8 or uint16, H and W multiples of 16
    role: str = "color"
    tileable: bool = False
    source: str = ""


def _crop(pixels: np.ndarray, side: int) -> np.ndarray:
    """The centre crop of at most ``side`` pixels a side, each a multiple of 16."""
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    h, w = (min(side, n) // 16 * 16 for n in pixels.shape[:2])
    top, left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2
    return np.ascontiguousarray(pixels[top : top + h, left : left + w])


def _periodic_noise(side: int, rng: np.random.Generator, *, octaves: int = 5, channels: int = 1) -> np.ndarray:
    """Tileable fractal noise in [0, 1]: random Fourier coefficients at integer frequencies (periodic exactly)."""
    spectrum = np.zeros((side, side, channels), np.complex128)
    fy = np.fft.fftfreq(side) * side
    fx = np.fft.fftfreq(side) * side
    radius = np.hypot(fy[:, None], fx[None, :])
    weight = np.where((radius > 0) & (radius < 2 ** (octaves + 1)), 1.0 / np.maximum(radius, 1) ** 1.6, 0.0)
    for c in range(channels):
        phase = rng.uniform(0, 2 * np.pi, (side, side))
        spectrum[:, :, c] = weight * np.exp(1j * phase) * rng.rayleigh(1.0, (side, side))
    field_ = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    field_ -= field_.min()
    return (field_ / max(field_.max(), 1e-12)).astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def procedural(side: int, seed: int = 20) -> list[Texture]:
    """Tileable textures made here: coloured bricks, marble, plaid (each exactly periodic, ``side`` a side)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    rows, per_row = 8, 4
    bh, bw = side / rows, side / per_row
    row = np.floor(yy / bh)
    shift = (row % 2) * bw / 2
    col = np.floor(((xx + shift) % side) / bw)
    brick_id = (row * per_row + col).astype(int)
    tint = rng.uniform(0.75, 1.1, (rows * per_row, 1)) * np.array([[0.62, 0.30, 0.22]])
    mortar = (yy % bh < 2) | (((xx + shift) % side) % bw < 2)
    grain = _periodic_noise(side, rng, octaves=6)[:, :, 0] - 0.5
    bricks = tint[brick_id] * (1 + 0.35 * grain[:, :, None])
    bricks[mortar] = np.array([0.72, 0.70, 0.66]) * (1 + 0.2 * grain[mortar][:, None])

    veins = _periodic_noise(side, rng, octaves=5)[:, :, 0]
    marble_t = 0.5 + 0.5 * np.sin(2 * np.pi * (2 * xx / side + 3 * veins))
    marble = np.array([0.93, 0.91, 0.86]) * (1 - marble_t[:, :, None] ** 6 * np.array([0.55, 0.5, 0.35]))

    stripes_x = (np.floor(xx / (side / 16)) % 4 == 0).astype(np.float32)
    stripes_y = (np.floor(yy / (side / 16)) % 4 == 0).astype(np.float32)
    plaid = np.array([0.10, 0.25, 0.45]) + 0.45 * stripes_x[:, :, None] * np.array([0.9, 0.2, 0.1])
    plaid = plaid + 0.35 * stripes_y[:, :, None] * np.array([0.8, 0.8, 0.2])
    return [
        Texture("procedural bricks", _to_uint8(bricks), tileable=True, source="procedural"),
        Texture("procedural marble", _to_uint8(marble), tileable=True, source="procedural"),
        Texture("procedural plaid", _to_uint8(plaid), tileable=True, source="procedural"),
    ]


def normal_from_height(height: np.ndarray, strength: float) -> np.ndarray:
    """Tangent-space normals (OpenGL, encoded 8-bit) of a height field in [0, 1]."""
    gy, gx = np.gradient(height.astype(np.float64))
    n = np.stack([-gx * strength, -gy * strength, np.ones_like(gx)], axis=2)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    return _to_uint8(n * 0.5 + 0.5)


def textures(side: int) -> list[Texture]:
    """Every benchmark texture, its truth at most ``side`` pixels a side."""
    skimage = [
        ("astronaut", "astronaut.png", (40, 140)),
        ("coffee", "coffee.png", (40, 160)),
        ("chelsea", "chelsea.png", (20, 100)),
        ("rocket", "rocket.jpg", (100, 100)),
        ("hubble", "hubble_deep_field.jpg", (100, 100)),
        ("brick", "brick.png", (0, 0)),
        ("gravel", "gravel.png", (100, 100)),
        ("grass", "grass.png", (0, 0)),
    ]
    out = [
        Texture(name, _crop(real_image(file, (top, left, side, side)), side), source="scikit-image")
        for name, file, (top, left) in skimage
    ]
    for name, pixels in sample_images().items():
        tileable = "tileable" in name
        truth = pixels if tileable else _crop(pixels, side)
        if tileable and truth.shape[0] > side:
            continue  # a tileable is never cropped (it would no longer tile)
        out.append(
            Texture(
                f"samples/{name}",
                truth if truth.ndim == 3 else truth[:, :, None],
                tileable=tileable,
                source="make_samples",
            )
        )
    out += procedural(side // 16 * 16)
    height = real_image("brick.png", (0, 0, side, side))[:, :, 0].astype(np.float32) / 255
    out.append(Texture("brick normal map", normal_from_height(height, 6.0), role="normal", source="scikit-image"))
    rough = real_image("gravel.png", (300, 300, side, side))
    out.append(Texture("gravel roughness", _crop(rough, side), role="data", source="scikit-image"))
    return out


def chosen_textures(side: int, images: str = "") -> list[Texture]:
    """:func:`textures` at ``side``, those whose name holds one of the comma-separated ``images`` (all if empty)."""
    keep = [k.strip() for k in images.split(",") if k.strip()]
    return [t for t in textures(side) if not keep or any(k in t.name for k in keep)]


def emit(text: str, report: dict[str, Any], json_path: Path | None, markdown_path: Path | None) -> None:
    """Print ``text`` (the tables) and write the report's JSON and the tables where asked."""
    print(text)
    if json_path:
        json_path.write_text(json.dumps(report, indent=1))
    if markdown_path:
        markdown_path.write_text(text)


# --- degradation and metrics -----------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    """Integers to [0, 1] float64."""
    return x.astype(np.float64) / (65535 if x.dtype == np.uint16 else 255 if x.dtype == np.uint8 else 1)


def store(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    top = 65535 if dtype == np.uint16 else 255
    return np.clip(np.round(x * top), 0, top).astype(dtype)


def area(x: np.ndarray, f: int) -> np.ndarray:
    h, w = x.shape[0] // f, x.shape[1] // f
    return x[: h * f, : w * f].reshape(h, f, w, f, *x.shape[2:]).mean(axis=(1, 3))


def degrade(tex: Texture, kind: str) -> np.ndarray:
    """The truth downscaled x4 (``kind`` "area" or "bicubic"), in the truth's sample type."""
    x = unit(tex.truth)
    h, w = x.shape[0] // SCALE, x.shape[1] // SCALE
    small = area(x, SCALE) if kind == "area" else resample(x, h, w, wrap=tex.tileable).astype(np.float64)
    if tex.role == "normal":  # studios renormalise a downscaled normal map
        v = small * 2 - 1
        small = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-6) * 0.5 + 0.5
    return store(np.clip(small, 0, 1), tex.truth.dtype)


def _rgb(x: np.ndarray) -> np.ndarray:
    """Colour channels as RGB (gray replicated; alpha dropped)."""
    c = x.shape[2]
    return np.repeat(x[:, :, :1], 3, axis=2) if c in (1, 2) else x[:, :, :3]


def _opaque(x: np.ndarray) -> np.ndarray | None:
    return x[:, :, -1] >= 1.0 if x.shape[2] in (2, 4) else None


def low_frequency_de(output: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    """CIEDE2000 between 4x4-block means of ``output`` area-downscaled to ``source``'s size and of ``source``
    (both [0, 1] float), over blocks whose source pixels are all opaque: (mean, 95th percentile)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    f = output.shape[0] // source.shape[0]
    a = area(area(_rgb(output), f), 4)
    b = area(_rgb(source), 4)
    de = deltaE_ciede2000(rgb2lab(np.clip(a, 0, 1)), rgb2lab(np.clip(b, 0, 1)))
    opaque = _opaque(source)
    if opaque is not None:
        de = de[area(opaque.astype(np.float64), 4) >= 1.0]
    return float(de.mean()), float(np.percentile(de, 95))


def sharpness(x: np.ndarray) -> float:
    """Mean gradient magnitude of the luminance (central differences, pixels of the output's own size)."""
    luma = _rgb(x) @ LUMA.astype(np.float64)
    gy, gx = np.gradient(luma)
    return float(np.hypot(gx, gy).mean())


def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    diff = _rgb(output) - _rgb(truth)
    opaque = _opaque(truth)
    if opaque is not None:
        diff = diff[opaque]
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def ssim(output: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_rgb(truth), _rgb(output), channel_axis=2, data_range=1.0))


def normal_angle(output: np.ndarray, truth: np.ndarray) -> float:
    a, b = output[:, :, :3] * 2 - 1, truth[:, :, :3] * 2 - 1
    a /= np.maximum(np.linalg.norm(a, axis=2, keepdims=True), 1e-9)
    b /= np.maximum(np.linalg.norm(b, axis=2, keepdims=True), 1e-9)
    return float(np.degrees(np.arccos(np.clip((a * b).sum(axis=2), -1, 1))).mean())


def measure(output: np.ndarray, source: np.ndarray, truth: np.ndarray, role: str) -> dict[str, float]:
    de_mean, de_p95 = low_frequency_de(output, source)
    row = {
        "psnr": psnr(output, truth),
        "ssim": ssim(output, truth),
        "de_mean": de_mean,
        "de_p95": de_p95,
        "sharpness": sharpness(output) / max(sharpness(truth), 1e-12),
    }
    if role == "normal":
        row["angle"] = normal_angle(output, truth)
    return row


# --- running the models ------------------------------------------------------------------------------------------


class Memo:
    """An engine that remembers each tile's output, so the colour-fix run of an input costs no model time."""

    def __init__(self, engine: Any) -> None:
        self.inner = engine
        self.name, self.precision, self.scale = engine.name, engine.precision, engine.scale
        self.input_multiple, self.model_name = engine.input_multiple, engine.model_name
        self.seen: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    @property
    def device(self) -> str:
        return self.inner.device

    def run_tile(self, tile: np.ndarray, *, cancel: Any = None, step: Any = None) -> np.ndarray:
        key = hashlib.sha256(tile.tobytes() + str(tile.shape).encode()).hexdigest()
        if key not in self.seen:
            started = time.perf_counter()
            self.seen[key] = self.inner.run_tile(tile, cancel=cancel, step=step)
            self.seconds += time.perf_counter() - started
        return self.seen[key].copy()

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        return self.inner.auto_tile(overlap=overlap, out_width=out_width)

    def free_cached_memory(self) -> None:
        self.inner.free_cached_memory()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@dataclass
class Result:
    image: str
    role: str
    degradation: str
    method: str  # "bicubic", "truth" or a model reference
    color_fix: str  # "off" / "on" ("-" for bicubic and the truth)
    metrics: dict[str, float] = field(default_factory=dict)


def run(textures_: list[Texture], models: dict[str, str], engine: str) -> tuple[list[Result], dict[str, float], dict]:
    """Every texture x degradation x method (``models``: label -> model reference); returns (results, model seconds
    per 1000 input pixels, crops)."""
    results: list[Result] = []
    crops: dict[tuple[str, str], np.ndarray] = {}  # (image, label) -> the output (area degradation), for the grid
    upscalers = {label: Upscaler(Memo(Upscaler(ref, engine=engine).engine)) for label, ref in models.items()}
    pixels_in = 0
    for tex in textures_:
        truth = unit(tex.truth)
        crops[(tex.name, "truth")] = truth
        for kind in ("area", "bicubic"):
            small = degrade(tex, kind)
            source = unit(small)
            pixels_in += small.shape[0] * small.shape[1]
            base = dict(image=tex.name, role=tex.role, degradation=kind)
            results.append(
                Result(**base, method="truth", color_fix="-", metrics=measure(truth, source, truth, tex.role))
            )
            cubic = np.clip(resample(source, *truth.shape[:2], wrap=tex.tileable), 0, 1).astype(np.float64)
            results.append(
                Result(**base, method="bicubic", color_fix="-", metrics=measure(cubic, source, truth, tex.role))
            )
            if kind == "area":
                crops[(tex.name, "bicubic")] = cubic
            for model, upscaler in upscalers.items():
                for fix in ("off", "on"):
                    options = UpscaleOptions(seamless="on" if tex.tileable else "off", role=tex.role, color_fix=fix)
                    out = unit(upscaler.upscale_array(small, options))
                    results.append(
                        Result(**base, method=model, color_fix=fix, metrics=measure(out, source, truth, tex.role))
                    )
                    if kind == "area":
                        crops[(tex.name, f"{model} {fix}")] = out
            print(f"  {tex.name} ({kind}) done", file=sys.stderr, flush=True)
    speed = {m: 1000 * u.engine.seconds / max(pixels_in, 1) for m, u in upscalers.items()}  # type: ignore[attr-defined]
    return results, speed, crops


# --- a partner for the default model: network interpolation's other end ----------------------------------------

#: scikit-image photos the partner trains on: none of them is a benchmark texture (held out by construction).
PARTNER_SOURCES = ("motorcycle_left.png", "retina.jpg", "ihc.png", "coins.png", "camera.png", "moon.png")
PARTNER_OF = "realesrgan-x4plus"  # --partner-of
ALPHAS = (0.25, 0.5, 0.75)


def train_partner(steps: int, cache: Path, of: str = PARTNER_OF) -> Path:
    """A PSNR-oriented partner of ``of``, made as ``texup train --stage psnr`` makes one: ``of`` fine-tuned with L1
    on bicubic-degraded crops of :data:`PARTNER_SOURCES` (about 0.7 s a step of 4 x 64 px crops on 2 Zen 4 cores).

    ESRGAN's own pair is RealESRNet_x4plus (PSNR) and RealESRGAN_x4plus (GAN): the first is download-only, so the
    benchmark makes its own. Cached in ``cache`` by step count: a second run reuses it.
    """
    from texup.imageio import write_image
    from texup.training.config import DataConfig, GeneratorConfig, OptimConfig, TrainConfig
    from texup.training.trainer import TrainEvent, train

    run_dir = cache / f"{of}-psnr-{steps}"
    model = run_dir / "model.safetensors"
    if model.is_file():
        return model
    library = run_dir / "library"
    library.mkdir(parents=True, exist_ok=True)
    for name in PARTNER_SOURCES:
        write_image(library / (Path(name).stem + ".png"), np.ascontiguousarray(real_image(name)))
    config = TrainConfig(
        data=DataConfig(root=str(library), hr_crop=64, batch_size=4, val_fraction=0.0, degradation="bicubic"),
        out_dir=str(run_dir / "run"),
        stage="psnr",
        steps=steps,
        generator=GeneratorConfig(pretrained=of),
        optim=OptimConfig(lr_g=1e-4, ema_decay=0.99, milestones=(steps * 3 // 4,)),
        eval_every=0,
        checkpoint_every=max(steps // 2, 1),
        log_every=10,
        tensorboard=False,
    )
    started = time.monotonic()

    def report(event: TrainEvent) -> None:
        if event.kind == "step" and (event.step % 50 == 0 or event.step == event.total):
            print(
                f"  partner: step {event.step}/{event.total}, L1 {event.values['loss_g']:.4f}, "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    result = train(config, progress=report)
    Path(result.model_path).replace(model)
    return model


def blend_label(alpha: float) -> str:
    return f"blend @{alpha:g}"


# --- verdicts ------------------------------------------------------------------------------------------------------


def _pairs(results: list[Result], model: str, role: str | None = None) -> list[tuple[Result, Result]]:
    off = {(r.image, r.degradation): r for r in results if r.method == model and r.color_fix == "off"}
    return [
        (off[(r.image, r.degradation)], r)
        for r in results
        if r.method == model and r.color_fix == "on" and (role is None or r.role == role)
    ]


def targets(results: list[Result], model: str) -> dict[str, Any]:
    """Issue 20 item 1's targets for ``model`` over the colour textures (role "color"): what holds, the worst case."""
    pairs = _pairs(results, model, "color")
    fails: dict[str, list[str]] = {"de_mean": [], "de_p95": [], "sharpness": [], "psnr": []}
    for off, on in pairs:
        label = f"{on.image} ({on.degradation})"
        if on.metrics["de_mean"] > TARGET_DE_MEAN:
            fails["de_mean"].append(label)
        if on.metrics["de_p95"] > TARGET_DE_P95:
            fails["de_p95"].append(label)
        if abs(on.metrics["sharpness"] / off.metrics["sharpness"] - 1) > TARGET_SHARPNESS:
            fails["sharpness"].append(label)
        if on.metrics["psnr"] < off.metrics["psnr"]:
            fails["psnr"].append(label)
    ratio = [on.metrics["sharpness"] / off.metrics["sharpness"] for off, on in pairs]
    gain = [on.metrics["psnr"] - off.metrics["psnr"] for off, on in pairs]
    return {
        "cases": len(pairs),
        "worst_de_mean": max(on.metrics["de_mean"] for _, on in pairs),
        "worst_de_p95": max(on.metrics["de_p95"] for _, on in pairs),
        "worst_de_mean_off": max(off.metrics["de_mean"] for off, _ in pairs),
        "worst_de_p95_off": max(off.metrics["de_p95"] for off, _ in pairs),
        "sharpness_ratio": [min(ratio), max(ratio)],
        "psnr_gain_db": [min(gain), max(gain)],
        "fails": {k: v for k, v in fails.items() if v},
        "met": not any(fails.values()),
    }


def role_verdicts(results: list[Result], models: list[str]) -> dict[str, dict[str, Any]]:
    """Per role, over every model and image: does the colour fix help? (PSNR not lower, drift lower, sharpness
    within 5 % on every one); what ``auto`` does today."""
    verdicts = {}
    for role in sorted({r.role for r in results}):
        pairs = [p for m in models for p in _pairs(results, m, role)]
        if not pairs:
            continue
        psnr_ok = sum(on.metrics["psnr"] >= off.metrics["psnr"] for off, on in pairs)
        de_ok = sum(on.metrics["de_mean"] < off.metrics["de_mean"] for off, on in pairs)
        sharp_ok = sum(
            abs(on.metrics["sharpness"] / off.metrics["sharpness"] - 1) <= TARGET_SHARPNESS for off, on in pairs
        )
        helps = psnr_ok == de_ok == len(pairs)
        verdicts[role] = {
            "cases": len(pairs),
            "psnr_not_lower": psnr_ok,
            "drift_lower": de_ok,
            "sharpness_within_5pct": sharp_ok,
            "mean_psnr_gain_db": float(np.mean([on.metrics["psnr"] - off.metrics["psnr"] for off, on in pairs])),
            "helps": helps,
            "auto_now": colorfix.AUTO.get(role, False),
        }
    return verdicts


def summary(results: list[Result]) -> list[dict[str, Any]]:
    """Per role and method: the means over images and degradations."""
    rows = []
    keys = sorted({(r.role, r.method, r.color_fix) for r in results}, key=lambda k: (k[0] != "color", k[0]))
    order = {"truth": 0, "bicubic": 1}
    keys.sort(key=lambda k: (["color", "normal", "data"].index(k[0]), order.get(k[1], 2), k[1], k[2]))
    for role, method, fix in keys:
        chosen = [r.metrics for r in results if (r.role, r.method, r.color_fix) == (role, method, fix)]
        row: dict[str, Any] = {"role": role, "method": method, "color_fix": fix, "n": len(chosen)}
        for name in ("psnr", "ssim", "de_mean", "de_p95", "sharpness", "angle"):
            if name in chosen[0]:
                row[name] = float(np.mean([m[name] for m in chosen]))
        row["worst_de_mean"] = max(m["de_mean"] for m in chosen)
        row["worst_de_p95"] = max(m["de_p95"] for m in chosen)
        rows.append(row)
    return rows


# --- reports ---------------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}. Command: `{report['command']}` ({report['seconds']:.0f} s).", ""]
    lines += [
        "| role | method | colour fix | PSNR dB | SSIM | LF ΔE00 mean (worst) | LF ΔE00 p95 (worst) "
        "| sharpness / truth |" + (" normal angle ° |" if any("angle" in r for r in report["summary"]) else ""),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: |" if any("angle" in r for r in report["summary"]) else ""),
    ]
    for r in report["summary"]:
        angle = f" {r['angle']:.2f} |" if "angle" in r else (" |" if "angle" in report["summary"][-1] else "")
        lines.append(
            f"| {r['role']} | {r['method']} | {r['color_fix']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['de_mean']:.2f} ({r['worst_de_mean']:.2f}) | {r['de_p95']:.2f} ({r['worst_de_p95']:.2f}) | "
            f"{r['sharpness']:.2f} |{angle}"
        )
    lines += ["", "Targets on the colour textures, per model (fix on vs off, every image and degradation):", ""]
    lines += [
        "| model | cases | worst ΔE mean off → on | worst ΔE p95 off → on | sharpness on/off | PSNR gain dB | met "
        "| ms per 1000 input px |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for model, t in report["targets"].items():
        met = "yes" if t["met"] else "no: " + "; ".join(f"{k} on {', '.join(v)}" for k, v in t["fails"].items())
        lines.append(
            f"| {model} | {t['cases']} | {t['worst_de_mean_off']:.2f} → {t['worst_de_mean']:.2f} | "
            f"{t['worst_de_p95_off']:.2f} → {t['worst_de_p95']:.2f} | {t['sharpness_ratio'][0]:.3f}–"
            f"{t['sharpness_ratio'][1]:.3f} | {t['psnr_gain_db'][0]:+.2f} to {t['psnr_gain_db'][1]:+.2f} | {met} | "
            f"{1000 * report['speed_s_per_1000px'][model]:.0f} |"
        )
    lines += ["", "Colour fix per role (every model, image and degradation):", ""]
    lines += [
        "| role | cases | PSNR not lower | drift lower | sharpness within 5 % | mean PSNR gain dB | helps | auto |"
    ]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for role, v in report["roles"].items():
        lines.append(
            f"| {role} | {v['cases']} | {v['psnr_not_lower']} | {v['drift_lower']} | {v['sharpness_within_5pct']} | "
            f"{v['mean_psnr_gain_db']:+.2f} | {'yes' if v['helps'] else 'no'} | {'on' if v['auto_now'] else 'off'} |"
        )
    if report.get("dial"):
        partner = report["partner"]
        lines += [
            "",
            f"The Detail dial (network interpolation, alpha 0 = a PSNR partner of {partner['of']} fine-tuned "
            f"{partner['steps']} steps on {', '.join(partner['sources'])}; 1 = {partner['of']}), means per role:",
            "",
            "| role | model | PSNR dB off / on | SSIM on | LF ΔE00 mean on (worst) | sharpness / truth off / on |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        rows = {(r["role"], r["method"], r["color_fix"]): r for r in report["summary"]}
        for role in ("color", "normal", "data"):
            for label in report["dial"]:
                off, on = rows.get((role, label, "off")), rows.get((role, label, "on"))
                if off and on:
                    lines.append(
                        f"| {role} | {label} | {off['psnr']:.2f} / {on['psnr']:.2f} | {on['ssim']:.3f} | "
                        f"{on['de_mean']:.2f} ({on['worst_de_mean']:.2f}) | "
                        f"{off['sharpness']:.2f} / {on['sharpness']:.2f} |"
                    )
    elif not report["blends"]:
        lines += ["", "Blends: none measured (`--blends REF,...` adds model blends, issue 20 item 2)."]
    return "\n".join(lines) + "\n"


def grid(crops: dict, images: list[str], columns: list[str], path: Path, cell: int = 96) -> None:
    """A PNG of ``cell``-pixel crops (centre of each output, area degradation): one row per image."""
    from PIL import Image, ImageDraw

    label_h, label_w = 14, 118
    canvas = Image.new("RGB", (label_w + cell * len(columns), label_h + cell * len(images)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, col in enumerate(columns):
        draw.text(
            (label_w + j * cell + 2, 1), col.replace("realesrgan-", "").replace("realesr-", "")[:16], fill="black"
        )
    for i, name in enumerate(images):
        draw.text((2, label_h + i * cell + cell // 2 - 6), name.replace("samples/", "")[:19], fill="black")
        for j, col in enumerate(columns):
            x = crops.get((name, col))
            if x is None:
                continue
            h, w = x.shape[:2]
            top, left = (h - cell) // 2, (w - cell) // 2
            tile = np.clip(np.round(_rgb(x[top : top + cell, left : left + cell]) * 255), 0, 255).astype(np.uint8)
            canvas.paste(Image.fromarray(tile), (label_w + j * cell, label_h + i * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (truth: 4x; default 64)")
    parser.add_argument("--models", default=",".join(PACKAGED), help="model references (default: the packaged ones)")
    parser.add_argument("--blends", default="", help="more model references, reported as blends (issue 20 item 2)")
    parser.add_argument("--images", default="", help="comma-separated substrings of the image names to keep")
    parser.add_argument("--engine", default="ncnn", help="texup engine (default ncnn: the fastest on a CPU here)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--grid", type=Path, help="write a PNG grid of crops here")
    parser.add_argument(
        "--quick", action="store_true", help="tiny: 16-px inputs, 3 textures, the smallest model (4 partner steps)"
    )
    parser.add_argument(
        "--partner-steps",
        type=int,
        default=300,
        help="train a PSNR partner of --partner-of this many steps and measure blends at 0.25/0.5/0.75 (0: none)",
    )
    parser.add_argument("--partner-of", default=PARTNER_OF, help="the model whose partner is trained (one of --models)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "texup" / "bench_quality",
        help="where the trained partner is kept between runs",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.models, args.partner_of = 16, "realesr-animevideov3", "realesr-animevideov3"
        args.partner_steps = min(args.partner_steps, 4)
        args.images = args.images or "coffee,procedural bricks,normal map"
    models = [m for m in args.models.split(",") if m]
    blends = [m for m in args.blends.split(",") if m]
    labels = {m: m for m in models + blends}
    dial: list[str] = []
    if args.partner_steps > 0 and args.partner_of in models:
        partner = train_partner(args.partner_steps, args.cache, args.partner_of)
        dial = ["partner (PSNR)", *[blend_label(a) for a in ALPHAS], args.partner_of]
        labels["partner (PSNR)"] = str(partner)
        for alpha in ALPHAS:  # alpha 0 = the partner, 1 = x4plus (texup.weights.blend)
            labels[blend_label(alpha)] = f"blend:{partner},{args.partner_of}@{alpha:g}"
        blends += dial[:-1]
    chosen = chosen_textures(SCALE * args.size, args.images)
    started = time.monotonic()
    print(f"bench_quality: {len(chosen)} textures, {len(models + blends)} models, on {describe()}", file=sys.stderr)
    results, speed, crops = run(chosen, labels, args.engine)
    report: dict[str, Any] = {
        "machine": describe(),
        "command": "python scripts/bench_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": time.monotonic() - started,
        "size": args.size,
        "models": models,
        "blends": blends,
        "dial": dial,
        "partner": {"steps": args.partner_steps, "sources": PARTNER_SOURCES, "of": args.partner_of} if dial else None,
        "speed_s_per_1000px": speed,
        "summary": summary(results),
        "targets": {m: targets(results, m) for m in models + blends if _pairs(results, m, "color")},
        "roles": role_verdicts(results, models + blends),
        "results": [r.__dict__ for r in results],
    }
    emit(markdown(report), report, args.json, args.markdown)
    if args.grid:
        names = [t.name for t in chosen if t.role == "color"]
        rows = [n for n in GRID_ROWS if n in names] or names[:6]
        columns = ["truth", "bicubic", *[f"{m} {fix}" for m in models[:3] for fix in ("off", "on")]]
        grid(crops, rows, columns, args.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
