"""How an alpha channel is best upscaled: the network, cubic resampling, or texup's ``--alpha auto`` choice.

Each case is a high-resolution alpha (the truth), area-downscaled by the model's scale to 8 bits (what a texture's
alpha at the lower resolution holds), put under a flat grey RGBA colour and upscaled by texup three ways
(``UpscaleOptions(alpha=...)``: model, resample, auto). Printed per case: PSNR of each against the truth, which one
auto took and why (the share of sharp transitions, the round-trip ratio of the network's alpha to resampling's),
and the summary: auto's largest loss against the better of the two, its mean gain over the network, and how often
the network ran. Synthetic cases span hard masks, soft edges of several widths, gradients and a fine checker; the
real ones are made from scikit-image's samples (the horse silhouette, hard and blurred into a matte; coins
thresholded; scanned text).

    .venv/bin/python scripts/bench_alpha.py                  # x4plus, 256 px truths (about 2 minutes on 2 cores)
    .venv/bin/python scripts/bench_alpha.py --quick          # animevideov3, 64 px (the test tier)
    .venv/bin/python scripts/bench_alpha.py --json alpha.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from skimage.filters import gaussian

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from texup.inference import alpha as alpha_rule  # noqa: E402
from texup.inference.pipeline import UpscaleOptions, Upscaler  # noqa: E402


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(gaussian(a.astype(np.float64), sigma=sigma, mode="reflect", preserve_range=True))


def cases(n: int) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (kind, an (n, n) float alpha in 0..1): the truths."""
    from skimage import data, transform

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:n, 0:n] / n
    circle = np.hypot(yy - 0.5, xx - 0.45) < 0.3
    square = (abs(yy - 0.3) < 0.15) & (abs(xx - 0.75) < 0.1)
    hard = (circle | square).astype(np.float64)
    radial = np.clip(1.2 - np.hypot(yy - 0.5, xx - 0.5) * 2, 0, 1)
    noise = _blur(rng.random((n, n)), n / 64)
    foliage = (noise > np.median(noise)).astype(np.float64)
    s = n / 256  # blur widths are given for 256 px truths
    out: dict[str, tuple[str, np.ndarray]] = {
        "hard shapes": ("hard", hard),
        "soft edge s1": ("soft", _blur(hard, 1 * s)),
        "soft edge s2": ("soft", _blur(hard, 2 * s)),
        "soft edge s4": ("soft", _blur(hard, 4 * s)),
        "soft edge s6": ("soft", _blur(hard, 6 * s)),
        "foliage mask": ("hard", foliage),
        "foliage soft s2": ("soft", _blur(foliage, 2 * s)),
        "radial gradient": ("smooth", radial),
        "vignette": ("smooth", np.clip(1 - ((2 * yy - 1) ** 4 + (2 * xx - 1) ** 4), 0, 1)),
        "hard cut of a gradient": ("mixed", hard * radial),
        "hard half, smooth half": ("mixed", np.where(xx < 0.5, hard, radial)),
        "checker 16 px": ("hard", ((np.floor(xx * n / 16) + np.floor(yy * n / 16)) % 2).astype(np.float64)),
    }

    def fit(img: np.ndarray, order: int) -> np.ndarray:
        return np.clip(transform.resize(img.astype(np.float64), (n, n), order=order, anti_aliasing=order > 0), 0, 1)

    horse = fit(~data.horse(), 0)
    out["horse (real silhouette)"] = ("hard", horse)
    out["horse matte s3"] = ("soft", _blur(horse, 3 * s))
    coins = data.coins()[:, 40:343]
    out["coins thresholded (real)"] = ("hard", fit(coins > 110, 0))
    out["scanned text (real)"] = ("soft", 1 - fit(data.text() / 255.0, 1))
    return out


def area_down(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1 / mse)


