"""Pipeline-friendly functions: the same operations as ``texup upscale`` for Python code.

Models are loaded once and kept: calling :func:`upscale_file` in a loop with the same model name
does not reload weights. The last :data:`CACHE_SIZE` :class:`~texup.inference.pipeline.Upscaler` objects are
kept (least recently used first out), keyed by the model's :meth:`~texup.weights.ref.ModelRef.quick_key` (a
file's resolved path, size and modification time: a rewritten weights file is loaded again) and by engine, device,
precision and layout. Without torch installed the ncnn engine runs everything except :func:`load_model`, which
builds a torch module.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from texup.engines.base import Engine
from texup.inference.pipeline import ProgressCallback, UpscaleOptions, Upscaler
from texup.options import EngineChoice
from texup.weights.ref import ModelRef
from texup.weights.registry import DEFAULT_MODEL, load_pretrained
from texup.weights.registry import list_models as _list_models

if TYPE_CHECKING:
    from texup.weights import LoadedModel

ModelArg = Union[str, PathLike, "LoadedModel", ModelRef, Upscaler, Engine]

#: How many upscalers (each holding a model on its device) stay loaded; the worker serves one model at a time,
#: so two keep the switch between a model and a fine-tuned variant cheap without holding every model ever used.
CACHE_SIZE = 2

_cache_lock = threading.Lock()
_upscalers: OrderedDict[tuple[Any, ...], Upscaler] = OrderedDict()


def clear_cache() -> None:
    """Drop every cached upscaler (and with it its model and device memory)."""
    with _cache_lock:
        _upscalers.clear()


def load_model(name_or_path: str | PathLike = DEFAULT_MODEL) -> LoadedModel:
    """Load a known model by name (converted/cached on first use, no network) or any weights file.

    Supported files: ``.safetensors``, ``.pth/.pt/.ckpt`` (loaded with ``weights_only=True``), ncnn
    ``.param``/``.bin``. Returns the generator on the CPU in float32, in eval mode.
    Raises ``UnknownModelError`` / ``ModelLoadError`` with the reason.
    """
    return load_pretrained(name_or_path)


def list_models() -> list[dict[str, Any]]:
    """Known models: one dict per model (name, arch, scale, source, license, cached, path)."""
    return _list_models()


def blend_models(a: str | PathLike, b: str | PathLike, alpha: float, out: str | PathLike | None = None) -> Path:
    """Network interpolation (ESRGAN section 3.4): ``(1 - alpha) * A + alpha * B``, so alpha 0 gives ``a`` and 1
    gives ``b`` bit for bit. ``a``/``b``: names or weights files of one architecture and shape (else
    :class:`~texup.weights.blend.BlendError`). Writes ``out`` (``.safetensors`` with both parents' SHA-256 and
    alpha as provenance), or with ``out=None`` returns the cached blend that the reference ``blend:A,B@ALPHA``
    (usable as ``model`` everywhere) runs. No torch needed."""
    from texup.weights.blend import blend_file, format_blend, write_blend

    if out is None:
        return blend_file(format_blend(a, b, alpha))
    return write_blend(a, b, alpha, out)


def detail_model(model: str | PathLike, detail: float) -> str:
    """The model reference for ``model`` dialled to ``detail`` in [0, 1]: 1 is the model, 0 its partner (the
    registry's published PSNR model, or the one a ``texup train --stage gan`` result names), between them the
    blend ``blend:PARTNER,MODEL@DETAIL``. Raises ``BlendError`` with the reason when there is no partner."""
    from texup.weights.blend import detail_ref

    return detail_ref(model, detail)


def get_upscaler(
    model: ModelArg = DEFAULT_MODEL,
    *,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    layout: str = "auto",
    status: Callable[[str], None] | None = None,
    choice: EngineChoice | None = None,
) -> Upscaler:
    """An :class:`Upscaler` for ``model``; names and paths are loaded once per process and reused.

    ``engine``: "auto" (the measured fastest here, :mod:`texup.engines.select`), "torch" or "ncnn";
    ``device``: "auto", "cpu", "cuda[:N]", "mps", "vulkan[:N]"; ``precision``: "auto", "fp32", "bf16",
    "fp16"; ``layout`` (torch): "auto", "nchw" or "channels_last"; ``choice``: all four as one
    :class:`~texup.options.EngineChoice` (given, it replaces them). ``status`` receives one line per step
    of a first-use engine measurement.
    """
    if choice is not None:
        engine, device, precision, layout = choice.engine, choice.device, choice.precision, choice.layout
    if isinstance(model, Upscaler):
        return model
    if isinstance(model, Engine) or not isinstance(model, (str, PathLike, ModelRef)):
        return Upscaler(model, engine=engine, device=device, precision=precision, layout=layout, status=status)
    ref = ModelRef.of(model)
    if ref.kind == "loaded":  # in memory already: nothing to cache by
        return Upscaler(ref.loaded, engine=engine, device=device, precision=precision, layout=layout, status=status)
    identity = ref.quick_key()
    key = (*identity, engine, device, precision, layout)
    with _cache_lock:
        upscaler = _upscalers.get(key)
        if upscaler is not None:
            _upscalers.move_to_end(key)
            return upscaler
        if identity[0] in ("file", "blend"):  # an older version of the same file (or parents) is stale: free it
            for old in [k for k in _upscalers if k[:2] == identity[:2]]:
                del _upscalers[old]
        model = ref.text
        upscaler = Upscaler(model, engine=engine, device=device, precision=precision, layout=layout, status=status)
        _upscalers[key] = upscaler
        while len(_upscalers) > CACHE_SIZE:
            _upscalers.popitem(last=False)
        return upscaler


def upscale_array(
    pixels: np.ndarray,
    *,
    model: ModelArg = DEFAULT_MODEL,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    layout: str = "auto",
    colorspace: str = "srgb",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> np.ndarray:
    """Upscale an (H, W, C) array, C in 1..4, dtype uint8/uint16/float16/float32.

    Returns an array with the same channels and dtype, of the size the options ask for (default: the
    model's scale). ``options`` are :class:`UpscaleOptions` fields: ``scale``, ``target_size``, ``tile``,
    ``overlap``, ``seamless`` ("auto"/"on"/"off"), ``role`` ("color"/"normal"/"data"), ``color_fix``
    ("auto"/"on"/"off"), ``alpha`` ("auto"/"model"/"resample": how a varying alpha is upscaled).
    ``colorspace`` says how float pixels are encoded ("srgb" or "linear").
    """
    upscaler = get_upscaler(model, engine=engine, device=device, precision=precision, layout=layout)
    return upscaler.upscale_array(
        pixels, UpscaleOptions(**options), colorspace=colorspace, progress=progress, cancel=cancel
    )


def upscale_file(
    src: str | PathLike,
    dst: str | PathLike,
    *,
    model: ModelArg = DEFAULT_MODEL,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    layout: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> Path:
    """Upscale the image file ``src`` into ``dst`` (atomically; never over ``src``).

    The output keeps the input's format, bit depth, channels and colour space unless ``dst``'s suffix
    names another format. Returns the written path. Errors name the file and the reason.
    """
    upscaler = get_upscaler(model, engine=engine, device=device, precision=precision, layout=layout)
    return upscaler.upscale_file(src, dst, UpscaleOptions(**options), progress=progress, cancel=cancel)
