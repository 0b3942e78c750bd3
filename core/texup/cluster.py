"""Spread a batch of files over a Ray cluster: one warm model per node (or per GPU), files on shared storage.

``texup upscale --ray [ADDRESS]`` plans the batch as on one machine (outputs, the record of what texup wrote)
and hands the (input, output) pairs to :func:`run_on_ray`. Each Ray actor loads the model once and upscales
the files it is given, one at a time; the driver gives an actor its next file as soon as it returns one, so
fast and slow nodes stay busy to the end. A file that fails is one outcome with a one-line error (as on one
machine); a node that dies has its file given to another actor once, then reported failed. Paths must mean
the same on every node (a shared file system, as render farms have).

Placement: with GPUs in the cluster and a device that can use them (``auto``, ``cuda``), one actor per GPU;
otherwise one actor per node, reserving all its CPUs (the engines use every core of a node themselves: more
processes per node would only compete). Ray is an optional dependency (``pip install 'texup[ray]'``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from texup.errors import TexupError


@dataclass(frozen=True)
class RayOutcome:
    """What happened to one file: ``error`` is one line when ``ok`` is False; where it ran (node, pid)."""

    index: int
    src: str
    dst: str
    ok: bool
    error: str | None
    seconds: float
    node: str
    pid: int


class _Upscaling:
    """The actor's body (a plain class: ``ray.remote`` wraps it at run time, so importing texup needs no Ray)."""

    def __init__(self, model: str, engine: str, device: str, precision: str, max_pixels: int | None) -> None:
        if max_pixels is not None:
            os.environ["TEXUP_MAX_PIXELS"] = str(max_pixels)
        from texup import api

        self.upscaler = api.get_upscaler(model, engine=engine, device=device, precision=precision)
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def upscale(self, index: int, src: str, dst: str, options: dict[str, Any]) -> RayOutcome:
        from pathlib import Path

        from texup.inference.pipeline import UpscaleOptions

        start = time.monotonic()
        error = None
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            self.upscaler.upscale_file(src, dst, UpscaleOptions(**options))
        except (TexupError, OSError, ValueError, RuntimeError, MemoryError) as err:
            error = " ".join(str(err).split()) or type(err).__name__
        except Exception as err:  # noqa: BLE001 - one file's problem, never the batch's: reported, not raised
            error = f"{type(err).__name__}: {' '.join(str(err).split())}"
        return RayOutcome(index, src, dst, error is None, error, time.monotonic() - start, self.node, os.getpid())


def _placements(ray: Any, device: str) -> list[dict[str, Any]]:
    """Actor options: one per GPU when the cluster has GPUs and ``device`` may use them, else one per node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = int(sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))
    if gpus and (device == "auto" or device.startswith("cuda")):
        return [{"num_gpus": 1, "num_cpus": 1} for _ in range(gpus)]
    placements = []
    for node in nodes:
        cpus = node.get("Resources", {}).get("CPU", 0)
        if cpus >= 1:
            placements.append(
                {
                    "num_cpus": cpus,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False),
                }
            )
    return placements


def run_on_ray(
    tasks: Sequence[tuple[str, str]],
    *,
    model: str,
    options: dict[str, Any],
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    address: str | None = None,
    max_pixels: int | None = None,
    on_outcome: Callable[[RayOutcome], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> list[RayOutcome]:
    """Upscale ``tasks`` (absolute ``(src, dst)`` paths) on the Ray cluster at ``address`` (None: the one
    ``RAY_ADDRESS`` names, else a new local one); ``options`` are :class:`UpscaleOptions` fields. Returns one
    outcome per task, in task order; ``on_outcome`` sees each as it arrives (for progress and the record).
    Raises ``RuntimeError`` when Ray is missing or the cluster has no node that can run a worker.
    """
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("--ray needs Ray: pip install 'texup[ray]'") from err
    say = status or (lambda line: None)
    if not ray.is_initialized():
        ray.init(
            address=address,
            log_to_driver=False,
            configure_logging=False,
            **({} if address else {"include_dashboard": False}),
        )
    placements = _placements(ray, device)
    if not placements:
        raise RuntimeError("the Ray cluster has no node with a CPU or GPU to run a texup worker on")
    remote = ray.remote(_Upscaling)
    actors = [remote.options(**p).remote(model, engine, device, precision, max_pixels) for p in placements]
    say(f"{len(actors)} Ray worker(s) on {len(ray.nodes())} node(s)")

    queue = deque(range(len(tasks)))
    tries = {i: 0 for i in range(len(tasks))}
    outcomes: dict[int, RayOutcome] = {}
    inflight: dict[Any, tuple[Any, int]] = {}
    idle = list(actors)

    def finish(outcome: RayOutcome) -> None:
        outcomes[outcome.index] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    while queue or inflight:
        while queue and idle:
            actor, index = idle.pop(), queue.popleft()
            src, dst = tasks[index]
            inflight[actor.upscale.remote(index, src, dst, options)] = (actor, index)
        if not inflight:  # every actor died: the rest cannot run
            for index in list(queue):
                src, dst = tasks[index]
                finish(RayOutcome(index, src, dst, False, "no Ray worker left to run it", 0.0, "", 0))
            queue.clear()
            break
        done, _ = ray.wait(list(inflight), num_returns=1)
        ref = done[0]
        actor, index = inflight.pop(ref)
        try:
            finish(ray.get(ref))
            idle.append(actor)
        except ray.exceptions.RayError as err:  # the actor (or its node) is gone: this file goes elsewhere once
            tries[index] += 1
            if tries[index] < 2:
                queue.appendleft(index)
            else:
                src, dst = tasks[index]
                finish(RayOutcome(index, src, dst, False, f"Ray worker lost twice ({type(err).__name__})", 0.0, "", 0))
            say(f"a Ray worker was lost ({type(err).__name__}); {len(idle) + len(inflight)} left")
    for actor in actors:
        ray.kill(actor)
    return [outcomes[i] for i in range(len(tasks))]


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, *, temp_dir: str | None = None) -> Iterator[str]:
    """A Ray cluster of ``nodes`` node processes on this machine (``ray start --head``, then ``ray start
    --address`` for each other node), each offering ``cpus_per_node`` CPUs: for trying ``--ray``, the tests and
    the benchmarks. Yields its address. At the end ``ray stop --force``, which stops every Ray process on this
    machine: do not use it beside another Ray cluster here. Raises ``RuntimeError`` with Ray's output when a
    node does not start."""
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    head = [
        ray_cli,
        "start",
        "--head",
        "--port",
        str(port),
        "--num-cpus",
        str(cpus_per_node),
        "--include-dashboard=false",
        "--disable-usage-stats",
    ] + (["--temp-dir", temp_dir] if temp_dir else [])
    other = [ray_cli, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", str(cpus_per_node)]
    try:
        for command in [head] + [other] * (nodes - 1):
            run = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:3])} failed: {(run.stdout + run.stderr)[-1500:]}")
        yield f"127.0.0.1:{port}"
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)
