"""What texup already wrote into an output folder, read from the folder's manifest without texup (stdlib only).

The worker records every output it writes in ``.texup/outputs.json`` at the top of its folder (texup's
``texup.outputs``; the same record ``texup upscale`` keeps): the output's size and modification time, the
source's path, size, mtime and SHA-256, the model's identity, its reference and files, texup's version and the
options that change pixels. The add-on reads it for two decisions, before any worker starts:

* **Which name** a texture's result gets (:meth:`OutputsView.owned_by`): the plain ``wall_x4.png`` again when
  the file there is this texture's own earlier output, so a rerun never writes ``wall_x4_2.png`` beside it.
* **Whether a result is up to date** (:meth:`OutputsView.why_not_current`): texup wrote the file and it is
  unchanged since; the source has the recorded content; the same model reference with the same files (by
  size and mtime); the same texup version and pixel options. Then the texture is relinked to the file and no
  worker is needed. When the add-on cannot tell, the worker decides with the full rule (it hashes the model).

Journals of runs that were killed (``.texup/journal/*.jsonl``) are read too: an entry whose file matches was
written by texup. Reading writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

STATE_DIR = ".texup"
RECORD_NAME = "outputs.json"
JOURNAL_DIR = "journal"
#: A recorded hash is trusted by size and mtime only for a file last modified this long before it was hashed
#: (texup.outputs.RACY_NS: a change within the file system's timestamp granularity could go unseen).
RACY_NS = 2_000_000_000
UP_TO_DATE = "up to date"  # texup.library.UP_TO_DATE: the worker's result reason when it did nothing


def pixel_options(*, scale: float | None, seamless: str, role: str) -> dict[str, Any]:
    """The options an entry records as changing pixels (texup.library.pixel_options; the add-on never sets
    an exact output size). Compared with texup's by a test."""
    return {"scale": None if scale is None else float(scale), "size": None, "seamless": seamless, "role": role}


def model_ref(model: str) -> str:
    """A model reference as the worker records it: a file as its absolute path, a name as given."""
    path = os.path.expanduser(model)
    return os.path.abspath(path) if os.path.isfile(path) else model


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _matches(entry: Mapping[str, Any] | None, path: str) -> bool:
    stat = _stat(path)
    return entry is not None and stat is not None and (entry.get("size"), entry.get("mtime_ns")) == stat


class OutputsView:
    """The manifest of one output folder as this process found it (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._entries: dict[str, dict[str, Any]] = {}
        self._read()

    def _read(self) -> None:
        try:
            with open(os.path.join(self.root, STATE_DIR, RECORD_NAME), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):  # none yet, or unreadable: nothing is known to be texup's
            data = {}
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, dict):
            self._entries = {str(k): v for k, v in files.items() if isinstance(v, dict)}
        journals = os.path.join(self.root, STATE_DIR, JOURNAL_DIR)
        try:
            names = sorted(n for n in os.listdir(journals) if n.endswith(".jsonl"))
        except OSError:
            names = []
        for name in names:  # a killed run's outputs: an entry counts only while its file matches it
            try:
                with open(os.path.join(journals, name), encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                    continue
                if not isinstance(row.get("entry"), dict):
                    continue
                key, entry = row["key"], row["entry"]
                if _matches(entry, os.path.join(self.root, key)) and not _matches(
                    self._entries.get(key), os.path.join(self.root, key)
                ):
                    self._entries[key] = entry

    def entry(self, path: str) -> dict[str, Any] | None:
        """The entry of the output ``path`` when texup wrote it and it is unchanged since, else None."""
        try:
            key = os.path.relpath(os.path.abspath(path), self.root).replace(os.sep, "/")
        except ValueError:  # another drive (Windows)
            return None
        if key.startswith("../") or key == "..":
            return None
        entry = self._entries.get(key)
        return entry if _matches(entry, path) else None

    def owned_by(self, path: str, origin: str) -> bool:
        """True when ``path`` is texup's unchanged earlier output of ``origin`` (a source file's absolute path,
        or the add-on's name for a packed or generated image): this texture may write there again."""
        entry = self.entry(path)
        return entry is not None and (entry.get("origin") or entry.get("source")) == origin

    def why_not_current(
        self,
        path: str,
        *,
        source: str,
        model: str,
        options: Mapping[str, Any],
        texup: str,
    ) -> str | None:
        """``None`` when the output ``path`` is up to date for ``source`` (the file the worker would read),
        ``model`` (a reference), ``options`` (:func:`pixel_options`) and texup version ``texup``; else what
        differs or cannot be told without the worker."""
        entry = self.entry(path)
        if entry is None:
            return "no unchanged earlier output"
        if entry.get("texup") != texup:
            return "texup version changed"
        if entry.get("options") != dict(options):
            return "options changed"
        if entry.get("model_ref") != model_ref(model):
            return "model changed"
        files = entry.get("model_files")
        if not isinstance(files, list) or not files:
            return "model files not recorded"
        for recorded in files:
            if not isinstance(recorded, dict) or not _matches(recorded, str(recorded.get("path", ""))):
                return "model changed"
        if not isinstance(entry.get("source_sha256"), str):
            return "inputs not recorded"
        stat = _stat(source)
        if stat is None:
            return "source missing"
        hashed_ns = entry.get("hashed_ns")
        same_file = (
            entry.get("source") == os.path.abspath(source)
            and (entry.get("source_size"), entry.get("source_mtime_ns")) == stat
            and isinstance(hashed_ns, int)
            and hashed_ns - stat[1] >= RACY_NS
        )
        if not same_file:
            try:
                if sha256_of(source) != entry["source_sha256"]:
                    return "source changed"
            except OSError:
                return "source unreadable"
        return None
