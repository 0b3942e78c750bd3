"""Engines: what runs the network on one tile, behind one small protocol (:class:`~texup.engines.base.Engine`).

* :mod:`~texup.engines.base` — the protocol (and :class:`~texup.engines.base.TileQueue`, several tiles in flight),
  cancel polling, engine errors (numpy only);
* :mod:`~texup.engines.torch_engine` — torch on CPU/CUDA/MPS, bf16/fp16, memory layout as :mod:`texup.devices`
  chooses them (imports torch);
* :mod:`~texup.engines.ncnn_engine` — ncnn on the CPU or any Vulkan GPU (imports ncnn, never torch);
* :mod:`~texup.engines.ncnn_export` — texup's own writer of ncnn ``.param``/``.bin`` files (numpy only);
* :mod:`~texup.engines.ncnn_models` — which ncnn files run a model (packaged, or exported and cached);
* :mod:`~texup.engines.openvino_engine` — OpenVINO on the CPU, Intel GPUs and NPUs, the ncnn graph rebuilt with
  its opset API (imports openvino only when used, never torch), and its spec;
* :mod:`~texup.engines.spec` — one :class:`~texup.engines.spec.EngineSpec` per engine, registered below
  (:mod:`~texup.engines.torch_spec`, :mod:`~texup.engines.ncnn_spec`), checked against :data:`texup.options.ENGINES`;
* :mod:`~texup.engines.select` — :func:`open_engine`: explicit choices, or ``auto`` by a cached measurement;
* :mod:`~texup.engines.openmp` — how the engines' OpenMP threads wait (briefly, unless the user chose).

Importing this package imports neither torch nor ncnn; it sets their OpenMP waiting (``OMP_WAIT_POLICY=PASSIVE``,
``GOMP_SPINCOUNT=1000``) when neither is loaded yet and the user chose none (:func:`texup.engines.openmp.configure`).
"""

from __future__ import annotations

from texup._lazy import lazy_getattr
from texup.engines import ncnn_spec, openmp, openvino_engine, torch_spec
from texup.engines.base import (
    ENGINE_NAMES,
    Cancelled,
    Engine,
    EngineOutOfMemory,
    EngineUnavailable,
)
from texup.engines.spec import check_names, register
from texup.options import ENGINE_LABELS, ENGINES

# One registration per engine, in the order of texup.options.ENGINES (checked: the CLI, the worker protocol and
# the add-on offer those names).
register(torch_spec.SPEC)
register(ncnn_spec.SPEC)
register(openvino_engine.SPEC)
check_names(ENGINES, ENGINE_LABELS)

_LAZY = {
    "open_engine": "texup.engines.select",
    "candidates": "texup.engines.select",
    "calibrate": "texup.engines.select",
    "summary": "texup.engines.select",
    "TorchEngine": "texup.engines.torch_engine",
    "NcnnEngine": "texup.engines.ncnn_engine",
    "vulkan_devices": "texup.engines.ncnn_engine",
    "OpenVinoEngine": "texup.engines.openvino_engine",
}

openmp.configure()

__all__ = ["ENGINE_NAMES", "Cancelled", "Engine", "EngineOutOfMemory", "EngineUnavailable", *_LAZY]


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
