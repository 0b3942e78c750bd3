"""The torch layer of tiled inference: device and precision choice, and running the model on one tile.

Everything here is about *how* a tile goes through the network (device, dtype, memory layout, padding
to the model's input multiple); *which* tiles and how they are combined is :mod:`texup.inference.tiling`
and :mod:`texup.inference.pipeline`.
"""
from __future__ import annotations

import copy
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("auto", "nchw", "channels_last")
#: Trunk rows per strip of RRDBNet's upsampling head. A 288-pixel x4 tile: (16 + 2 * 2 halo) * 4 = 80 rows of
#: 1152 x 64 float32 values, ~24 MB per head activation, instead of 340 MB for the whole tile.
STREAM_ROWS = 16
#: What one tile's network activations plus the pipeline's row band may take on the CPU (see Runner.auto_tile).
CPU_MEMORY_BUDGET = 1 << 30


class ModelLike(Protocol):
    """What the runner needs from :class:`texup.weights.LoadedModel`."""

    module: nn.Module
    scale: int
    input_multiple: int
    name: str
    hparams: dict[str, Any]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    ``"auto"`` picks CUDA when available, then Apple's MPS, then the CPU. An explicit device that this
    machine does not have raises ValueError (never a silent fallback: the user asked for it).
    """
    key = name.strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(key)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available in this torch build or machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {name!r} requested but Apple MPS is not available on this machine")
        return device
    raise ValueError(f"unsupported device {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: BF16 or SVE-BF16).

    Uses :func:`torch.cpu.get_capabilities` (torch >= 2.8); older torch is treated as "no".
    Without native support bf16 convolutions are emulated and slower than fp32, so ``auto`` avoids them.
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return False
    caps = get_capabilities()
    return any(bool(caps.get(flag, False)) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def pick_precision(device: torch.device, name: str = "auto") -> torch.dtype:
    """The compute dtype for ``device``: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``auto``: float16 on CUDA (ESRGAN generators are trained to tolerate it and it halves memory);
    bfloat16 on CPUs with native bf16 (AVX512-BF16 / AMX, Arm BF16); float32 elsewhere (including MPS,
    where fp16 convolutions of these models are not reliably faster). Explicit names are honoured, except
    bf16 on a CUDA GPU without bf16 support (ValueError).
    """
    key = name.strip().lower()
    if key == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: expected auto, {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[key]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16 requested but {torch.cuda.get_device_name(device)} does not support it")
    return dtype


def pick_channels_last(device: torch.device, dtype: torch.dtype, layout: str = "auto") -> bool:
    """Whether to run the network in channels_last memory layout: ``layout`` is "auto", "nchw" or "channels_last".

    ``auto`` (measured, see docs/benchmarks.md): CUDA yes (cuDNN's tensor-core layout); CPU bf16 yes
    (oneDNN's bf16 path; NCHW bf16 was ~9x slower); CPU fp32 only where torch's CPU kernels use AVX-512:
    x4plus on a 288-pixel tile ran 1.24x faster in channels_last on an AVX-512 Xeon, but 3-4x slower on an
    AVX2-only AMD EPYC, where oneDNN's fp32 blocked kernels do not pay for the layout changes around them.
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


class Runner:
    """Owns a copy of a model's network on one device and dtype, and runs it on single tiles.

    The caller's ``model.module`` is left untouched (the runner works on a deep copy), so one
    :class:`~texup.weights.LoadedModel` can feed several runners. The copy uses channels_last memory
    layout where that is the fast path (:func:`pick_channels_last`). All calls run under
    :func:`torch.inference_mode`.
    """

    def __init__(
        self, model: ModelLike, *, device: str | torch.device = "auto", precision: str = "auto", layout: str = "auto"
    ) -> None:
        self.model = model
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = pick_precision(self.device, precision)
        self.scale = int(model.scale)
        self.input_multiple = int(getattr(model, "input_multiple", 1) or 1)
        self.channels_last = pick_channels_last(self.device, self.dtype, layout)
        module = copy.deepcopy(model.module).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        module = module.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if hasattr(module, "stream_rows"):
            # Archs with a full-resolution head (RRDBNet) run it in strips: bounded memory, and faster in cache.
            module.stream_rows = STREAM_ROWS
        self.module = module

    def __repr__(self) -> str:
        return f"Runner({getattr(self.model, 'name', '?')!r}, device={self.device}, dtype={self.dtype})"

    def run_tile(self, x: np.ndarray) -> np.ndarray:
        """Upscale one tile: (h, w, 3) float32 sRGB-like values in [0, 1] -> (h*s, w*s, 3) float32 in [0, 1].

        The tile is padded at the bottom and right by edge replication to a multiple of the model's
        ``input_multiple`` (pixel-unshuffle models) and the output is cropped back, so any h, w >= 1 works.
        The output is clamped to [0, 1]. May raise :class:`torch.OutOfMemoryError`; the pipeline catches it.
        """
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"run_tile expects an (h, w, 3) array, got shape {x.shape}")
        h, w = x.shape[:2]
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
            t = t.to(device=self.device, dtype=self.dtype)
            m = self.input_multiple
            pad_h, pad_w = -h % m, -w % m
            if pad_h or pad_w:
                t = F.pad(t, (0, pad_w, 0, pad_h), mode="replicate")
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            y = self.module(t)
            y = y[:, :, : h * self.scale, : w * self.scale].clamp_(0.0, 1.0)
            out = y[0].permute(1, 2, 0).to(device="cpu", dtype=torch.float32)
            return np.ascontiguousarray(out.numpy())

    def free_cached_memory(self) -> None:
        """Return cached allocator blocks to the device after an out-of-memory error (no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def activation_bytes(self, side: int) -> int:
        """Estimated peak activation memory of the network on one ``side`` x ``side`` input, in bytes.

        From the arch's own ``activation_bytes`` where it has one (RRDBNet); otherwise about
        ``8 * num_feat * scale**2`` values per input pixel (the full-resolution layers dominate).
        """
        element = torch.finfo(self.dtype).bits // 8
        estimate = getattr(self.module, "activation_bytes", None)
        if callable(estimate):
            return int(estimate(side, side, element))
        num_feat = int(getattr(self.model, "hparams", {}).get("num_feat", 64))
        return 8 * num_feat * self.scale**2 * element * side * side

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The core tile size (input pixels) used when the caller gives none.

        CPU and MPS: the largest of 256, 224 ... 64 whose network activations (:meth:`activation_bytes` of
        ``tile + 2 * overlap``) plus the pipeline's float32 row band (``(tile + 2 * overlap) * scale`` rows
        of ``out_width``) fit :data:`CPU_MEMORY_BUDGET`. Not larger than 256: per pixel, larger tiles run
        no faster on a CPU (their activations fall out of cache; docs/benchmarks.md) while the band grows.
        CUDA: the largest of 1024, 992 ... 128 whose activations fit half of the free device memory.
        """
        cuda = self.device.type == "cuda"
        if cuda:
            free, _total = torch.cuda.mem_get_info(self.device)
            budget, sizes = 0.5 * free, range(1024, 127, -32)
        else:
            budget, sizes = CPU_MEMORY_BUDGET, range(256, 63, -32)
        for tile in sizes:
            side = tile + 2 * overlap
            need = self.activation_bytes(side)
            if not cuda and out_width:  # the band is host memory: on CUDA it is not in the device's budget
                need += side * self.scale * out_width * 3 * 4
            if need <= budget:
                return tile
        return sizes[-1]
