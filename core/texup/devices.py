"""Where and in what precision torch runs: one resolver for inference (the torch engine) and training.

Contracts: ``"auto"`` is this rank's CUDA device, then Apple MPS, then the CPU; an explicit device this machine
lacks raises a one-line ValueError naming it (never a silent fallback), for inference and training alike.
Precision ``"auto"`` has two policies, side by side below (:func:`pick_precision` for inference,
:func:`pick_training_precision` for training autocast). Input names are those of :mod:`texup.options`,
matched case-insensitively.
"""

from __future__ import annotations

from typing import Literal

import torch

from texup.machine import NATIVE_BF16_FLAGS
from texup.options import LAYOUTS, PRECISIONS

#: What a precision or layout name resolves to ("auto" decided); ``texup.options`` holds the same names plus
#: "auto" (a test compares).
PrecisionName = Literal["fp32", "bf16", "fp16"]
LayoutName = Literal["nchw", "channels_last"]

DTYPE_NAMES: dict[torch.dtype, PrecisionName] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}

_DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------
def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _rank_cuda_device(local_rank: int) -> torch.device:
    """This rank's GPU: ``local_rank`` modulo the visible GPUs (several ranks may share one)."""
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def pick_device(name: str = "auto", *, local_rank: int = 0) -> torch.device:
    """The torch device for ``name``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    ``"auto"`` picks this rank's CUDA device when CUDA is available, then Apple's MPS, then the CPU; ``"cuda"``
    without an index is also this rank's device. ``local_rank`` is the process's rank on its node (torchrun's
    ``LOCAL_RANK``; 0 for inference and single-process training) and maps to GPU ``local_rank % count``. An
    explicit device that this machine does not have raises ValueError (the user asked for it).
    """
    if local_rank < 0:
        raise ValueError(f"local rank must be 0 or more, got {local_rank}")
    key = name.strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return _rank_cuda_device(local_rank)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(key)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: expected {_DEVICE_NAMES}") from err
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available in this torch build or machine")
        if device.index is None:
            return _rank_cuda_device(local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {name!r} requested but Apple MPS is not available on this machine")
        return device
    raise ValueError(f"unsupported device {name!r}: expected {_DEVICE_NAMES}")


# ----------------------------------------------------------------------------------------------
# bf16 support
# ----------------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: BF16 or SVE-BF16).

    Probe: cpuinfo's instruction flags (:func:`torch.cpu.get_capabilities`, torch >= 2.8; missing: "no"), not
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which is also true on AVX-512 CPUs without bf16 instructions
    (oneDNN emulates bf16 there). Emulated bf16 convolutions are slower than fp32, so ``auto`` avoids them.
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return False
    caps = get_capabilities()
    return any(bool(caps.get(flag, False)) for flag in NATIVE_BF16_FLAGS)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bfloat16 natively: CUDA compute capability 8.0 on (Ampere), or ROCm.

    Not :func:`torch.cuda.is_bf16_supported`: by default it is also true where bf16 is only emulated (older GPUs)
    and it looks at the current device, not ``device``.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def _check_cuda_bf16(device: torch.device) -> None:
    """ValueError when the GPU cannot run bf16 at all (neither natively nor emulated)."""
    if device.type == "cuda" and not (cuda_has_native_bf16(device) or torch.cuda.is_bf16_supported()):
        raise ValueError(f"precision bf16 requested but {torch.cuda.get_device_name(device)} does not support it")


def _precision_key(name: str) -> str:
    key = name.strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: expected {', '.join(PRECISIONS)}")
    return key


# ----------------------------------------------------------------------------------------------
# precision: inference and training side by side
# ----------------------------------------------------------------------------------------------
def pick_precision(device: torch.device, name: str = "auto") -> torch.dtype:
    """Inference: the dtype the network's weights and activations are cast to on ``device``.

    ``auto``: float16 on CUDA (ESRGAN generators tolerate it at inference, it halves memory and every CUDA GPU
    runs it fast; nothing accumulates over steps, so no scaling is needed); bfloat16 on CPUs with native bf16;
    float32 elsewhere (including MPS, where fp16 convolutions of these models are not reliably faster).
    Explicit names are honoured, except bf16 on a CUDA GPU that cannot run it (ValueError).
    """
    key = _precision_key(name)
    if key == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    dtype = DTYPES[key]
    if dtype is torch.bfloat16:
        _check_cuda_bf16(device)
    return dtype


def pick_training_precision(device: torch.device, name: str = "auto") -> tuple[torch.dtype | None, bool]:
    """Training: (autocast dtype, or ``None`` for plain fp32; whether a gradient scaler is needed).

    Unlike inference, ``auto`` prefers bf16 on CUDA: gradients in fp16 underflow without a GradScaler, and bf16
    (fp32's exponent range) needs none. So ``auto`` is bf16 on GPUs with native bf16, fp16 + GradScaler on older
    GPUs (which only emulate bf16, slowly), bf16 on CPUs with native bf16, fp32 elsewhere. Explicit fp16 off CUDA
    raises ValueError (torch's gradient scaling is for CUDA), as does bf16 on a GPU that cannot run it.
    """
    key = _precision_key(name)
    if key == "auto":
        if device.type == "cuda":
            key = "bf16" if cuda_has_native_bf16(device) else "fp16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            key = "bf16"
        else:
            key = "fp32"
    if key == "fp32":
        return None, False
    if key == "bf16":
        _check_cuda_bf16(device)
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError(
            f"fp16 training needs a CUDA device (gradient scaling); this run uses {device}. Use bf16 or fp32."
        )
    return torch.float16, True


# ----------------------------------------------------------------------------------------------
# memory layout
# ----------------------------------------------------------------------------------------------
def pick_channels_last(device: torch.device, dtype: torch.dtype, layout: str = "auto") -> bool:
    """Whether to run the network in channels_last memory layout: ``layout`` is "auto", "nchw" or "channels_last".

    ``auto`` (measured both ways per CPU kind: docs/benchmarks.md): CUDA yes (cuDNN's tensor-core layout); CPU bf16
    yes (oneDNN's bf16 path; NCHW bf16 is far slower); CPU fp32 only where torch's CPU kernels use AVX-512: on
    AVX2-only CPUs oneDNN's fp32 blocked kernels do not pay for the layout changes around them.
    """
    key = layout.strip().lower()
    if key not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected {', '.join(LAYOUTS)}")
    if key != "auto":
        return key == "channels_last"
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    if dtype is torch.bfloat16:
        return True
    return dtype is torch.float32 and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "LayoutName",
    "PrecisionName",
    "cpu_has_native_bf16",
    "cuda_has_native_bf16",
    "pick_channels_last",
    "pick_device",
    "pick_precision",
    "pick_training_precision",
]
