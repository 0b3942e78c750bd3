"""The engine boundary: what the tiled pipeline asks of whatever runs the network on one tile.

The pipeline (:mod:`texup.inference.pipeline`) plans tiles, blends them and applies the colour, alpha and
normal-map policies on numpy arrays; an engine only turns one tile into its upscaled tile. Engines:
``torch`` (:mod:`texup.engines.torch_engine`: CPU, CUDA, MPS; bf16/fp16) and ``ncnn``
(:mod:`texup.engines.ncnn_engine`: CPU Winograd, Vulkan on any GPU). This module imports neither.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from texup.errors import TexupError
from texup.options import ENGINES

#: ``cancel()`` -> True when the caller wants the work to stop.
CancelCallback = Callable[[], bool]
#: ``step(fraction)``: how far the current tile is, 0..1 (called from inside :meth:`Engine.run_tile`).
StepCallback = Callable[[float], None]

#: The engines' names (:data:`texup.options.ENGINES` without "auto"; each has a spec, :mod:`texup.engines.spec`).
ENGINE_NAMES: tuple[str, ...] = tuple(e for e in ENGINES if e != "auto")
#: How often, at most, an engine polls ``cancel`` inside one tile (seconds of work between polls).
CANCEL_POLL_S = 0.25


class Cancelled(TexupError):
    """The caller's ``cancel()`` returned True; the upscale stopped and produced no output."""


class EngineOutOfMemory(TexupError):
    """The device could not hold one tile's activations; the pipeline retries with smaller tiles."""


class EngineUnavailable(TexupError):
    """The engine or device asked for cannot run here (not installed, no such device, model not supported)."""


@runtime_checkable
class Engine(Protocol):
    """Runs one network on one device. Attributes are plain values (no torch or ncnn types).

    Attributes:
        name: "torch" or "ncnn".
        device: where it runs: "cpu", "cuda:0", "mps", "vulkan:0".
        precision: "fp32", "fp16" or "bf16" (what the convolutions compute in).
        scale: output size / input size of the network.
        input_multiple: run_tile pads to multiples of this itself; informative for tile planning.
        model_name: the model's registry name or file stem.
    """

    name: str
    precision: str
    scale: int
    input_multiple: int
    model_name: str

    @property
    def device(self) -> str:  # read-only: an engine may compute it (TorchEngine) or store it (NcnnEngine)
        ...

    def run_tile(
        self, x: np.ndarray, *, cancel: CancelCallback | None = None, step: StepCallback | None = None
    ) -> np.ndarray:
        """One tile: (h, w, 3) float32 in [0, 1] (the model's sRGB domain) -> (h*s, w*s, 3) float32 in [0, 1].

        Any h, w >= 1 (the engine pads to its input multiple by edge replication and crops back); the output
        is clamped to [0, 1] and owned by the caller. ``cancel`` is polled inside the tile about every
        :data:`CANCEL_POLL_S` of work (raises :class:`Cancelled`); ``step(fraction)`` reports progress within
        the tile. Raises :class:`EngineOutOfMemory` when the device cannot hold the tile.
        """
        ...

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The core tile side (input pixels) to use when the caller gives none."""
        ...

    def free_cached_memory(self) -> None:
        """Give cached device memory back after an out-of-memory error (no-op where nothing is cached)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs: engine, device (and its name), precision, threads ... as JSON-friendly values."""
        ...


@runtime_checkable
class TileQueue(Protocol):
    """An engine that runs several tiles at once (the Ray tile engine, :class:`texup.cluster.RayTiles`).

    The pipeline keeps up to ``tiles_in_flight()`` tiles submitted ahead of the one it blends and collects
    their outputs in submission order, so the tile plan, the blend and the pixels are those of one tile at a
    time. ``collect_tile`` returns what :meth:`Engine.run_tile` would (owned by the caller) and raises
    :class:`EngineOutOfMemory` the same way. Local engines do not offer it: one tile at a time, with cancel
    and progress inside the tile.
    """

    def tiles_in_flight(self) -> int:
        """How many tiles to keep submitted (at least 1)."""
        ...

    def submit_tile(self, x: np.ndarray) -> object:
        """Start one tile (as :meth:`Engine.run_tile` takes it); returns a handle for :meth:`collect_tile`."""
        ...

    def collect_tile(self, handle: object) -> np.ndarray:
        """The output of a submitted tile (waits for it)."""
        ...


class CancelPoller:
    """Polls a cancel callback at most every ``interval`` seconds; raises :class:`Cancelled` when it says so.

    Engines call :meth:`check` at many points inside a tile (every convolution in torch, every checkpoint
    blob in ncnn); the clock keeps the callback's cost negligible however often that is.
    """

    def __init__(self, cancel: CancelCallback | None, interval: float | None = None) -> None:
        self.cancel = cancel
        self.interval = CANCEL_POLL_S if interval is None else interval
        self._next = time.monotonic() + self.interval

    def check(self) -> None:
        if self.cancel is None:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        if self.cancel():
            raise Cancelled("cancelled inside a tile")


#: What one CPU tile's activations may take in host memory, for every engine's ``auto_tile`` (README: 1 GB for one
#: tile's activations plus the output band).
CPU_MEMORY_BUDGET = 1 << 30


def threads_from_env() -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive integer (batch schedulers and Ray set it for a process given N
    CPUs), else None: the engine's own count."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def finish_tile(y: np.ndarray, padded: tuple[int, int], kept: tuple[int, int], scale: int, name: str) -> np.ndarray:
    """A network's (3, H, W) float32 output for a tile padded to ``padded`` (h, w): checked to be ``scale`` times
    it (a TexupError naming ``name`` otherwise), cropped to ``kept`` (h, w) times ``scale``, clipped to [0, 1] in
    place, as (h, w, 3)."""
    ph, pw = padded
    if y.shape != (3, ph * scale, pw * scale):
        raise TexupError(
            f"{name}: the network returned {y.shape} for a {pw}x{ph} tile, expected (3, {ph * scale}, {pw * scale})"
        )
    y = y[:, : kept[0] * scale, : kept[1] * scale]
    np.clip(y, 0.0, 1.0, out=y)
    return np.ascontiguousarray(y.transpose(1, 2, 0))


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad an (h, w, C) array at the bottom and right by edge replication to multiples of ``multiple``."""
    h, w = x.shape[:2]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    return np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def check_tile(x: np.ndarray) -> None:
    """ValueError unless ``x`` is an (h, w, 3) array with h, w >= 1."""
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"run_tile expects an (h, w, 3) array, got shape {x.shape}")
