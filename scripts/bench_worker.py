"""The worker as the Blender add-on runs it: time to first result, and a torch environment against the bundled engine.

    .venv/bin/python scripts/bench_worker.py                      # 512^2 texture, realesr-animevideov3
    .venv/bin/python scripts/bench_worker.py --model realesrgan-x4plus --size 512
    .venv/bin/python scripts/bench_worker.py --scene              # torch environment vs bundled ncnn, a scene
    .venv/bin/python scripts/bench_worker.py --scene --sizes 512,128,128,100,75 --rounds 3

Default mode: starts the worker exactly as the Blender add-on does (a subprocess speaking JSON lines), sends one
upscale job for a real 512x512 texture crop (tests/realdata.py, brick.png as RGB) and times, from the moment the
process is spawned: the ``hello`` line (interpreter + torch import), the first ``result`` (cold: model load
from the safetensors cache + inference), then a second job on the same warm worker (inference only).

``--scene`` (issue 19: after "Install PyTorch" CPU upscales were 5-10x slower): the same job (a scene's textures,
default model and settings: engine auto, tile automatic) through two workers of this interpreter, whole process
from spawn to ``done``: the *torch environment* (torch and ncnn importable, as in the add-on's PyTorch
environment with the bundled engines) and the *bundled engine* (torch hidden: ``sys.modules['torch'] = None``,
as Blender's own Python with the extension's ncnn wheel). Each has its own model cache (TEXUP_HOME): the first
round of each includes its first-use engine measurement (``first use``), the later rounds use the recorded choice
(``measured``). Rounds alternate A B A B; the figures are medians over the measured rounds and their pairwise ratio,
with the peak resident memory of each worker (VmHWM) and the engine each chose. The first line names the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
from texup.machine import describe  # noqa: E402

#: How each variant starts the worker: ``python -c`` so that the bundled one can hide torch first; both run
#: the CLI entry as ``python -m texup worker`` does (sys.argv, so the program's malloc settings apply).
WORKER_CODE = {
    "torch-env": "import sys; sys.argv = ['texup', 'worker']; from texup.cli.main import main; sys.exit(main())",
    "bundled": "import sys; sys.modules['torch'] = None; sys.argv = ['texup', 'worker']; "
    "from texup.cli.main import main; sys.exit(main())",
}
SCENE_IMAGES = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "color.png")


def _wait_for(stream: IO[str], job_id: str | None, kinds: set[str], log: list[dict] | None = None) -> dict[str, Any]:
    for line in stream:
        message = json.loads(line)
        if log is not None:
            log.append({**message, "_at": time.perf_counter()})
        if message.get("type") == "error":
            raise RuntimeError(f"worker error: {message.get('kind')}: {message.get('message')}")
        if message.get("type") in kinds and (job_id is None or message.get("id") == job_id):
            return message
    raise RuntimeError("worker closed its output before answering")


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _scene_run(variant: str, home: Path, sources: list[Path], out_dir: Path) -> dict[str, Any]:
    """One worker of ``variant``, one job upscaling ``sources`` into the new folder ``out_dir``, shut down:
    seconds from spawn to done, peak RSS, the worker's messages."""
    out_dir.mkdir(parents=True)
    items = [{"key": src.stem, "src": str(src), "dst": str(out_dir / f"{src.stem}_x4.png")} for src in sources]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "core"), "TEXUP_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_CODE[variant]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    events: list[dict] = []
    try:
        _wait_for(proc.stdout, None, {"hello"})
        proc.stdin.write(json.dumps({"type": "upscale", "id": "scene", "options": {}, "items": items}) + "\n")
        proc.stdin.flush()
        _wait_for(proc.stdout, "scene", {"done"}, events)
        seconds = time.perf_counter() - t0
        peak = _peak_rss(proc.pid)
        proc.stdin.write(json.dumps({"type": "shutdown"}) + "\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    notes = [e for e in events if e.get("type") == "message"]
    # The first-use engine measurement: from its first line to its last (all of them come before any progress).
    measuring = notes[-1]["_at"] - notes[0]["_at"] if len(notes) > 1 else 0.0
    return {"seconds": seconds, "peak_mib": peak / 2**20, "notes": [e["text"] for e in notes], "measuring_s": measuring}


def _chosen(home: Path) -> str:
    """The engine the variant's auto recorded for the default model (engines.json), or "?"."""
    try:
        data = json.loads((home / "engines.json").read_text())
    except (OSError, ValueError):
        return "? (nothing recorded)"
    return "; ".join(
        f"{entry.get('choice')}{' (provisional: busy)' if entry.get('busy') else ''}"
        for by_model in data.values()
        for entry in by_model.values()
    )


def scene(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {describe()}")
    print(
        f"scene: {', '.join(f'{s}x{s}' for s in sizes)} RGB textures, default model and settings, {args.rounds} rounds"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sources = []
        for index, (side, image) in enumerate(zip(sizes, SCENE_IMAGES * len(sizes))):
            sources.append(tmp / f"tex{index}.png")
            write_image(sources[-1], np.ascontiguousarray(real_image(image, (0, 0, side, side))[:, :, :3]))
        homes = {variant: tmp / f"home-{variant}" for variant in WORKER_CODE}
        runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in WORKER_CODE}
        for round_index in range(args.rounds + 1):
            for variant in WORKER_CODE:
                run = _scene_run(variant, homes[variant], sources, tmp / f"out-{variant}-{round_index}")
                runs[variant].append(run)
                kind = "first use" if round_index == 0 else "measured"
                print(
                    f"  round {round_index} {variant:9s} {kind:9s} {run['seconds']:7.2f} s  "
                    f"peak {run['peak_mib']:6.0f} MiB  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        print("engine chosen: " + ", ".join(f"{v}: {_chosen(homes[v])}" for v in WORKER_CODE))
        for variant in WORKER_CODE:
            for note in runs[variant][0]["notes"]:
                print(f"  {variant} first use: {note}")
            if runs[variant][0]["measuring_s"]:
                print(f"  {variant} first use: the engine measurement took {runs[variant][0]['measuring_s']:.1f} s")
    a, b = runs["torch-env"], runs["bundled"]
    first = a[0]["seconds"] / b[0]["seconds"]
    measured = [x["seconds"] / y["seconds"] for x, y in zip(a[1:], b[1:])]
    print(
        f"first use (engine measurement included): torch-env {a[0]['seconds']:.2f} s, "
        f"bundled {b[0]['seconds']:.2f} s, ratio {first:.2f}"
    )
    if measured:
        med_a = statistics.median(x["seconds"] for x in a[1:])
        med_b = statistics.median(y["seconds"] for y in b[1:])
        print(
            f"measured (median of {len(measured)}): torch-env {med_a:.2f} s, bundled {med_b:.2f} s, "
            f"ratio (median of pairs) {statistics.median(measured):.2f} [{min(measured):.2f}-{max(measured):.2f}]"
        )
    print(
        "peak resident memory (max): torch-env "
        f"{max(x['peak_mib'] for x in a):.0f} MiB, bundled {max(y['peak_mib'] for y in b):.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(), "sizes": sizes, "runs": runs}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="realesr-animevideov3", help="model name (default realesr-animevideov3)")
    parser.add_argument("--size", type=int, default=512, help="texture side (default 512)")
    parser.add_argument("--scene", action="store_true", help="torch environment vs bundled engine on a scene")
    parser.add_argument(
        "--sizes", default="512,128,128,100,75", help="--scene: texture sides (default 512,128,128,100,75)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="--scene: measured rounds after the first use (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.scene:
        return scene(args)
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
