"""One large image on Ray: whole on one node vs its tiles split over two nodes (texup.cluster's tile split).

    python scripts/bench_ray_bands.py [--size 768] [--model realesr-animevideov3] [--engine ncnn] [--batch 3]

One local cluster of two one-CPU nodes (texup.cluster.local_cluster), everything in the same run:
(1) one --size x --size photo (scikit-image's astronaut, tiled) through ``run_on_ray`` with ``split=False``
(whole, on one actor) and then with the split rule (its tiles on both nodes' actors, the pipeline on the driver);
(2) --batch such images, ``split=False`` vs the rule (the last file is split; the actor that frees first takes
its tiles, the other joins). Prints the machine, each call's wall time (which includes starting its two actors
and loading the model: the same in both), the file's own seconds (read, upscale, write), the ratios and the
PSNR of the split output against the whole one. Starts and stops its own cluster (`ray stop` at the end: do
not run it beside another Ray cluster on this machine).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "core"))

from texup.cluster import local_cluster, run_on_ray  # noqa: E402
from texup.imageio import read_image, write_image  # noqa: E402
from texup.machine import describe  # noqa: E402


def test_image(size: int, shift: int = 0) -> np.ndarray:
    try:
        from skimage import data

        photo = data.astronaut()
    except Exception:  # noqa: BLE001 - only the picture's content changes
        rng = np.random.default_rng(0)
        photo = (np.cumsum(np.cumsum(rng.random((512, 512, 3)), 0), 1) % 256).astype(np.uint8)
    photo = np.roll(photo, shift, axis=1)
    reps = math.ceil(size / photo.shape[0]), math.ceil(size / photo.shape[1]), 1
    return np.ascontiguousarray(np.tile(photo, reps)[:size, :size])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--engine", default="ncnn")
    parser.add_argument("--batch", type=int, default=3, help="images in the batch comparison (0: skip it)")
    args = parser.parse_args()

    print(f"machine: {describe()}")
    print(f"{args.size}x{args.size} photo(s), {args.model} on {args.engine} cpu, two one-CPU Ray nodes")
    with tempfile.TemporaryDirectory() as tmp, local_cluster(nodes=2, cpus_per_node=1) as address:
        folder = Path(tmp)
        sources = []
        for i in range(max(1, args.batch)):
            sources.append(folder / f"in{i}.png")
            write_image(sources[-1], test_image(args.size, shift=37 * i))

        def upscale(names: list[str], split: bool) -> tuple[float, list]:
            tasks = [(str(sources[i]), str(folder / f"{n}.png")) for i, n in enumerate(names)]
            start = time.perf_counter()
            outcomes = run_on_ray(
                tasks,
                model=args.model,
                options={"seamless": "off"},
                engine=args.engine,
                device="cpu",
                address=address,
                split=split,
            )
            wall = time.perf_counter() - start
            for o in outcomes:
                if not o.ok:
                    raise SystemExit(f"failed: {o.error}")
            return wall, outcomes

        upscale(["warm"], False)  # Ray's worker processes and the model files warm: not counted
        whole_wall, [whole] = upscale(["whole"], False)
        split_wall, [split] = upscale(["split"], True)
        quality = psnr(read_image(folder / "split.png").pixels, read_image(folder / "whole.png").pixels)
        print(f"one image, whole on 1 node   : wall {whole_wall:6.2f} s, file {whole.seconds:6.2f} s")
        print(
            f"one image, split over {split.workers} nodes: wall {split_wall:6.2f} s, file {split.seconds:6.2f} s"
            f"   speed-up {whole_wall / split_wall:.2f}x wall, {whole.seconds / split.seconds:.2f}x file"
        )
        print(f"split vs whole: PSNR {quality:.1f} dB" + (" (identical)" if math.isinf(quality) else ""))
        if args.batch > 1:
            names = [f"b{i}" for i in range(args.batch)]
            plain_wall, _ = upscale(names, False)
            rule_wall, outcomes = upscale(names, True)
            spread = ", ".join(f"{Path(o.src).name}: {o.workers} actor(s)" for o in outcomes)
            print(f"{args.batch} images, whole files only: wall {plain_wall:6.2f} s")
            print(
                f"{args.batch} images, split rule      : wall {rule_wall:6.2f} s"
                f"   speed-up {plain_wall / rule_wall:.2f}x"
            )
            print(f"   ({spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
