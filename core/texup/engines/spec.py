"""One :class:`EngineSpec` per engine, and the registry that holds them (as :mod:`texup.archs.spec` is for
architectures).

An engine's spec says everything selection needs to know about it: whether it is installed, the devices it runs
on and the precisions it offers there, the candidates it offers on this machine (and where each stands in the
unmeasured order), which devices imply it, how it opens a model, what of the machine decides its speed
(engines.json's machine key) and what ``texup engines`` and the worker's ``info`` show of it.
:mod:`texup.engines.select`, ``texup engines``, the worker's ``info`` and the registry's check against
:data:`texup.options.ENGINES` (the names the CLI, the worker protocol and the add-on offer) all read it here.

Specs are registered in :mod:`texup.engines` (registration order = the order of :data:`texup.options.ENGINES`,
checked at import). Nothing here imports torch or ncnn: a spec's functions do, when called. Tests swap a spec with
:func:`replaced` instead of patching module functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from texup.engines.base import Engine
from texup.options import PRECISIONS

#: Precisions an engine may offer: :data:`texup.options.PRECISIONS` without "auto".
ALL_PRECISIONS: tuple[str, ...] = tuple(p for p in PRECISIONS if p != "auto")
#: A device pattern's suffix for devices numbered ``kind:N`` ("cuda[:N]" names cuda, cuda:0, cuda:1 ...).
INDEXED = "[:N]"

#: Where a candidate stands in the order tried when nothing was measured (lower first; see
#: :func:`texup.engines.select.candidates`): dedicated GPUs first, the CPU's bundled engine before torch on it.
RANK_CUDA, RANK_MPS, RANK_VULKAN, RANK_CPU_BUNDLED, RANK_CPU_BF16, RANK_CPU = 10, 20, 30, 40, 50, 60


@dataclass(frozen=True)
class Candidate:
    """One way to run a model here: engine, device and precision ("auto" = the engine's own default)."""

    engine: str
    device: str
    precision: str = "auto"

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.device}/{self.precision}"


@dataclass(frozen=True)
class Device:
    """A device an engine finds here (the worker's ``info``): ``key`` as jobs name it, ``name`` (CPU model or GPU
    name), ``software`` (a CPU implementation of a GPU API, such as llvmpipe: auto never picks it)."""

    key: str
    name: str
    software: bool = False


@dataclass(frozen=True)
class EngineSpec:
    """Everything texup needs to know about one engine.

    Attributes:
        name: the engine's name, one of :data:`texup.options.ENGINES` (``--engine``, the protocol, engines.json).
        available: whether it can run here at all (its library imports).
        devices: device pattern ("cpu", "mps", "cuda[:N]") -> the explicit precisions it offers there (an
            explicit ``--precision`` keeps only the candidates that offer it; the engine itself refuses the rest).
        implied_by: device kinds that imply this engine ("vulkan" -> ncnn): ``--device vulkan:1`` alone opens it.
        candidates: ``() -> [(rank, Candidate)]`` what it offers here, with the rank of each in the unmeasured
            order (the ``RANK_*`` constants); called only when :attr:`available`.
        open: ``(model, device, precision, layout) -> Engine``; raises
            :class:`~texup.engines.base.EngineUnavailable` (not installed, no such device) or ValueError.
        check_device: ``device -> device as the engine uses it`` for a device that implies it (ValueError naming
            what exists; EngineUnavailable when the engine is not installed).
        found_devices: ``() -> [Device]`` the devices it runs on here (the worker's ``info``); only when available.
        machine: ``() -> {key: value}`` what of this machine decides its speed, without importing heavy
            libraries (library version, GPU names): part of engines.json's machine key.
        summary: ``() -> {key: value}`` its part of ``texup engines --json`` (JSON-friendly).
        summary_lines: ``(summary) -> [line]`` its lines of ``texup engines``.
        layouts: it takes a memory layout (``--layout`` other than auto implies it).
        runs_loaded: it runs an in-memory model (a LoadedModel) where it is: auto opens it for one.
    """

    name: str
    available: Callable[[], bool]
    devices: Mapping[str, tuple[str, ...]]
    implied_by: tuple[str, ...]
    candidates: Callable[[], Sequence[tuple[int, Candidate]]]
    open: Callable[[Any, str, str, str], Engine]
    check_device: Callable[[str], str]
    found_devices: Callable[[], Sequence[Device]]
    machine: Callable[[], Mapping[str, Any]]
    summary: Callable[[], Mapping[str, Any]]
    summary_lines: Callable[[Mapping[str, Any]], list[str]]
    layouts: bool = False
    runs_loaded: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier() or self.name == "auto":
            raise ValueError(f"EngineSpec: name must be an identifier other than auto, got {self.name!r}")
        for pattern, precisions in self.devices.items():
            if not set(precisions) <= set(ALL_PRECISIONS):
                raise ValueError(f"EngineSpec {self.name}: precisions on {pattern} must be among {ALL_PRECISIONS}")
        kinds = {device_kind(p) for p in self.devices}
        if not set(self.implied_by) <= kinds:
            raise ValueError(f"EngineSpec {self.name}: implied_by names devices it does not run on")

    def precisions_on(self, device: str) -> tuple[str, ...]:
        """The explicit precisions it offers on ``device`` ("vulkan:1" -> the "vulkan[:N]" entry); () elsewhere."""
        kind = device_kind(device)
        return next((p for pattern, p in self.devices.items() if device_kind(pattern) == kind), ())


