"""Does splitting ONE large image into row bands across Ray workers pay? A measurement, not a feature.

    python scripts/bench_ray_bands.py [--size 768] [--context 32] [--model realesr-animevideov3] [--engine ncnn]

One image of --size x --size (a real photo, tiled up from scikit-image's data when available, else a smooth
random texture) is upscaled (a) whole by one Ray worker on a one-CPU node, and (b) as two row bands, each with
--context rows of the neighbour band around it, on two one-CPU nodes at once, the bands' cores then stitched.
Prints the machine, both times, the speed-up, the bytes moved through Ray's object store, and how far the
stitched result is from the whole one (PSNR, largest difference in 8-bit levels). Starts and stops its own
local cluster (`ray stop` at the end: do not run it beside another Ray cluster on this machine).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "core"))

from texup.cluster import local_cluster  # noqa: E402
from texup.machine import describe  # noqa: E402


def test_image(size: int) -> np.ndarray:
    try:
        from skimage import data

        photo = data.astronaut()
    except Exception:  # noqa: BLE001 - only the picture's content changes
        rng = np.random.default_rng(0)
        photo = (np.cumsum(np.cumsum(rng.random((512, 512, 3)), 0), 1) % 256).astype(np.uint8)
    reps = math.ceil(size / photo.shape[0]), math.ceil(size / photo.shape[1]), 1
    return np.ascontiguousarray(np.tile(photo, reps)[:size, :size])


class Worker:
    def __init__(self, model: str, engine: str) -> None:
        import texup

        self.upscaler = texup.Upscaler(model, engine=engine, device="cpu")

    def run(self, pixels: np.ndarray) -> np.ndarray:
        from texup.inference.pipeline import UpscaleOptions

        return self.upscaler.upscale_array(pixels, UpscaleOptions(seamless="off"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--context", type=int, default=32, help="rows of the neighbour band each band sees")
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--engine", default="ncnn")
    args = parser.parse_args()

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with local_cluster(nodes=2, cpus_per_node=1) as address:
        ray.init(address=address, log_to_driver=False)
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        remote = ray.remote(Worker)
        actors = [
            remote.options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                args.model, args.engine
            )
            for node in nodes[:2]
        ]
        image = test_image(args.size)
        warm = image[:64, :64]
        ray.get([a.run.remote(warm) for a in actors])  # models loaded, engines measured: not timed

        start = time.perf_counter()
        whole = ray.get(actors[0].run.remote(image))
        t_whole = time.perf_counter() - start

        h = image.shape[0]
        cut = h // 2
        spans = [(0, cut), (cut, h)]
        start = time.perf_counter()
        refs = []
        for (r0, r1), actor in zip(spans, actors):
            c0, c1 = max(0, r0 - args.context), min(h, r1 + args.context)
            refs.append((r0, r1, c0, actor.run.remote(np.ascontiguousarray(image[c0:c1]))))
        scale = whole.shape[0] // h
        stitched = np.empty_like(whole)
        moved = image.nbytes
        for r0, r1, c0, ref in refs:
            band = ray.get(ref)
            moved += band.nbytes
            stitched[r0 * scale : r1 * scale] = band[(r0 - c0) * scale : (r1 - c0) * scale]
        t_bands = time.perf_counter() - start

    diff = np.abs(stitched.astype(np.int16) - whole.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
    print(f"machine: {describe()}")
    print(
        f"{args.size}x{args.size} -> {whole.shape[1]}x{whole.shape[0]}, {args.model} on {args.engine}, "
        f"context {args.context} rows"
    )
    print(f"whole on 1 node : {t_whole:6.2f} s")
    print(f"2 bands, 2 nodes: {t_bands:6.2f} s   speed-up {t_whole / t_bands:.2f}x")
    print(f"object store    : {moved / 1e6:.1f} MB moved for the bands")
    print(f"stitched vs whole: PSNR {psnr:.1f} dB, largest difference {int(diff.max())} levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
