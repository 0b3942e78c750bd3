"""Choosing and opening an engine: explicit choices are honoured, ``auto`` is decided by measurement.

Candidates on a machine, in order of preference when nothing was measured: torch on CUDA, torch on MPS,
ncnn on a hardware Vulkan GPU (never a software one such as llvmpipe), ncnn on the CPU (the engine the
Blender extension bundles: an unmeasured guess is never slower than it), torch bf16 on a CPU with native
bf16, torch fp32 on the CPU. With more than one candidate, the first ``auto`` use of a
model on a machine times one small tile on each (:func:`calibrate`, a few seconds) and keeps the fastest;
the choice is cached in ``TEXUP_HOME/engines.json`` keyed by the machine (CPU model and flags, GPU names,
library versions) and the model, so later runs open the winner at once. ``texup engines`` shows all of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from texup.engines import spec as registry
from texup.engines.base import Engine, EngineUnavailable
from texup.engines.spec import Candidate
from texup.engines.torch_spec import torch_available
from texup.machine import cpu_model, simd_flags
from texup.weights.ref import ModelRef

#: Core tile side used to time candidates (input pixels, plus 8 of context each side).
CALIBRATION_TILE = 48
#: Timed rounds per calibration: every candidate once per round, in turn, each keeping its fastest round, so a
#: burst of load from another program slows one round of every candidate rather than all of one candidate.
CALIBRATION_ROUNDS = 3
#: A calibration during which other programs used more than this share of all CPUs is provisional: it is used,
#: and measured again on the first use when the machine is quieter (a busy machine can reverse the order: engines
#: with spinning thread pools suffer more from sharing the cores than others).
BUSY_SHARE = 0.25
#: How long :func:`others_load` watches the CPUs when asked about "now".
LOAD_WINDOW_S = 0.2
CALIBRATION_FILE = "engines.json"
#: ``status(message)``: one line per calibration step (the CLI prints them, the worker sends them).
StatusCallback = Callable[[str], None]


__all__ = ["Candidate", "torch_available"]  # re-exported: they lived here before the engine specs


def candidates() -> list[Candidate]:
    """What can run here, best guess first (see the module docstring): every installed engine's candidates
    (:attr:`EngineSpec.candidates <texup.engines.spec.EngineSpec.candidates>`) by their rank."""
    ranked = [pair for spec in registry.registered() if spec.available() for pair in spec.candidates()]
    return [cand for _rank, cand in sorted(ranked, key=lambda pair: pair[0])]


@functools.lru_cache(maxsize=1)
def machine_key() -> str:
    """What decides which engine is fastest here: CPU model and SIMD flags, core count, and each engine's part
    (GPUs, library versions: :attr:`EngineSpec.machine <texup.engines.spec.EngineSpec.machine>`)."""
    parts: dict[str, Any] = {"machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count()}
    flags = simd_flags()
    if flags:
        parts["flags"] = flags
    for spec in registry.registered():
        parts.update(spec.machine())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def calibration_path() -> Path:
    from texup.weights import cache

    return cache.texup_home() / CALIBRATION_FILE


#: engines.json holds a few hundred bytes per (machine, model, request); a larger file is not texup's.
MAX_CALIBRATION_BYTES = 4 << 20


def _valid_record(entry: Any) -> bool:
    """Whether one recorded measurement has the shape texup writes: a choice naming an engine, a device and a
    precision, and seconds per megapixel as finite numbers (``texup engines`` prints them)."""
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("choice"), str)
        or not registry.choice_pattern().fullmatch(entry["choice"])
    ):
        return False
    seconds = entry.get("seconds_per_mpx", {})
    return isinstance(seconds, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in seconds.items()
    )


def read_calibration() -> dict[str, Any]:
    """The cached measurements: ``{machine_key: {model_key: {"choice": key, "seconds": {key: s}, ...}}}``.

    Only well-formed records: a file that cannot be read as texup wrote it (not a regular file, larger than
    :data:`MAX_CALIBRATION_BYTES`, not UTF-8 JSON, nested too deeply for the parser, an object of the wrong shape)
    reads as empty and a record of the wrong shape is left out, so that choice is measured again and the file
    rewritten with the new record; it is never an error (a deeply nested engines.json used to make every
    ``--engine auto`` run fail until it was deleted).
    """
    try:
        # O_NONBLOCK: a FIFO in its place must not block the open; then only a regular file is read.
        fd = os.open(calibration_path(), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return {}
            raw = fh.read(MAX_CALIBRATION_BYTES + 1)
    except OSError:
        return {}
    if len(raw) > MAX_CALIBRATION_BYTES:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return {}
    if not isinstance(data, dict):
        return {}
    clean: dict[str, Any] = {}
    for machine, records in data.items():
        if isinstance(records, dict):
            kept = {key: entry for key, entry in records.items() if _valid_record(entry)}
            if kept:
                clean[machine] = kept
    return clean


def _write_calibration(data: dict[str, Any]) -> None:
    from texup._atomic import atomic_path

    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


def _request_key(model: Any, device: str, precision: str) -> str:
    return f"{ModelRef.of(model).speed_key()}|device={device}|precision={precision}"


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far: ``busy`` and ``total`` summed over all CPUs (/proc/stat), ``own`` of this process."""

    busy: float
    total: float
    own: float


