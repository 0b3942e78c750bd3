"""The ncnn engine's :class:`~texup.engines.spec.EngineSpec`: what selection, ``texup engines`` and the worker know
of it. It lives beside :mod:`texup.engines.ncnn_engine` (the engine) because opening a model goes through
:mod:`texup.engines.ncnn_models` (which files run it), which builds on the engine's :class:`NcnnGraph`. The engine's
functions are called through its module (``ncnn_engine.vulkan_devices``), so a test that replaces one there is seen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from texup.engines import ncnn_engine
from texup.engines.ncnn_models import graph_for
from texup.engines.spec import RANK_CPU_BUNDLED, RANK_VULKAN, Candidate, Device, EngineSpec, dist_version


def _candidates() -> list[tuple[int, Candidate]]:
    # Never a software Vulkan (llvmpipe). The bundled engine first on the CPU: where nothing was measured (the
    # worker's first guess), a torch environment must not be slower than Blender's own Python with ncnn (issue 19).
    found = [
        (RANK_VULKAN, Candidate("ncnn", f"vulkan:{d.index}")) for d in ncnn_engine.vulkan_devices() if not d.software
    ]
    return [*found, (RANK_CPU_BUNDLED, Candidate("ncnn", "cpu"))]


def _open(model: Any, device: str, precision: str, layout: str) -> ncnn_engine.NcnnEngine:
    if device == "auto":
        gpus = [d for d in ncnn_engine.vulkan_devices() if not d.software]
        device = f"vulkan:{gpus[0].index}" if gpus else "cpu"
    graph, name = graph_for(model)
    return ncnn_engine.NcnnEngine(graph, device=device, precision=precision, name=name)


def _check_device(device: str) -> str:
    ncnn_engine._import_ncnn()
    return f"vulkan:{ncnn_engine.parse_device(device)}"


def _found_devices() -> list[Device]:
    from texup.machine import cpu_model

    return [
        Device("cpu", cpu_model()),
        *(Device(f"vulkan:{d.index}", d.name, d.software) for d in ncnn_engine.vulkan_devices()),
    ]


def _summary() -> dict[str, Any]:
    return {
        "ncnn": ncnn_engine.ncnn_available(),
        "vulkan_devices": [asdict(d) | {"software": d.software} for d in ncnn_engine.vulkan_devices()],
    }


def _summary_lines(info: Mapping[str, Any]) -> list[str]:
    gpus = ", ".join(
        f"vulkan:{d['index']} {d['name']} ({d['kind']}{', software: not used by auto' if d['software'] else ''})"
        for d in info["vulkan_devices"]
    )
    return [
        f"ncnn: {'installed' if info['ncnn'] else 'not installed (pip install ncnn)'}",
        "vulkan devices: " + (gpus or "none"),
    ]


SPEC = EngineSpec(
    name="ncnn",
    available=ncnn_engine.ncnn_available,
    devices={"cpu": ("fp32", "bf16"), "vulkan[:N]": ("fp32", "fp16")},
    implied_by=("vulkan",),
    candidates=_candidates,
    open=_open,
    check_device=_check_device,
    found_devices=_found_devices,
    machine=lambda: {"vulkan": [d.name for d in ncnn_engine.vulkan_devices()], "ncnn": dist_version("ncnn")},
    summary=_summary,
    summary_lines=_summary_lines,
)