def device_kind(device: str) -> str:
    """ "cuda:1" -> "cuda"; "cuda[:N]" -> "cuda"; "cpu" -> "cpu"."""
    return device.removesuffix(INDEXED).partition(":")[0]


def dist_version(name: str) -> str | None:
    """An installed distribution's version from its metadata (no import), else None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_REGISTRY: dict[str, EngineSpec] = {}


def register(spec: EngineSpec) -> EngineSpec:
    """Add ``spec`` (ValueError when its name is taken)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"engine {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registered() -> tuple[EngineSpec, ...]:
    """Every registered spec, in registration order."""
    return tuple(_REGISTRY.values())


def engine_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_spec(name: str) -> EngineSpec:
    """The spec called ``name``; ValueError listing the known ones otherwise (as ``--engine`` says it)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}: expected auto, {', '.join(_REGISTRY)}") from None


@contextlib.contextmanager
def replaced(name: str, **fields: Any) -> Iterator[EngineSpec]:
    """Within the block, the spec called ``name`` has ``fields`` replaced (tests: fake candidates, a fake open)."""
    before = get_spec(name)
    _REGISTRY[name] = dataclasses.replace(before, **fields)
    try:
        yield _REGISTRY[name]
    finally:
        _REGISTRY[name] = before


def check_names(engines: Sequence[str], labels: Mapping[str, Any]) -> None:
    """RuntimeError unless the registered engines are ``engines`` without "auto", in order, and ``labels`` (the
    add-on's texts) has one entry for each of ``engines`` (:data:`texup.options.ENGINES`, ``ENGINE_LABELS``)."""
    wanted = tuple(e for e in engines if e != "auto")
    if engine_names() != wanted:
        raise RuntimeError(f"registered engines {engine_names()} differ from texup.options.ENGINES {wanted}")
    if set(labels) != set(engines):
        raise RuntimeError(f"texup.options.ENGINE_LABELS {sorted(labels)} differ from ENGINES {sorted(engines)}")


def device_patterns() -> tuple[str, ...]:
    """Every device pattern some engine runs on: "cpu" first, the rest sorted ("cuda[:N]", "mps", "vulkan[:N]")."""
    patterns = {p for spec in _REGISTRY.values() for p in spec.devices}
    return tuple(sorted(patterns, key=lambda p: (p != "cpu", p)))


def implied_engine(device: str) -> str | None:
    """The engine a device name implies (the spec whose ``implied_by`` it starts with), else None (either)."""
    key = device.strip().lower()
    return next((s.name for s in _REGISTRY.values() if key.startswith(s.implied_by)), None)


def choice_pattern() -> re.Pattern[str]:
    """What a recorded choice in engines.json looks like: engine/device/precision of the registered engines."""
    devices = "|".join(
        f"{re.escape(device_kind(p))}(:[0-9]{{1,3}})?" if p.endswith(INDEXED) else re.escape(p)
        for p in device_patterns()
    )
    engines = "|".join(re.escape(n) for n in _REGISTRY)
    precisions = "|".join(re.escape(p) for p in PRECISIONS)
    return re.compile(f"({engines})/({devices})/({precisions})")
