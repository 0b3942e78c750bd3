"""The OpenVINO engine: Intel's OpenVINO runs the network, on the CPU (its oneDNN kernels: bf16 on CPUs that compute
bf16 natively, AMX/AVX-512 BF16) or an Intel GPU or NPU.

No torch and no ONNX: the network is texup's own ncnn layer graph (:func:`texup.engines.ncnn_models.graph_for`:
the packaged files, texup's export of any weights it loads, or a user's ``.param``), read back with its numpy
weights and rebuilt layer by layer with the ``openvino.opset`` Python API (:func:`build_model`): Convolution +
bias, fused ReLU/LeakyReLU, PReLU, weighted sums, Concat, Slice, nearest Interp, PixelShuffle (DepthToSpace),
Reorg (SpaceToDepth). So it runs every model the ncnn engine runs, with the same weights.

On the CPU one model is compiled with dynamic height and width (tiles differ by a pixel or by the clipped context
at the image's border; the CPU plugin keeps what it prepared for each shape), elsewhere one per tile shape (a few
kept). Inside a tile the request runs asynchronously: cancel is polled while it runs (and the request cancelled)
and progress reported from the time the previous tile took. Precision "auto" is OpenVINO's own default
(``INFERENCE_PRECISION_HINT`` unset: bf16 on a CPU with native bf16, else fp32; fp16 on a GPU), "fp32" asks for
fp32 everywhere. The CPU's compiled model is kept under ``TEXUP_HOME/openvino`` (:class:`CompiledCache`) and
imported by the next process: 0.2 s instead of 0.75 s to build and compile x4plus (docs/benchmarks.md section 2;
``TEXUP_OPENVINO_CACHE=0`` turns it off). GPUs and NPUs are offered where ``openvino.Core().available_devices`` lists
them; they were not tested (the machines texup is measured on have none).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from texup.engines import base
from texup.engines.base import (
    CPU_MEMORY_BUDGET,
    CancelCallback,
    Cancelled,
    CancelPoller,
    EngineOutOfMemory,
    EngineUnavailable,
    StepCallback,
    check_tile,
    finish_tile,
    pad_to_multiple,
    threads_from_env,
)
from texup.engines.spec import RANK_CPU_BUNDLED, RANK_VULKAN, Candidate, Device, EngineSpec, dist_version
from texup.errors import ModelLoadError, TexupError

#: Peak memory of one CPU tile over the process before it, ``(fixed bytes, bytes per input pixel)`` at x4 (scaled by
#: (scale / 4)^2), by whether the graph convolves at output resolution (RRDBNet's head, run whole: OpenVINO has no
#: row strips here) and the precision computed. Measured with ``scripts/bench_engines.py --tiles 128,192,256
#: --tile-engines openvino-bf16,openvino-fp32`` (a fresh process per tile: peak over the warmed process; AMD EPYC
#: Zen 4, 2 vCPUs, OpenVINO 2026.4.1): x4plus bf16 164/324/538 MiB at 160/224/288 px (fit 6,844 B per pixel), fp32
#: 306/609/1013 MiB (12,929 B); animevideov3 bf16 28/55/92 MiB (1,167 B), fp32 31/61/102 MiB (1,298 B). The slopes
#: rounded up, plus the 32 MiB torch's estimate adds (CPU_TILE_OVERHEAD): x4plus bf16 gets tile 256, fp32 224.
OPENVINO_TILE_MEMORY: dict[tuple[bool, str], tuple[int, int]] = {
    (True, "fp32"): (32 << 20, 13_500),
    (True, "bf16"): (32 << 20, 7_000),
    (False, "fp32"): (32 << 20, 1_400),
    (False, "bf16"): (32 << 20, 1_300),
}
#: Compiled models kept per engine on devices that compile one per tile shape (GPU, NPU).
STATIC_SHAPES_KEPT = 4


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise EngineUnavailable("the openvino engine needs the `openvino` package (pip install openvino)") from err
    return openvino


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports here."""
    try:
        _import_openvino()
    except EngineUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=1)
