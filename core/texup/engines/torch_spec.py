"""The torch engine's :class:`~texup.engines.spec.EngineSpec` (torch-free: :mod:`texup.engines.torch_engine`
imports torch at import, so its spec lives here and imports torch only when a function of it is called)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from texup.engines.base import Engine, EngineUnavailable
from texup.engines.spec import (
    ALL_PRECISIONS,
    RANK_CPU,
    RANK_CPU_BF16,
    RANK_CUDA,
    RANK_MPS,
    Candidate,
    Device,
    EngineSpec,
    dist_version,
)


def torch_available() -> bool:
    """Whether torch imports here (texup runs without it on the ncnn engine)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _candidates() -> list[tuple[int, Candidate]]:
    import torch

    from texup.devices import _mps_available, cpu_has_native_bf16

    found: list[tuple[int, Candidate]] = []
    if torch.cuda.is_available():
        found.append((RANK_CUDA, Candidate("torch", "cuda")))
    if _mps_available():
        found.append((RANK_MPS, Candidate("torch", "mps")))
    if cpu_has_native_bf16():
        found.append((RANK_CPU_BF16, Candidate("torch", "cpu", "bf16")))
    found.append((RANK_CPU, Candidate("torch", "cpu", "fp32")))
    return found


def _open(model: Any, device: str, precision: str, layout: str) -> Engine:
    if not torch_available():
        raise EngineUnavailable("the torch engine needs PyTorch (pip install 'texup[torch]')")
    from texup.engines.torch_engine import TorchEngine
    from texup.weights.ref import ModelRef
    from texup.weights.registry import load_pretrained

    ref = ModelRef.of(model)
    loaded = ref.loaded if ref.kind == "loaded" else load_pretrained(ref)
    return TorchEngine(loaded, device=device, precision=precision, layout=layout)


def _check_device(device: str) -> str:
    if not torch_available():
        raise EngineUnavailable(f"device {device!r} needs PyTorch (pip install 'texup[torch]')")
    from texup.devices import pick_device

    return str(pick_device(device))


def _found_devices() -> list[Device]:
    import torch

    from texup.devices import _mps_available
    from texup.machine import cpu_model

    found = [Device("cpu", cpu_model())]
    if torch.cuda.is_available():
        found += [Device(f"cuda:{i}", torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append(Device("mps", "Apple GPU (Metal)"))
    return found


def _machine() -> dict[str, Any]:
    # Without importing torch (1-2 s): its version from the package metadata, NVIDIA GPUs from the driver.
    gpus = Path("/proc/driver/nvidia/gpus")
    return {"torch": dist_version("torch"), "nvidia": sorted(p.name for p in gpus.iterdir()) if gpus.is_dir() else []}


def _summary() -> dict[str, Any]:
    if not torch_available():
        return {"torch": None}
    import torch

    return {"torch": torch.__version__}


def _summary_lines(info: Mapping[str, Any]) -> list[str]:
    return [f"torch: {info['torch'] or 'not installed (pip install torch)'}"]


SPEC = EngineSpec(
    name="torch",
    available=torch_available,
    devices={"cpu": ALL_PRECISIONS, "cuda[:N]": ALL_PRECISIONS, "mps": ALL_PRECISIONS},
    implied_by=("cuda", "mps"),
    candidates=_candidates,
    open=_open,
    check_device=_check_device,
    found_devices=_found_devices,
    machine=_machine,
    summary=_summary,
    summary_lines=_summary_lines,
    layouts=True,
    runs_loaded=True,
)