def measure(up: Upscaler, truth: np.ndarray) -> dict[str, Any]:
    scale = up.scale
    small = np.rint(area_down(truth, scale) * 255).astype(np.uint8)
    rgba = np.dstack([np.full((*small.shape, 3), 128, np.uint8), small])
    truth = truth[: small.shape[0] * scale, : small.shape[1] * scale]
    row: dict[str, Any] = {}
    for mode in ("model", "resample", "auto"):
        t = time.perf_counter()
        out = up.upscale_array(rgba, UpscaleOptions(alpha=mode, seamless="off", color_fix="off"))
        row[f"{mode}_s"] = time.perf_counter() - t
        row[mode] = psnr(out[:, :, 3] / 255.0, truth)
        if mode == "model":
            model_alpha = out[:, :, 3] / 255.0
        if mode == "auto":
            row["auto_took"] = up.last_alpha
    source = small / 255.0
    row["share"] = alpha_rule.hard_edge_share(source)
    h, w = model_alpha.shape
    check = alpha_rule.SourceCheck(*source.shape, h, wrap=False)
    check(model_alpha.astype(np.float32), 0)
    resampled = alpha_rule.resampled_error(source, h, w, False)
    row["round_trip_ratio"] = max(check.error(source), alpha_rule.ERROR_FLOOR) / max(resampled, alpha_rule.ERROR_FLOOR)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--size", type=int, default=256, help="side of the truths in pixels (default 256)")
    parser.add_argument("--quick", action="store_true", help="realesr-animevideov3 on 64 px truths")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.size = "realesr-animevideov3", 64
    from bench_engines import lscpu

    cpu = lscpu()
    up = Upscaler(args.model, engine=args.engine)
    print(f"machine: {cpu['cpu']} ({cpu['cores']} cores; {', '.join(cpu['simd'])}; load {cpu['loadavg']:.2f})")
    print(f"model {args.model} (x{up.scale}) on {up.engine!r}; truths {args.size} px, area-downscaled x{up.scale}")
    print(f"\n{'case':26s} {'kind':6s} {'model':>6s} {'cubic':>6s} {'auto':>6s}  {'share':>5s} {'trip':>6s}  auto took")
    rows: dict[str, dict[str, Any]] = {}
    pick: Callable[[dict[str, Any]], str] = lambda r: "model" if r["model"] >= r["resample"] else "resample"  # noqa: E731
    for name, (kind, truth) in cases(args.size).items():
        row = rows[name] = {"kind": kind, **measure(up, truth)}
        print(
            f"{name:26s} {kind:6s} {row['model']:6.2f} {row['resample']:6.2f} {row['auto']:6.2f}  "
            f"{row['share']:5.2f} {row['round_trip_ratio']:6.2f}  {row['auto_took']}"
            + ("" if row["auto_took"].startswith(pick(row)) else "  (the other was better)")
        )
    losses = [max(r["model"], r["resample"]) - r["auto"] for r in rows.values()]
    gains = [r["auto"] - r["model"] for r in rows.values()]
    ran = sum(r["auto_took"] != "resample" for r in rows.values())
    summary = {
        "auto_worst_loss_db": max(losses),
        "auto_mean_gain_over_model_db": float(np.mean(gains)),
        "auto_worst_vs_model_db": min(gains),
        "network_runs_for_alpha": f"{ran} of {len(rows)}",
        "auto_s": sum(r["auto_s"] for r in rows.values()),
        "model_s": sum(r["model_s"] for r in rows.values()),
    }
    print(
        f"\nauto: at most {summary['auto_worst_loss_db']:.2f} dB below the better of the two per case; "
        f"{summary['auto_mean_gain_over_model_db']:+.2f} dB over the network on average "
        f"(worst case {summary['auto_worst_vs_model_db']:+.2f} dB); the network ran for {ran} of {len(rows)} alphas; "
        f"time {summary['auto_s']:.1f} s auto vs {summary['model_s']:.1f} s model (colour included)"
    )
    if args.json:
        report = {"machine": cpu, "model": args.model, "rows": rows, "summary": summary}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
