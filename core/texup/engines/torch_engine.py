"""The torch engine: device and precision choice, and running a :class:`~texup.weights.LoadedModel` on one tile.

Everything here is about *how* a tile goes through the network (device, dtype, memory layout, padding
to the model's input multiple, cancel inside a tile); *which* tiles and how they are combined is
:mod:`texup.inference.tiling` and :mod:`texup.inference.pipeline`. Implements :class:`texup.engines.base.Engine`.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from texup.archs.spec import ArchModule, RowStreaming, generic_activation_bytes, spec_for_module
from texup.devices import DTYPE_NAMES, pick_channels_last, pick_device, pick_precision
from texup.engines.base import (
    CPU_MEMORY_BUDGET,
    CancelCallback,
    CancelPoller,
    EngineOutOfMemory,
    StepCallback,
    check_tile,
)

#: Trunk rows per strip of RRDBNet's upsampling head. A 288-pixel x4 tile: (16 + 2 * 2 halo) * 4 = 80 rows of
#: 1152 x 64 float32 values, ~24 MB per head activation, instead of 340 MB for the whole tile.
STREAM_ROWS = 16
#: What one CPU tile measured above the arch's activation estimate at most (allocator and oneDNN workspace): +18 MiB
#: (x4plus fp32, 224^2: 214 MiB measured, 196 estimated); bf16 and compact stayed below their estimates (x4plus bf16
#: 288^2: 126 MiB vs 153). AMD EPYC (Zen 4, 2 vCPUs, avx512_bf16), torch 2.13, one tile per fresh process:
#: ``scripts/bench_engines.py --tiles 64,128,192,256`` (docs/benchmarks.md section 2). Counted in auto_tile's need.
CPU_TILE_OVERHEAD = 32 << 20


class ModelLike(Protocol):
    """What the runner needs from :class:`texup.weights.LoadedModel`."""

    module: nn.Module
    scale: int
    input_multiple: int
    name: str
    hparams: dict[str, Any]


class TorchEngine:
    """Owns a copy of a model's network on one device and dtype, and runs it on single tiles.

    The caller's ``model.module`` is left untouched (the engine works on a deep copy), so one
    :class:`~texup.weights.LoadedModel` can feed several engines. The copy uses channels_last memory
    layout where that is the fast path (:func:`pick_channels_last`). All calls run under
    :func:`torch.inference_mode`. Inside a tile, cancel is polled before every convolution (at most every
    :data:`~texup.engines.base.CANCEL_POLL_S`), so even one large CPU tile stops within a fraction of a second.
    """

    name = "torch"

    def __init__(
        self, model: ModelLike, *, device: str | torch.device = "auto", precision: str = "auto", layout: str = "auto"
    ) -> None:
        self.model = model
        self.model_name = str(getattr(model, "name", "?"))
        self.torch_device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = pick_precision(self.torch_device, precision)
        self.precision: str = DTYPE_NAMES[self.dtype]
        #: The architecture's spec, found by the module's class; None for a module of no registered architecture.
        self.spec = spec_for_module(model.module)
        if self.spec is not None and self.precision not in self.spec.dtypes:
            if precision.strip().lower() != "auto":
                raise ValueError(
                    f"precision {self.precision} requested but {self.spec.name} runs only in "
                    f"{', '.join(self.spec.dtypes)}"
                )
            self.dtype = pick_precision(self.torch_device, self.spec.dtypes[0])
            self.precision = self.spec.dtypes[0]
        self.scale = int(model.scale)
        self.input_multiple = int(getattr(model, "input_multiple", 1) or 1)
        self.channels_last = pick_channels_last(self.torch_device, self.dtype, layout)
        module = copy.deepcopy(model.module).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        module = module.to(device=self.torch_device, dtype=self.dtype)
        if self.channels_last:
            # torch's stubs lack Module.to(memory_format=), which torch documents and accepts.
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.spec is not None and self.spec.streams_rows:
            # Archs with a full-resolution head (RRDBNet) run it in strips: bounded memory, and faster in cache.
            cast(RowStreaming, module).stream_rows = STREAM_ROWS
        self.module = module
        self._poller: CancelPoller | None = None
        self._step: StepCallback | None = None
        self._last_step = 0.0
        self._convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        self._conv_index = {id(m): i for i, m in enumerate(self._convs)}
        for conv in self._convs:
            conv.register_forward_pre_hook(self._before_conv)

    @property
    def device(self) -> str:
        """Where the network runs, e.g. "cpu", "cuda:0", "mps"."""
        d = self.torch_device
        if d.type == "cuda":
            return f"cuda:{d.index if d.index is not None else torch.cuda.current_device()}"
        return str(d)

    def __repr__(self) -> str:
        return f"TorchEngine({self.model_name!r}, device={self.device}, precision={self.precision})"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": self.name,
            "device": self.device,
            "precision": self.precision,
            "layout": "channels_last" if self.channels_last else "nchw",
            "torch": torch.__version__,
        }
        if self.torch_device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.torch_device)
        elif self.torch_device.type == "cpu":
            info["threads"] = torch.get_num_threads()
            info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        return info

    def _before_conv(self, module: nn.Module, _inputs: Any) -> None:
        if self._poller is not None:
            self._poller.check()
        if self._step is not None:
            # Convolutions run in registration order in both archs; the head's strips repeat the last few,
            # so only advances are reported.
            fraction = min(1.0, (self._conv_index.get(id(module), 0) + 1) / len(self._convs))
            if fraction > self._last_step:
                self._last_step = fraction
                self._step(fraction)

    def run_tile(
        self, x: np.ndarray, *, cancel: CancelCallback | None = None, step: StepCallback | None = None
    ) -> np.ndarray:
        """Upscale one tile: (h, w, 3) float32 sRGB-like values in [0, 1] -> (h*s, w*s, 3) float32 in [0, 1].

        The tile is padded at the bottom and right by edge replication to a multiple of the model's
        ``input_multiple`` (pixel-unshuffle models) and the output is cropped back, so any h, w >= 1 works.
        The output is clamped to [0, 1]. ``cancel`` is polled before every convolution (time-limited,
        :class:`~texup.engines.base.CancelPoller`); ``step`` gets the fraction of convolutions done. An
        out-of-memory error of the device becomes :class:`~texup.engines.base.EngineOutOfMemory`.
        """
        check_tile(x)
        h, w = x.shape[:2]
        self._poller = CancelPoller(cancel) if cancel is not None else None
        self._step = step
        self._last_step = 0.0
        try:
            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
                t = t.to(device=self.torch_device, dtype=self.dtype)
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
        except torch.OutOfMemoryError as err:
            self.free_cached_memory()
            raise EngineOutOfMemory(f"out of memory on {self.device} for a {w}x{h} tile") from err
        finally:
            self._poller = None
            self._step = None

    def free_cached_memory(self) -> None:
        """Return cached allocator blocks to the device after an out-of-memory error (no-op on the CPU)."""
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.torch_device.type == "mps":
            torch.mps.empty_cache()

    def activation_bytes(self, side: int) -> int:
        """Estimated peak activation memory of the network on one ``side`` x ``side`` input, in bytes.

        From the arch's spec (:meth:`~texup.archs.spec.ArchSpec.activation_bytes`, with the module's own hparams
        and ``stream_rows``); for a module of no registered architecture
        :func:`~texup.archs.spec.generic_activation_bytes` of the model's hparams.
        """
        element = torch.finfo(self.dtype).bits // 8
        if self.spec is None:
            return generic_activation_bytes(self.model.hparams, self.scale, side, side, element)
        rows = cast(RowStreaming, self.module).stream_rows if self.spec.streams_rows else None
        return self.spec.activation_bytes(cast(ArchModule, self.module).hparams, side, side, element, rows)

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The core tile size (input pixels) used when the caller gives none.

        CPU and MPS: the largest of 256, 224 ... 64 whose network activations (:meth:`activation_bytes` of
        ``tile + 2 * overlap``, plus the measured :data:`CPU_TILE_OVERHEAD`) plus the pipeline's float32 row band
        (``(tile + 2 * overlap) * scale`` rows of ``out_width``) fit :data:`CPU_MEMORY_BUDGET`: the fastest that
        fits, since seconds per output megapixel fall with the tile up to 256 in both precisions (less overlap;
        docs/benchmarks.md section 2). Not larger than 256: per pixel, larger tiles run no faster on a CPU (their
        activations fall out of cache) while the band grows.
        CUDA: the largest of 1024, 992 ... 128 whose activations fit half of the free device memory.
        """
        cuda = self.torch_device.type == "cuda"
        if cuda:
            free, _total = torch.cuda.mem_get_info(self.torch_device)
            budget, sizes = 0.5 * free, range(1024, 127, -32)
        else:
            budget, sizes = CPU_MEMORY_BUDGET, range(256, 63, -32)
        for tile in sizes:
            side = tile + 2 * overlap
            need = self.activation_bytes(side)
            if not cuda:
                need += CPU_TILE_OVERHEAD
            if not cuda and out_width:  # the band is host memory: on CUDA it is not in the device's budget
                need += side * self.scale * out_width * 3 * 4
            if need <= budget:
                return tile
        return sizes[-1]