def core() -> Any:
    """One ``openvino.Core`` per process (it loads the device plugins)."""
    return _import_openvino().Core()


@dataclass(frozen=True)
class OvDevice:
    """A device OpenVINO offers: ``key`` as texup names it ("cpu", "gpu:0", "npu"), ``ov_name`` as OpenVINO does
    ("CPU", "GPU.0", "NPU"), ``name`` its full name."""

    key: str
    ov_name: str
    name: str


@functools.lru_cache(maxsize=1)
def openvino_devices() -> tuple[OvDevice, ...]:
    """The CPU, Intel GPUs and NPUs OpenVINO finds here (empty without openvino)."""
    if not openvino_available():
        return ()
    try:
        names = list(core().available_devices)
    except Exception:  # noqa: BLE001 - a plugin that fails to load means "not there"
        return ()
    found = []
    for ov_name in names:
        kind, _, index = ov_name.partition(".")
        kind = kind.lower()
        if kind not in ("cpu", "gpu", "npu"):
            continue
        key = f"gpu:{index or 0}" if kind == "gpu" else kind
        try:
            full = str(core().get_property(ov_name, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001
            full = ov_name
        found.append(OvDevice(key, ov_name, full))
    return tuple(found)


def parse_device(device: str) -> OvDevice:
    """``"cpu"``, ``"gpu"`` (the first), ``"gpu:N"``, ``"npu"`` -> the OpenVINO device; ValueError naming the
    devices there are otherwise."""
    key = device.strip().lower()
    if key == "gpu":
        key = "gpu:0"
    found = openvino_devices()
    for d in found:
        if d.key == key:
            return d
    there = ", ".join(d.key for d in found) or "none"
    raise ValueError(
        f"the openvino engine runs on cpu, gpu[:N] or npu where OpenVINO finds them, not {device!r} "
        f"(found here: {there})"
    )


# --- the graph -------------------------------------------------------------------------------------------------


def read_layers(param: Any, bin_path: Any) -> list[tuple[Any, list[np.ndarray]]]:
    """The graph's layers in order (checked as the ncnn engine checks them), each with its weights as float32 numpy
    arrays: a Convolution's weight (out, in, kh, kw) and bias, a PReLU's slopes; none for the others."""
    from texup.weights.ncnn import _BinReader, _check_bin_size, parse_param_checked

    layers, _found = parse_param_checked(param)
    _check_bin_size(layers, bin_path, param)
    reader = _BinReader(bin_path)
    out: list[tuple[Any, list[np.ndarray]]] = []
    for layer in layers:
        arrays: list[np.ndarray] = []
        if layer.type == "Convolution":
            num_output, kw = layer.int_param(0, 0), layer.int_param(1, 0)
            kh, size = layer.int_param(11, kw), layer.int_param(6, 0)
            weight = reader.tagged(size, f"weights of {layer.name}")
            arrays.append(weight.reshape(num_output, size // (num_output * kh * kw), kh, kw))
            if layer.int_param(5, 0):
                arrays.append(reader.raw_fp32(num_output, f"bias of {layer.name}"))
        elif layer.type == "PReLU":
            arrays.append(reader.raw_fp32(layer.int_param(0, 1), f"slopes of {layer.name}"))
        out.append((layer, arrays))
    if reader.pos != len(reader.data):
        raise ModelLoadError(bin_path, f"size does not match {param.name}: the graph's weights take {reader.pos} bytes")
    return out


def _floats(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def build_model(layers: list[tuple[Any, list[np.ndarray]]], output_blob: str, name: str = "texup") -> Any:
    """An ``openvino.Model`` of the ncnn graph ``layers`` (:func:`read_layers`): input ``[1, 3, H, W]`` with
    dynamic H and W, output ``output_blob``. ModelLoadError for a layer or parameter it cannot express."""
    ov = _import_openvino()
    from openvino import opset15 as op

    f32 = np.float32
    blobs: dict[str, Any] = {}
    parameter = None

    def const(value: Any) -> Any:
        return op.constant(np.asarray(value, dtype=f32))

    def ints(values: list[int]) -> Any:
        return op.constant(np.asarray(values, dtype=np.int64))

    def activation(x: Any, act: int, params: list[float], where: str) -> Any:
        if act == 0:
            return x
        if act == 1:
            return op.relu(x)
        if act == 2:
            return op.prelu(x, const([params[0] if params else 0.0]))
        if act == 3:
            return op.clamp(x, params[0], params[1])
        if act == 4:
            return op.sigmoid(x)
        raise ModelLoadError(where, f"fused activation {act} is not supported by the openvino engine")

    for layer, weights in layers:
        p = layer.params
        where = f"layer {layer.name}"
        ins = [blobs[b] for b in layer.inputs]
        kind = layer.type
        outs: list[Any]
        if kind == "Input":
            parameter = op.parameter([1, 3, -1, -1], ov.Type.f32, name="input")
            outs = [parameter]
        elif kind == "Convolution":
            dw = layer.int_param(2, 1)
            dh = layer.int_param(12, dw)
            sw = layer.int_param(3, 1)
            sh = layer.int_param(13, sw)
            left = layer.int_param(4, 0)
            if left < 0:
                raise ModelLoadError(where, "'same' padding (-233/-234) is not supported by the openvino engine")
            right = layer.int_param(15, left)
            top = layer.int_param(14, left)
            bottom = layer.int_param(16, top)
            if float(p.get(18, 0.0)) != 0.0:
                raise ModelLoadError(where, "a non-zero pad value is not supported by the openvino engine")
            y = op.convolution(ins[0], const(weights[0]), [sh, sw], [top, left], [bottom, right], [dh, dw])
            if len(weights) > 1:
                y = op.add(y, const(weights[1].reshape(1, -1, 1, 1)))
            outs = [activation(y, layer.int_param(9, 0), _floats(p.get(10, [])), where)]
        elif kind == "PReLU":
            outs = [op.prelu(ins[0], const(weights[0]))]
        elif kind == "ReLU":
            slope = float(p.get(0, 0.0))
            outs = [op.relu(ins[0]) if slope == 0.0 else op.prelu(ins[0], const([slope]))]
        elif kind == "Eltwise":
            how = layer.int_param(0, 1)
            coeffs = _floats(p[1]) if 1 in p else []
            if how == 1:
                terms = [
                    x if not coeffs or coeffs[i] == 1.0 else op.multiply(x, const(coeffs[i])) for i, x in enumerate(ins)
                ]
                y = terms[0]
                for t in terms[1:]:
                    y = op.add(y, t)
            else:
                combine = op.multiply if how == 0 else op.maximum
                y = ins[0]
                for t in ins[1:]:
                    y = combine(y, t)
            outs = [y]
        elif kind == "BinaryOp":
            how = layer.int_param(0, 0)
            a = ins[0]
            b = ins[1] if len(ins) > 1 else const(float(p.get(2, 0.0)))
            table = {
                0: (op.add, False),
                1: (op.subtract, False),
                2: (op.multiply, False),
                3: (op.divide, False),
                4: (op.maximum, False),
                5: (op.minimum, False),
                6: (op.power, False),
                7: (op.subtract, True),
                8: (op.divide, True),
                9: (op.power, True),
            }
            if how not in table:
                raise ModelLoadError(where, f"BinaryOp {how} is not supported by the openvino engine")
            fn, swap = table[how]
            outs = [fn(b, a) if swap else fn(a, b)]
        elif kind == "Concat":
            outs = [op.concat(ins, 1)]
        elif kind == "Slice":
            sizes = [int(float(v)) for v in _floats(p[0])]
            sizes = [-1 if v == -233 else v for v in sizes]
            if sizes.count(-1) > 1:
                raise ModelLoadError(where, "a Slice with several -233 sizes is not supported by the openvino engine")
            split = op.variadic_split(ins[0], ints([1]), ints(sizes))
            outs = [split.output(i) for i in range(len(sizes))]
        elif kind == "Split":
            outs = [ins[0]] * len(layer.outputs)
        elif kind == "Noop":
            outs = list(ins)
        elif kind == "Interp":
            mode = {1: "nearest", 2: "linear_onnx", 3: "cubic"}[layer.int_param(0, 0) or 1]
            hs, ws = float(p.get(1, 1.0)), float(p.get(2, 1.0))
            if layer.int_param(3, 0) or layer.int_param(4, 0):
                raise ModelLoadError(where, "an Interp to a fixed size is not supported by the openvino engine")
            align = layer.int_param(6, 0) == 1
            transform = "align_corners" if align else ("asymmetric" if mode == "nearest" else "half_pixel")
            resized = op.interpolate(
                ins[0],
                const([hs, ws]),
                mode,
                "scales",
                axes=ints([2, 3]),
                coordinate_transformation_mode=transform,
                nearest_mode="floor",
                cube_coeff=-0.75,
            )
            outs = [resized]
        elif kind == "PixelShuffle":
            mode = "depth_first" if layer.int_param(1, 0) == 0 else "blocks_first"
            outs = [op.depth_to_space(ins[0], mode, layer.int_param(0, 1))]
        elif kind == "Reorg":
            mode = "depth_first" if layer.int_param(1, 0) == 0 else "blocks_first"
            outs = [op.space_to_depth(ins[0], mode, layer.int_param(0, 1))]
        else:
            raise ModelLoadError(where, f"layer type {kind} is not supported by the openvino engine")
        if len(outs) != len(layer.outputs):
            raise ModelLoadError(where, f"{len(outs)} outputs where the graph names {len(layer.outputs)}")
        for blob, value in zip(layer.outputs, outs, strict=True):
            blobs[blob] = value
    if parameter is None or output_blob not in blobs:
        raise ModelLoadError(name, "the graph has no Input layer or no output blob")
    result = op.result(blobs[output_blob])
    return ov.Model([result], [parameter], name)


_PRECISION_NAMES = {"bf16": "bf16", "f32": "fp32", "f16": "fp16"}


def _file_identity(path: Any) -> list[Any]:
    """A file as a cache key sees it: resolved path, size, modification time (changed files are new files)."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return [str(resolved), st.st_size, st.st_mtime_ns]


@functools.lru_cache(maxsize=1)
def _engine_code_digest() -> str:
    """This module's source: a change to how texup builds the OpenVINO model makes every kept compile stale."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class CompiledCache:
    """One compiled CPU model kept on disk (``TEXUP_HOME/openvino/<model>-<device>-<precision>-<key>.blob``): what
    ``CompiledModel.export_model`` wrote, read back with ``Core.import_model``.

    The key covers what the compile depends on: the graph's two files (path, size, modification time), its output,
    this module's source, OpenVINO's version, the device, the compile configuration (precision hint, threads) and
    the CPU (model name and SIMD flags). Writing a blob removes the model's other blobs for that device and precision
    asked (one kept per model, device and precision: the others are stale). A blob that does not import (damaged,
    or from another build) is removed and the model compiled again; a folder that cannot be written costs the
    saving, not the run. :attr:`note` says what happened (:meth:`OpenVinoEngine.describe`'s ``compiled_model``).
    """

    FOLDER = "openvino"

    def __init__(self, graph: Any, name: str, device: str, precision: str, config: Mapping[str, Any]) -> None:
        from texup.machine import cpu_model, simd_flags
        from texup.weights.cache import texup_home

        parts = {
            "graph": [_file_identity(graph.param), _file_identity(graph.bin)],
            "output": str(graph.output_blob),
            "code": _engine_code_digest(),
            "openvino": _import_openvino().__version__,
            "device": device,
            "config": {k: str(v) for k, v in sorted(config.items())},
            "cpu": [cpu_model(), simd_flags()],
        }
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
        self.device = device
        self.config = dict(config)
        self.prefix = f"{safe}-{device.lower()}-{precision}-"
        self.folder = texup_home() / self.FOLDER
        self.path = self.folder / f"{self.prefix}{key}.blob"
        self.note = "not used yet"

    def load(self) -> Any | None:
        """The kept compiled model, or None (no blob, or one that does not import: then it is removed)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.note = "compiled (no kept compile yet)"
            return None
        except OSError as err:
            self.note = f"compiled (the kept compile could not be read: {err})"
            return None
        try:
            compiled = core().import_model(data, self.device, self.config)
        except RuntimeError as err:
            self.path.unlink(missing_ok=True)
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            self.note = f"compiled (the kept compile did not import and was removed: {first})"
            return None
        self.note = f"imported {self.path}"
        return compiled

    def save(self, compiled: Any) -> None:
        """Keep ``compiled`` (atomically: temp file + rename) and remove the model's older blobs for the device."""
        from texup._atomic import atomic_path

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(compiled.export_model().getvalue())
            for old in self.folder.glob(f"{self.prefix}*.blob"):
                if old != self.path:
                    old.unlink(missing_ok=True)
        except (OSError, RuntimeError) as err:
            self.note += f"; not kept ({type(err).__name__}: {err})"
            return
        self.note += f"; kept as {self.path}"


class OpenVinoEngine:
    """Runs a model through OpenVINO on the CPU, an Intel GPU or an NPU (implements
    :class:`texup.engines.base.Engine`).

    Args:
        graph: the model's ncnn graph (:class:`texup.engines.ncnn_engine.NcnnGraph`; files and facts).
        device: "cpu", "gpu", "gpu:N" or "npu" (as :func:`openvino_devices` lists them).
        precision: "auto" (OpenVINO's default inference precision: bf16 on a CPU with native bf16, else fp32; fp16
            on a GPU), "fp32", "bf16" on the CPU (OpenVINO computes fp32 where the CPU has no bf16: ``precision``
            says what it computes), "fp16" on a GPU or NPU.
        threads: CPU threads (default: ``OMP_NUM_THREADS`` when set, else OpenVINO's count of physical cores).
        name: the model's name for messages.
    """

    name = "openvino"

    def __init__(
        self,
        graph: Any,
        *,
        device: str = "cpu",
        precision: str = "auto",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        self._ov = _import_openvino()
        self.graph = graph
        self.model_name = name or graph.param.stem
        self.scale = int(graph.scale)
        self.input_multiple = int(graph.input_multiple)
        self._device = parse_device(device)
        self.device = self._device.key
        key = precision.strip().lower()
        allowed = ("auto", "fp32", "bf16") if self._device.key == "cpu" else ("auto", "fp32", "fp16")
        if key not in allowed:
            raise ValueError(
                f"the openvino engine computes {' or '.join(allowed)} on {self._device.key}, not {precision!r}"
            )
        self._asked = key
        self.threads = int(threads) if threads else threads_from_env()  # None: OpenVINO's count
        self._dynamic = self._device.key == "cpu"
        self._cache = (
            CompiledCache(graph, self.model_name, self._device.ov_name, self._asked, self._config())
            if self._dynamic and os.environ.get("TEXUP_OPENVINO_CACHE", "1") != "0"
            else None
        )
        self._compiled: OrderedDict[tuple[int, int] | None, Any] = OrderedDict()
        self._requests: dict[tuple[int, int] | None, Any] = {}
        self._last_s: float | None = None
        first = self._compile(None if self._dynamic else (8 * self.input_multiple, 8 * self.input_multiple))
        hint = first.get_property("INFERENCE_PRECISION_HINT")
        self.precision = _PRECISION_NAMES.get(str(getattr(hint, "get_type_name", lambda: hint)()), "fp32")
        try:
            self.threads = int(first.get_property("INFERENCE_NUM_THREADS")) or self.threads
        except Exception:  # noqa: BLE001 - not every device has threads
            pass

    def __repr__(self) -> str:
        return f"OpenVinoEngine({self.model_name!r}, device={self.device}, precision={self.precision})"

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self._asked == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        elif self._asked in ("fp16", "bf16"):
            config["INFERENCE_PRECISION_HINT"] = "f16" if self._asked == "fp16" else "bf16"
        if self._device.key == "cpu" and self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    @functools.cached_property
    def _model(self) -> Any:
        """The OpenVINO model built from the graph (only when a compile needs it: a kept compile does not)."""
        return build_model(read_layers(self.graph.param, self.graph.bin), self.graph.output_blob, self.model_name)

    def _compile(self, shape: tuple[int, int] | None) -> Any:
        compiled = self._compiled.get(shape)
        if compiled is not None:
            self._compiled.move_to_end(shape)
            return compiled
        kept = self._cache if shape is None else None
        compiled = kept.load() if kept is not None else None
        if compiled is None:
            model = self._model
            if shape is not None:
                model = model.clone()
                model.reshape({0: [1, 3, shape[0], shape[1]]})
            try:
                compiled = core().compile_model(model, self._device.ov_name, self._config())
            except RuntimeError as err:
                raise _as_engine_error(err, self._device.key, shape) from err
            if kept is not None:
                kept.save(compiled)
        self._compiled[shape] = compiled
        while len(self._compiled) > (1 if self._dynamic else STATIC_SHAPES_KEPT):
            old, _ = self._compiled.popitem(last=False)
            self._requests.pop(old, None)
        return compiled

    def _request(self, shape: tuple[int, int]) -> Any:
        key = None if self._dynamic else shape
        compiled = self._compile(key)
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = compiled.create_infer_request()
        return request

    def _drop(self, request: Any) -> None:
        """Stop a running request and forget it (a cancelled request answers every later call with an error)."""
        request.cancel()
        try:
            request.wait()
        except RuntimeError:
            pass
        for key, known in list(self._requests.items()):
            if known is request:
                del self._requests[key]

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": self.name,
            "device": self.device,
            "device_name": self._device.name,
            "precision": self.precision,
            "threads": self.threads,
            "openvino": self._ov.__version__.split("-")[0],
            "model_files": str(self.graph.param),
        }
        if self._cache is not None:
            info["compiled_model"] = self._cache.note
        return info

    def run_tile(
        self, x: np.ndarray, *, cancel: CancelCallback | None = None, step: StepCallback | None = None
    ) -> np.ndarray:
        """One tile through the network (see :meth:`texup.engines.base.Engine.run_tile`): the request runs
        asynchronously while ``cancel`` is polled every :data:`~texup.engines.base.CANCEL_POLL_S` (a cancelled
        request is stopped) and ``step`` told the time so far over the previous tile's."""
        check_tile(x)
        h, w = x.shape[:2]
        padded = pad_to_multiple(np.asarray(x, dtype=np.float32), self.input_multiple)
        nchw = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
        shape = (int(nchw.shape[2]), int(nchw.shape[3]))
        request = self._request(shape)
        poller = CancelPoller(cancel) if cancel is not None else None
        start = time.monotonic()
        try:
            request.set_input_tensor(self._ov.Tensor(nchw))
            request.start_async()
            while not request.wait_for(max(1, int(base.CANCEL_POLL_S * 1000))):
                if step is not None and self._last_s:
                    step(min(0.95, (time.monotonic() - start) / self._last_s))
                if poller is not None:
                    try:
                        poller.check()
                    except Cancelled:
                        self._drop(request)
                        raise
            # The request's own buffer: finish_tile clips it in place and returns a new array (the next tile
            # overwrites the buffer, never what this call returned).
            y = np.asarray(request.get_output_tensor(0).data, dtype=np.float32)[0]
        except RuntimeError as err:
            raise _as_engine_error(err, self.device, shape) from err
        self._last_s = time.monotonic() - start
        if step is not None:
            step(1.0)
        return finish_tile(y, shape, (h, w), self.scale, self.model_name)

    def free_cached_memory(self) -> None:
        """Drop the infer requests (their intermediate buffers) and, on a GPU or NPU, every compiled shape."""
        self._requests.clear()
        if not self._dynamic:
            self._compiled.clear()

    def activation_bytes(self, side: int) -> int:
        """Peak memory of one ``side`` x ``side`` CPU tile from :data:`OPENVINO_TILE_MEMORY` (measured figures)."""
        m = self.input_multiple
        pixels = (-(-side // m) * m) ** 2
        precision = "bf16" if self.precision == "bf16" else "fp32"
        fixed, per_pixel = OPENVINO_TILE_MEMORY[(bool(self.graph.full_resolution_head), precision)]
        return int(fixed + per_pixel * pixels * (self.scale / 4) ** 2)

    def auto_tile(self, *, overlap: int = 16, out_width: int | None = None) -> int:
        """The largest of 256, 224 ... 64 whose estimated memory and output row band fit the CPU budget; 256 on a
        GPU or NPU (an allocation failure there makes the pipeline try smaller tiles)."""
        if self.device != "cpu":
            return 256
        for tile in range(256, 63, -32):
            side = tile + 2 * overlap
            need = self.activation_bytes(side)
            if out_width:
                need += side * self.scale * out_width * 3 * 4
            if need <= CPU_MEMORY_BUDGET:
                return tile
        return 64


def _as_engine_error(err: Exception, device: str, shape: tuple[int, int] | None) -> Exception:
    text = str(err)
    size = f"a {shape[1]}x{shape[0]} tile" if shape else "the model"
    if any(k in text.lower() for k in ("bad_alloc", "out of memory", "failed to allocate", "cannot allocate")):
        return EngineOutOfMemory(f"OpenVINO ran out of memory on {device} for {size}")
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return TexupError(f"OpenVINO failed on {device} for {size}: {first[:300]}")


# --- the spec --------------------------------------------------------------------------------------------------

#: Where OpenVINO's candidates stand when nothing was measured: on the CPU after ncnn (the bundled engine) and
#: before torch; an Intel GPU just before a Vulkan GPU through ncnn. Calibration decides.
RANK_OPENVINO_CPU = RANK_CPU_BUNDLED + 5
RANK_OPENVINO_GPU = RANK_VULKAN - 1


def _candidates() -> list[tuple[int, Candidate]]:
    # NPUs only when asked for (static shapes, untested); GPUs and the CPU at OpenVINO's default precision.
    found = [(RANK_OPENVINO_GPU, Candidate("openvino", d.key)) for d in openvino_devices() if d.key.startswith("gpu")]
    return [*found, (RANK_OPENVINO_CPU, Candidate("openvino", "cpu"))]


def _open(model: Any, device: str, precision: str, layout: str) -> OpenVinoEngine:
    from texup.engines.ncnn_models import graph_for

    _import_openvino()
    if device == "auto":
        device = "cpu"
    # RRDBNet's dense blocks as the model writes them (Concat): OpenVINO's fastest form (ncnn's is "split").
    graph, name = graph_for(model, dense="concat")
    return OpenVinoEngine(graph, device=device, precision=precision, name=name)


def _check_device(device: str) -> str:
    _import_openvino()
    return parse_device(device).key


def _found_devices() -> list[Device]:
    from texup.machine import cpu_model

    return [Device(d.key, cpu_model() if d.key == "cpu" else d.name) for d in openvino_devices()]


def _summary() -> dict[str, Any]:
    return {
        "openvino": dist_version("openvino") if openvino_available() else None,
        "openvino_devices": [{"key": d.key, "name": d.name} for d in openvino_devices()],
    }


def _summary_lines(info: Mapping[str, Any]) -> list[str]:
    if not info["openvino"]:
        return ["openvino: not installed (pip install openvino)"]
    devices = ", ".join(f"{d['key']} {d['name']}" for d in info["openvino_devices"]) or "none"
    return [f"openvino: {info['openvino']} (devices: {devices})"]


SPEC = EngineSpec(
    name="openvino",
    available=openvino_available,
    devices={"cpu": ("fp32", "bf16"), "gpu[:N]": ("fp32", "fp16"), "npu": ("fp16",)},
    implied_by=("gpu", "npu"),
    candidates=_candidates,
    open=_open,
    check_device=_check_device,
    found_devices=_found_devices,
    machine=lambda: {"openvino": dist_version("openvino")},
    summary=_summary,
    summary_lines=_summary_lines,
)
