"""Ray throughput: the same batch on a local Ray cluster of one node, then of two nodes (one CPU each).

    python scripts/bench_ray.py [--count 40] [--size 64] [--model realesr-animevideov3] [--engine ncnn]

Starts and stops its own cluster (`ray start --head`, `ray start --address` for the second node; `ray stop`
at the end: do not run it beside another Ray cluster on the same machine). Prints the machine, seconds and
files per second for each, and the ratio. On a machine with N cores, two one-CPU nodes can at best double the
throughput of one; each node's engine would use every core if Ray did not pin it, so the ratio also shows how
much one engine process leaves idle.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "core"))

from texup.cluster import local_cluster, run_on_ray  # noqa: E402
from texup.imageio import write_image  # noqa: E402
from texup.machine import describe  # noqa: E402
from texup.options import EngineChoice  # noqa: E402


def run(args: argparse.Namespace, nodes: int, folder: Path) -> float:
    with local_cluster(nodes=nodes, cpus_per_node=1) as address:
        out = folder / f"out{nodes}"
        tasks = [(str(p), str(out / p.name)) for p in sorted((folder / "in").glob("*.png"))]
        # One warm-up file per node, so model loading is not in the timing.
        choice = EngineChoice(engine=args.engine, device="cpu")
        run_on_ray(tasks[:nodes], model=args.model, choice=choice, options={}, address=address)
        start = time.perf_counter()
        outcomes = run_on_ray(tasks, model=args.model, choice=choice, options={}, address=address)
        seconds = time.perf_counter() - start
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
        return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--engine", default="ncnn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="texup-bench-ray-") as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        (folder / "in").mkdir()
        for i in range(args.count):
            write_image(folder / "in" / f"t{i:03d}.png", (rng.random((args.size, args.size, 3)) * 255).astype(np.uint8))
        one = run(args, 1, folder)
        two = run(args, 2, folder)
    print(f"machine: {describe()}")
    print(f"{args.count} files of {args.size}x{args.size}, {args.model} on {args.engine}")
    print(f"1 node : {one:6.2f} s  {args.count / one:6.2f} files/s")
    print(f"2 nodes: {two:6.2f} s  {args.count / two:6.2f} files/s")
    print(f"ratio  : {one / two:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
