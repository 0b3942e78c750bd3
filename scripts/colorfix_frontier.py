"""The colour fix's trade-off, measured (issue 20 item 1): how far each way of putting the source's low frequencies
back takes the drift down, and what it costs in sharpness, on scripts/bench_quality.py's colour textures.

    python scripts/colorfix_frontier.py [--size 64] [--model realesrgan-x4plus] [--images a,b]
        [--json out.json] [--markdown out.md] [--quick]

The model runs once per input; its output is kept as the pipeline hands it to the colour fix (float, in the
working space, before clipping), and every variant below is applied to that same array, then clipped and stored
in 8 bits as the pipeline does. Measured as bench_quality.py measures (low-frequency CIEDE2000 mean and 95th
percentile against the source, sharpness against the unfixed output's, PSNR against the truth), with issue 20's
targets (drift <= 0.3 / 0.8, sharpness within 5 % of the unfixed output, PSNR not lower).

Variants: the linear transfer of texup.inference.colorfix at a grid of low-pass widths (sigma, in source pixels)
and orders (``1 - (1 - G)^order``); back-projection (sigma 0) applied 1-3 times, which converges to an output whose
area-downscale is the source; and two non-linear ones: an adaptive mix (a gentle correction, a firmer one only
where the gentle one leaves drift) and edge-aware upsampling (the correction reaches an output pixel in proportion to
how alike its colour is to each source pixel's, a joint bilateral upsampling). The report says, per variant, which
cases miss a target, and per case whether any variant meets every target there.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402

from texup.inference import colorfix  # noqa: E402
from texup.inference.pipeline import UpscaleOptions, Upscaler  # noqa: E402
from texup.machine import describe  # noqa: E402

Fix = Callable[[np.ndarray, np.ndarray, bool], np.ndarray]


def linear(sigma: float, order: int, passes: int = 1) -> Fix:
    def fix(src: np.ndarray, out: np.ndarray, wrap: bool) -> np.ndarray:
        result = np.array(out, dtype=np.float32)
        for _ in range(passes):
            result = colorfix.transfer(src, result, sigma=sigma, order=order, wrap=wrap)
        return result

    return fix


def _add_upsampled(corr: np.ndarray, out: np.ndarray, wrap: bool) -> np.ndarray:
    result = np.array(out, dtype=np.float32)
    for _ in colorfix.transfer_rows(corr, result, wrap=wrap):
        pass
    return result


def adaptive(gentle: tuple[float, int] = (0.9, 4), firm: tuple[float, int] = (0.5, 3), lo: float = 0.02) -> Fix:
    """The gentle correction where it leaves under ``lo`` of drift (RGB, seen over ~1.5 source pixels), the firm
    one where it leaves over 2.5x that, a mix between."""

    def fix(src: np.ndarray, out: np.ndarray, wrap: bool) -> np.ndarray:
        h, w = src.shape[:2]
        drift = src.astype(np.float32) - colorfix.area_downscale(out, h, w, wrap=wrap)
        soft = colorfix.low_pass(drift, gentle[0], order=gentle[1], wrap=wrap)
        hard = colorfix.low_pass(drift, firm[0], order=firm[1], wrap=wrap)
        left = colorfix.gaussian_blur(np.abs(drift - soft).max(axis=2), 1.5, wrap=wrap)
        weight = np.clip((left - lo) / (1.5 * lo), 0, 1)[:, :, None]
        return _add_upsampled(soft * (1 - weight) + hard * weight, out, wrap)

    return fix


def edge_aware(range_sigma: float) -> Fix:
    """The linear correction (colorfix's defaults), upsampled by joint bilateral weights: tent weights over the
    4x4 nearest source pixels times exp(-|output pixel - source pixel as the output sees it|^2 / 2 range^2)."""

    def fix(src: np.ndarray, out: np.ndarray, wrap: bool) -> np.ndarray:
        h, w = src.shape[:2]
        out_h, out_w = out.shape[:2]
        corr = colorfix.correction(src, out, wrap=wrap)
        seen = colorfix.area_downscale(out, h, w, wrap=wrap)
        total = np.zeros(out.shape, np.float32)
        weights = np.zeros((out_h, out_w, 1), np.float32)
        ys, xs = (np.arange(out_h) + 0.5) * h / out_h - 0.5, (np.arange(out_w) + 0.5) * w / out_w - 0.5
        for dy in (-1, 0, 1, 2):
            iy = np.floor(ys).astype(int) + dy
            wy = np.maximum(0.0, 1 - np.abs(ys - iy) / 1.5)
            iy = iy % h if wrap else np.clip(iy, 0, h - 1)
            for dx in (-1, 0, 1, 2):
                ix = np.floor(xs).astype(int) + dx
                wx = np.maximum(0.0, 1 - np.abs(xs - ix) / 1.5)
                ix = ix % w if wrap else np.clip(ix, 0, w - 1)
                alike = np.exp(-((out - seen[iy][:, ix]) ** 2).sum(axis=2, keepdims=True) / (2 * range_sigma**2))
                weight = (wy[:, None] * wx[None, :])[:, :, None] * alike
                total += weight * corr[iy][:, ix]
                weights += weight
        return out + total / np.maximum(weights, 1e-8)

    return fix


def variants(quick: bool) -> dict[str, Fix]:
    current = f"linear sigma {colorfix.SIGMA} order {colorfix.ORDER} (texup's)"
    found: dict[str, Fix] = {current: linear(colorfix.SIGMA, colorfix.ORDER)}
    grid = [(0.5, 3), (1.0, 3)] if quick else [(s, o) for s in (0.4, 0.5, 0.6, 0.8, 1.0, 1.3) for o in (1, 3)]
    grid += [] if quick else [(0.7, 1), (0.75, 3)]
    for sigma, order in grid:
        found[f"linear sigma {sigma} order {order}"] = linear(sigma, order)
    for passes in (1, 3) if quick else (1, 2, 3):
        found[f"back-projection x{passes}"] = linear(0.0, 1, passes)
    found["linear (texup's) x2"] = linear(colorfix.SIGMA, colorfix.ORDER, 2)
    found["adaptive (0.9/4 where enough, 0.5/3 where not)"] = adaptive()
    for range_sigma in (0.05,) if quick else (0.05, 0.2):
        found[f"edge-aware upsampling (range {range_sigma})"] = edge_aware(range_sigma)
    return found


def unfixed_outputs(model: str, chosen: list[bq.Texture], engine: str) -> list[dict[str, Any]]:
    """Per texture and degradation: the source, the truth and the model's output as the colour fix receives it."""
    seen: dict[str, Any] = {}
    real = colorfix.correction

    def keep(source: np.ndarray, output: np.ndarray, **kwargs: Any) -> np.ndarray:
        seen.update(src=np.array(source), out=np.array(output), wrap=bool(kwargs.get("wrap")))
        return real(source, output, **kwargs)

    upscaler = Upscaler(model, engine=engine)
    cases = []
    colorfix.correction = keep  # type: ignore[assignment]  # the pipeline calls it through the module
    try:
        for tex in chosen:
            for kind in ("area", "bicubic"):
                small = bq.degrade(tex, kind)
                options = UpscaleOptions(seamless="on" if tex.tileable else "off", role="color", color_fix="on")
                fixed = bq.unit(upscaler.upscale_array(small, options))
                cases.append(
                    dict(
                        case=f"{tex.name} ({kind})",
                        truth=bq.unit(tex.truth),
                        source=bq.unit(small),
                        fixed=fixed,
                        **seen,
                    )
                )
    finally:
        colorfix.correction = real  # type: ignore[assignment]
    return cases


def stored(x: np.ndarray) -> np.ndarray:
    """As the pipeline stores an 8-bit output: clipped, rounded."""
    return np.round(np.clip(x, 0, 1) * 255) / 255


def verdict(on: dict[str, float], off: dict[str, float]) -> list[str]:
    misses = []
    if on["de_mean"] > bq.TARGET_DE_MEAN:
        misses.append(f"drift {on['de_mean']:.2f}")
    if on["de_p95"] > bq.TARGET_DE_P95:
        misses.append(f"p95 {on['de_p95']:.2f}")
    if abs(on["sharpness"] / off["sharpness"] - 1) > bq.TARGET_SHARPNESS:
        misses.append(f"sharpness {on['sharpness'] / off['sharpness']:.3f}")
    if on["psnr"] < off["psnr"]:
        misses.append(f"PSNR {on['psnr'] - off['psnr']:+.2f}")
    return misses


def measure_all(cases: list[dict[str, Any]], fixes: dict[str, Fix]) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in fixes}
    for c in cases:
        off = bq.measure(stored(c["out"]), c["source"], c["truth"], "color")
        c["off"] = off
        for name, fix in fixes.items():
            on = bq.measure(stored(fix(c["src"], c["out"], c["wrap"])), c["source"], c["truth"], "color")
            rows[name].append(dict(case=c["case"], metrics=on, misses=verdict(on, off)))
    summary = {}
    for name, found in rows.items():
        ratio = [r["metrics"]["sharpness"] / c["off"]["sharpness"] for r, c in zip(found, cases)]
        gain = [r["metrics"]["psnr"] - c["off"]["psnr"] for r, c in zip(found, cases)]
        summary[name] = dict(
            worst_de_mean=max(r["metrics"]["de_mean"] for r in found),
            worst_de_p95=max(r["metrics"]["de_p95"] for r in found),
            sharpness_ratio=[min(ratio), max(ratio)],
            psnr_gain_db=[min(gain), max(gain)],
            misses={r["case"]: r["misses"] for r in found if r["misses"]},
        )
    met = {name: {r["case"] for r in found if not r["misses"]} for name, found in rows.items()}
    reachable = {c["case"]: [name for name in fixes if c["case"] in met[name]] for c in cases}
    return dict(rows=rows, summary=summary, reachable=reachable)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}. Model: {report['model']}. `{report['command']}` ({report['seconds']:.0f} s).",
        "",
        "| variant | worst drift mean / p95 | sharpness on/off | PSNR gain dB | cases missing a target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, s in report["summary"].items():
        misses = "; ".join(f"{case}: {', '.join(m)}" for case, m in s["misses"].items()) or "none"
        lines.append(
            f"| {name} | {s['worst_de_mean']:.2f} / {s['worst_de_p95']:.2f} | {s['sharpness_ratio'][0]:.3f}–"
            f"{s['sharpness_ratio'][1]:.3f} | {s['psnr_gain_db'][0]:+.2f} to {s['psnr_gain_db'][1]:+.2f} | {misses} |"
        )
    none = [case for case, names in report["reachable"].items() if not names]
    lines += ["", f"Cases where no variant meets every target: {', '.join(none) or 'none'}."]
    every = [n for n, s in report["summary"].items() if not s["misses"]]
    lines.append(f"Variants that meet every target on every case: {', '.join(every) or 'none'}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (truth: 4x; default 64)")
    parser.add_argument("--model", default="realesrgan-x4plus", help="model reference (default: the default model)")
    parser.add_argument("--images", default="", help="comma-separated substrings of the image names to keep")
    parser.add_argument("--engine", default="ncnn", help="texup engine (default ncnn)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--quick", action="store_true", help="tiny: 16-px inputs, 2 textures, the smallest model")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.model = 16, "realesr-animevideov3"
        args.images = args.images or "coffee,procedural bricks"
    chosen = [t for t in bq.chosen_textures(bq.SCALE * args.size, args.images) if t.role == "color"]
    started = time.monotonic()
    print(f"colorfix_frontier: {len(chosen)} textures, {args.model}, on {describe()}", file=sys.stderr)
    cases = unfixed_outputs(args.model, chosen, args.engine)
    found = measure_all(cases, variants(args.quick))
    report = {
        "machine": describe(),
        "model": args.model,
        "command": "python scripts/colorfix_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": time.monotonic() - started,
        "pipeline": {c["case"]: bq.measure(c["fixed"], c["source"], c["truth"], "color") for c in cases},
        **found,
    }
    bq.emit(markdown(report), report, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
