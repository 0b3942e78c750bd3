"""Time to first result through ``python -m texup worker``: cold (process start + model load) and warm.

    .venv/bin/python scripts/bench_worker.py                      # 512^2 texture, realesr-animevideov3
    .venv/bin/python scripts/bench_worker.py --model realesrgan-x4plus --size 512

Starts the worker exactly as the Blender add-on does (a subprocess speaking JSON lines), sends one upscale
job for a real 512x512 texture crop (tests/realdata.py, brick.png as RGB) and times, from the moment the
process is spawned: the ``hello`` line (interpreter + torch import), the first ``result`` (cold: model load
from the safetensors cache + inference), then a second job on the same warm worker (inference only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from realdata import real_image  # noqa: E402

from texup.imageio import write_image  # noqa: E402


def _wait_for(stream: IO[str], job_id: str | None, kinds: set[str]) -> dict[str, Any]:
    for line in stream:
        message = json.loads(line)
        if message.get("type") == "error":
            raise RuntimeError(f"worker error: {message.get('kind')}: {message.get('message')}")
        if message.get("type") in kinds and (job_id is None or message.get("id") == job_id):
            return message
    raise RuntimeError("worker closed its output before answering")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesr-animevideov3", help="model name (default realesr-animevideov3)")
    parser.add_argument("--size", type=int, default=512, help="texture side (default 512)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    gray = real_image("brick.png", (0, 0, args.size, args.size))
    texture = np.ascontiguousarray(np.repeat(gray, 3, axis=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "core")}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.model}, {args.size}x{args.size} RGB texture")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "brick.png"
        write_image(src, texture)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "texup", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            bufsize=1,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _wait_for(proc.stdout, None, {"hello"})
            t_hello = time.perf_counter() - t0
            figures: dict[str, Any] = {"model": args.model, "size": args.size, "hello_s": t_hello}
            for run in ("cold", "warm"):
                job = {
                    "type": "upscale",
                    "id": run,
                    "options": {"model": args.model},
                    "items": [{"key": "brick", "src": str(src), "dst": str(Path(tmp) / f"{run}.png")}],
                }
                t_send = time.perf_counter()
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
                _wait_for(proc.stdout, run, {"result"})
                now = time.perf_counter()
                figures[f"{run}_job_s"] = now - t_send
                figures[f"{run}_since_spawn_s"] = now - t0
                _wait_for(proc.stdout, run, {"done"})
            proc.stdin.write(json.dumps({"type": "shutdown"}) + "\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    figures["loadavg_after"] = os.getloadavg()[0]
    print(f"process start -> hello             {figures['hello_s']:7.2f} s")
    print(
        f"cold: spawn -> first result        {figures['cold_since_spawn_s']:7.2f} s "
        f"(job {figures['cold_job_s']:.2f} s: model load + inference)"
    )
    print(f"warm: second job -> result         {figures['warm_job_s']:7.2f} s")
    print(f"load average after {figures['loadavg_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
