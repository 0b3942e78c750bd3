"""What texup wrote into an output folder, so that a later run replaces only its own files.

``texup upscale`` never replaces a file it did not write: an existing output path is overwritten only when
this folder's record (``.texup/outputs.json`` at the top of ``-o``) lists it and the file still has the size
and modification time it had when texup wrote it (an edited or foreign file is never replaced). The record is
read-modify-written under a lock (several runs into one folder keep each other's entries) and replaced
atomically; a run killed before saving loses only its own entries, which makes the next run refuse to replace
those files (the safe side), never replace something it should not.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from texup._atomic import atomic_path
from texup.weights.cache import file_lock

STATE_DIR = ".texup"
RECORD_NAME = "outputs.json"
LOCK_NAME = "lock"
_FORMAT = 1


def _stat(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class OutputRecord:
    """The record of one output folder (``root``); keys are paths relative to it, with ``/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state = self.root / STATE_DIR
        self.path = self.state / RECORD_NAME
        self._entries: dict[str, dict[str, Any]] = self._read()
        self._added: dict[str, dict[str, Any]] = {}
        self._saved_at = time.monotonic()

    def _key(self, path: Path) -> str | None:
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return None

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: nothing is known to be texup's
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}

    def wrote(self, path: str | os.PathLike[str]) -> bool:
        """True when texup wrote ``path`` and it has not changed since (size and modification time)."""
        key = self._key(Path(path))
        entry = None if key is None else (self._added.get(key) or self._entries.get(key))
        now = _stat(Path(path))
        return entry is not None and now is not None and now == {k: entry.get(k) for k in now}

    def add(self, path: str | os.PathLike[str], *, save_every: float = 1.0) -> None:
        """Record a file texup has just written; the record is saved at most every ``save_every`` seconds."""
        key = self._key(Path(path))
        stat = _stat(Path(path))
        if key is None or stat is None:
            return
        self._added[key] = stat
        if time.monotonic() - self._saved_at >= save_every:
            self.save()

    def save(self) -> None:
        """Merge this run's entries into the record on disk (under its lock) and replace it atomically."""
        if not self._added:
            return
        self.state.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state / LOCK_NAME):
            merged = self._read()
            merged.update(self._added)
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps({"format": _FORMAT, "files": merged}, indent=1, sort_keys=True),
                               encoding="utf-8")
        self._entries, self._added = merged, {}
        self._saved_at = time.monotonic()