def cpu_sample() -> CpuSample | None:
    """The machine's and this process's CPU time now (Linux: /proc/stat), else None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = values[3] + values[4]
    times = os.times()
    return CpuSample((sum(values) - idle) / ticks, sum(values) / ticks, times.user + times.system)


def others_load(since: CpuSample | None = None, *, window: float = LOAD_WINDOW_S) -> float | None:
    """The share of all CPUs (0..1) that other programs used since ``since`` (None: over the next ``window``
    seconds); this process's own threads do not count. Without /proc/stat: the 1-minute load average per CPU
    (which does count this process), capped at 1; None where neither exists (Windows)."""
    if since is None:
        since = cpu_sample()
        if since is not None:
            time.sleep(window)
    now = cpu_sample()
    if since is not None and now is not None and now.total > since.total:
        others = (now.busy - since.busy) - (now.own - since.own)
        return min(1.0, max(0.0, others / (now.total - since.total)))
    try:
        return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except (AttributeError, OSError):
        return None


def _provisional(entry: dict[str, Any]) -> bool:
    """Whether a recorded measurement should be taken again once the machine is quiet: taken while it was busy,
    or by a texup that timed a single run (recorded without ``rounds``)."""
    return bool(entry.get("busy")) or not entry.get("rounds")


def cached_choice(model: Any, device: str = "auto", precision: str = "auto") -> Candidate | None:
    """The measured winner for ``model`` and this request on this machine, if it was measured.

    Reads only the calibration file (no torch import, no device probing), so an auto run whose choice is
    recorded starts as fast as an explicit one. A provisional record (measured while the machine was busy, or by
    an older texup from a single run) counts only while the machine is still busy: once it is quiet, None, so
    the caller measures again.
    """
    entry = read_calibration().get(machine_key(), {}).get(_request_key(model, device, precision))
    if not isinstance(entry, dict):
        return None
    if _provisional(entry):
        load = others_load()
        if load is None or load <= BUSY_SHARE:
            return None
    engine, _, rest = str(entry.get("choice", "")).partition("/")
    dev, _, prec = rest.partition("/")
    if engine not in registry.engine_names() or not dev or not prec:
        return None
    return Candidate(engine, dev, prec)


def time_engine(engine: Engine, *, tile: int = CALIBRATION_TILE, repeats: int = 1, warm_up: bool = True) -> float:
    """Seconds per output megapixel of ``engine`` on a ``tile`` + 2*8 pixel noise tile: the fastest of ``repeats``
    runs (after one warm-up run unless ``warm_up`` is False)."""
    side = tile + 16
    x = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    if warm_up:
        engine.run_tile(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run_tile(x)
        best = min(best, time.perf_counter() - start)
    return best / (side * side * engine.scale**2 / 1e6)


def calibrate(
    model: Any,
    pool: list[Candidate] | None = None,
    *,
    status: StatusCallback | None = None,
    request: tuple[str, str] = ("auto", "auto"),
) -> tuple[Engine, dict[str, float]]:
    """Open every candidate in ``pool`` (default: all) for ``model``, time them on one small tile in
    :data:`CALIBRATION_ROUNDS` interleaved rounds (each keeps its fastest), cache the winner; return it and the
    seconds per output megapixel of each. The record says how much of the machine other programs used meanwhile
    (:data:`BUSY_SHARE`).

    Candidates that fail to open or to run (an engine that cannot run this model) are skipped with a status line.
    """
    started = cpu_sample()
    times: dict[str, float] = {}
    errors: dict[str, str] = {}
    pool = candidates() if pool is None else pool
    opened: list[tuple[Candidate, Engine]] = []
    for cand in pool:
        try:
            engine = _open(model, cand.engine, cand.device, cand.precision, "auto")
            times[cand.key] = time_engine(engine)
        except (EngineUnavailable, ValueError, OSError) as err:
            errors[cand.key] = str(err)
            if status is not None:
                status(f"engine {cand.key}: cannot run this model ({err})")
            continue
        opened.append((cand, engine))
    for _ in range(CALIBRATION_ROUNDS - 1):
        for cand, engine in opened:
            times[cand.key] = min(times[cand.key], time_engine(engine, warm_up=False))
    if not opened:
        raise EngineUnavailable(
            "no engine can run this model here: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )
    if status is not None:
        for cand, _ in opened:
            status(f"engine {cand.key}: {times[cand.key]:.2f} s per output megapixel")
    choice, winner = min(opened, key=lambda pair: times[pair[0].key])
    load = others_load(started)
    busy = load is not None and load > BUSY_SHARE
    if busy and status is not None:
        status(
            f"other programs used {load:.0%} of the CPUs meanwhile: this choice will be measured again when the "
            "machine is quieter"
        )
    data = read_calibration()
    data.setdefault(machine_key(), {})[_request_key(model, *request)] = {
        "choice": choice.key,
        "seconds_per_mpx": times,
        "errors": errors,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tile": CALIBRATION_TILE,
        "rounds": CALIBRATION_ROUNDS,
        "others_load": None if load is None else round(load, 2),
        "busy": busy,
        "pool": [c.key for c in pool],
    }
    try:
        _write_calibration(data)
    except (OSError, ValueError, RecursionError) as err:  # an unwritable home costs a re-measurement next time
        if status is not None:
            status(f"could not record the engine choice in {calibration_path()}: {err}")
    return winner, times


def _open(model: Any, engine: str, device: str, precision: str, layout: str) -> Engine:
    return registry.get_spec(engine).open(model, device, precision, layout)


def engine_for_device(device: str) -> str | None:
    """The engine a device name implies (vulkan -> ncnn; cuda/mps -> torch: each spec's ``implied_by``); cpu/auto
    -> None (either)."""
    return registry.implied_engine(device)


def _engine_with(flag: str) -> str:
    """The first registered engine whose spec has ``flag`` (``layouts``, ``runs_loaded``) set."""
    return next(spec.name for spec in registry.registered() if getattr(spec, flag))


def open_engine(
    model: Any,
    *,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    layout: str = "auto",
    status: StatusCallback | None = None,
) -> Engine:
    """Open the engine that runs ``model`` (a registry name, a weights file, or a LoadedModel).

    ``engine``: "auto", "torch" or "ncnn"; ``device``: "auto", "cpu", "cuda[:N]", "mps", "vulkan[:N]" (a
    device implies its engine); ``precision``: "auto", "fp32", "bf16", "fp16"; ``layout`` (torch only):
    "auto", "nchw", "channels_last". With everything "auto" the engine is the measured fastest
    (:func:`calibrate`, cached). An explicit choice this machine cannot honour raises ValueError or
    :class:`~texup.engines.base.EngineUnavailable`; there is no silent fallback.
    """
    engine = engine.strip().lower()
    device = device.strip().lower()
    precision = precision.strip().lower()
    if engine != "auto":
        registry.get_spec(engine)  # ValueError for an unknown engine
    implied = engine_for_device(device)
    if engine != "auto" and implied is not None and implied != engine:
        raise ValueError(f"device {device!r} is run by the {implied} engine, not {engine}")
    if engine == "auto":
        # An in-memory torch module (a LoadedModel: training, tests, Python callers) runs where it is, in torch.
        in_memory = ModelRef.of(model).kind == "loaded"
        if implied is not None:
            engine = implied
        elif layout.strip().lower() != "auto":
            engine = _engine_with("layouts")
        elif in_memory:
            engine = _engine_with("runs_loaded")
        else:
            engine = ""
    if engine:
        return _open(model, engine, device, precision, layout)
    cached = cached_choice(model, device, precision)
    if cached is not None:
        try:
            return _open(model, cached.engine, cached.device, cached.precision, layout)
        except (EngineUnavailable, ValueError) as err:  # the machine changed under the same key: measure again
            if status is not None:
                status(f"the recorded choice {cached.key} cannot run now ({err})")
    pool = [c for c in candidates() if device == "auto" or c.device == device]
    if precision != "auto":
        if precision not in registry.ALL_PRECISIONS:  # as the engines say it
            raise ValueError(f"unknown precision {precision!r}: expected auto, {', '.join(registry.ALL_PRECISIONS)}")
        pool = [
            Candidate(c.engine, c.device, precision)
            for c in pool
            if precision in registry.get_spec(c.engine).precisions_on(c.device)
        ]
        pool = list(dict.fromkeys(pool))
    if not pool:
        raise EngineUnavailable(
            f"no installed engine runs on device {device!r} with precision {precision!r} here "
            f"(available: {', '.join(c.key for c in candidates()) or 'none; pip install ncnn or torch'})"
        )
    if len(pool) == 1:
        return _open(model, pool[0].engine, pool[0].device, pool[0].precision, layout)
    if status is not None:
        status("measuring which engine is fastest for this model on this machine (once)")
    winner, _times = calibrate(model, pool, status=status, request=(device, precision))
    return winner


def check_device(device: str) -> str:
    """Validate a device name against this machine; return it as the engines will use it ("auto" stays).

    ValueError (naming what exists) for a GPU that is not here; EngineUnavailable when its engine is missing.
    """
    key = device.strip().lower()
    implied = engine_for_device(key)
    if implied is not None:
        return registry.get_spec(implied).check_device(key)
    if key not in ("auto", "cpu"):
        names = ["auto", *registry.device_patterns()]
        raise ValueError(f"unknown device {device!r}: expected {', '.join(names[:-1])} or {names[-1]}")
    return key


def summary() -> dict[str, Any]:
    """What can run here and what was measured (``texup engines``): JSON-friendly."""
    measured = read_calibration().get(machine_key(), {})
    out: dict[str, Any] = {"machine_key": machine_key(), "cpu": cpu_model()}
    for spec in registry.registered():
        out.update(spec.summary())
    out |= {
        "candidates": [c.key for c in candidates()],
        "measured": measured,
        "calibration_file": str(calibration_path()),
    }
    return out


def devices_here() -> list[dict[str, Any]]:
    """The devices the installed engines run on here (the worker's ``info``): ``{key, name, engines, software}``,
    in the engines' registration order; a device's engines in the order of :func:`candidates` (the bundled engine
    first on the CPU)."""
    order: dict[tuple[str, str], int] = {}
    for index, cand in enumerate(candidates()):
        order.setdefault((cand.engine, cand.device), index)
    found: dict[str, dict[str, Any]] = {}
    for spec in registry.registered():
        if not spec.available():
            continue
        for dev in spec.found_devices():
            new = {"key": dev.key, "name": dev.name, "engines": [], "software": dev.software}
            entry = found.setdefault(dev.key, new)
            entry["engines"].append(spec.name)
    for key, entry in found.items():
        ranks = {name: order.get((name, key), len(order)) for name in entry["engines"]}
        entry["engines"] = sorted(ranks, key=ranks.__getitem__)
    return list(found.values())
