"""What texup wrote into an output folder, and from what: the manifest ``.texup/outputs.json``.

``texup upscale`` never replaces a file it did not write: an existing output path is overwritten only when
this folder's manifest (``.texup/outputs.json`` at the top of ``-o``) lists it and the file still has the size
and modification time it had when texup wrote it (an edited or foreign file is never replaced). Each entry
also says what the output was made from (the source's path, size, mtime and SHA-256, the model's identity,
texup's version, the options that change pixels), so a rerun redoes only what changed (:mod:`texup.library`).

Several runs may share one folder (farm shards, or two runs over the same inputs): the manifest is
read-modify-written under a lock (``.texup/lock``, ``flock``) and replaced atomically, and when two entries
claim one output the one that matches the file on disk wins.

Killed at any moment: every output is renamed into place only after its entry has been appended to the
run's journal (``.texup/journal/<run>.jsonl``, held under a lock for the run's life) with the size and
mtime the renamed file will have. The next run reads the journals: an entry whose file matches was written
by texup (a kill after the rename); one whose file does not match is ignored (a kill before it). Journals of
runs that are no longer alive (their lock is free) are folded into the manifest and deleted. A file nobody
recorded is still never replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from texup._atomic import atomic_path
from texup.weights.cache import file_lock, sha256_file, try_lock

STATE_DIR = ".texup"
RECORD_NAME = "outputs.json"
LOCK_NAME = "lock"
JOURNAL_DIR = "journal"
_FORMAT = 2
#: A cached hash is trusted only for a file last modified this long before it was hashed: a change within the
#: file system's timestamp granularity right after hashing would otherwise go unseen (git's "racy" rule).
RACY_NS = 2_000_000_000


def _stat(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _matches(entry: dict[str, Any] | None, stat: dict[str, int] | None) -> bool:
    return entry is not None and stat is not None and all(entry.get(k) == v for k, v in stat.items())


def _try_lock(fd: int) -> bool:
    """:func:`~texup.weights.cache.try_lock`, with any failure read as "held" (a journal whose run may be alive is
    left alone)."""
    try:
        return try_lock(fd)
    except OSError:
        return False


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of one journal, later lines winning; a line cut short by a kill is skipped."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return entries
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("entry"), dict):
            entries[row["key"]] = row["entry"]
    return entries


class OutputRecord:
    """The manifest of one output folder (``root``); keys are paths relative to it, with ``/``.

    Reading it writes nothing (``--dry-run``). :meth:`open_journal` starts a run's journal, :meth:`add` /
    :meth:`put` record entries (saved at most every ``save_every`` seconds), :meth:`close` saves and ends
    the journal; call it in a ``finally``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state = self.root / STATE_DIR
        self.path = self.state / RECORD_NAME
        self.journals = self.state / JOURNAL_DIR
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self._hashes: dict[str, dict[str, Any]] = {}
        self._models: dict[str, dict[str, Any]] = {}
        self.reload()
        self._added: dict[str, dict[str, Any]] = {}
        self._hashes_added: dict[str, dict[str, Any]] = {}
        self._models_added: dict[str, dict[str, Any]] = {}
        self._saved_at = time.monotonic()
        self._save_gap = 0.0  # 20x the last save's duration: saving never takes over 5 % of a run

    # -- reading ---------------------------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the manifest and every journal again (what other runs have written since)."""
        journals: dict[str, dict[str, Any]] = {}
        for journal in self._journal_files():  # journals first: a run folding one writes the manifest, then
            if journal != self._journal_path:  # deletes it, so each entry is in one or the other when read
                journals.update(_read_journal(journal))
        disk = self._read()
        self._merge(disk["files"], journals)
        self._entries, self._hashes, self._models = disk["files"], disk["hashes"], disk["models"]

    def key(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` relative to the root with ``/``, or None when it is not inside."""
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return None

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {"files": {}, "hashes": {}, "models": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: nothing is known to be texup's
            return out
        if not isinstance(data, dict):
            return out
        for section in out:
            value = data.get(section)
            if isinstance(value, dict):
                out[section] = {str(k): v for k, v in value.items() if isinstance(v, dict)}
        return out

    def _journal_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.journals.iterdir() if p.suffix == ".jsonl")
        except OSError:
            return []

    def _fold_ended(self, files: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``files`` plus the entries of journals whose runs ended (their lock is free) that match their files;
        those journals are deleted. Call under the manifest lock."""
        merged = dict(files)
        for journal in self._journal_files():
            if journal == self._journal_path:
                continue
            try:
                fd = os.open(journal, os.O_RDWR)
            except OSError:
                continue
            try:
                if not _try_lock(fd):
                    continue  # its run is still going: it folds its own journal in when it ends
                self._merge(merged, self._matching(_read_journal(journal)))
                journal.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return merged

    def _merge(self, into: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> None:
        """Add ``new``'s entries to ``into``; for an output both know, the entry matching the file wins."""
        for key, entry in new.items():
            old = into.get(key)
            if old is None or old == entry:
                into[key] = entry
                continue
            stat = _stat(self.root / key)
            if _matches(entry, stat) or not _matches(old, stat):
                into[key] = entry

    def _matching(self, entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The entries whose output file is there with the recorded size and mtime."""
        return {k: v for k, v in entries.items() if _matches(v, _stat(self.root / k))}

    def entry(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The entry of ``path`` when texup wrote it and it has not changed since, else None."""
        key = self.key(path)
        if key is None:
            return None
        entry = self._added.get(key) or self._entries.get(key)
        return entry if _matches(entry, _stat(Path(path))) else None

    def wrote(self, path: str | os.PathLike[str]) -> bool:
        """True when texup wrote ``path`` and it has not changed since (size and modification time)."""
        return self.entry(path) is not None

    # -- cached hashes ---------------------------------------------------------------------------------------

    def file_hash(self, path: str | os.PathLike[str]) -> str:
        """SHA-256 of a file (a model's weights), cached in the manifest by absolute path, size and mtime."""
        absolute = os.path.abspath(path)
        stat = _stat(Path(absolute))
        if stat is None:
            raise FileNotFoundError(absolute)
        cached = self._hashes_added.get(absolute) or self._hashes.get(absolute)
        if _matches(cached, stat) and int(cached.get("hashed_ns", 0)) - stat["mtime_ns"] >= RACY_NS:  # type: ignore[union-attr]
            return str(cached["sha256"])  # type: ignore[index]
        now = time.time_ns()
        digest = sha256_file(absolute)
        self._hashes_added[absolute] = {**stat, "sha256": digest, "hashed_ns": now}
        return digest

    def model_info(self, model_id: str) -> dict[str, Any]:
        """What an earlier run learned about a model (``scale``), by its identity."""
        return dict(self._models_added.get(model_id) or self._models.get(model_id) or {})

    def note_model(self, model_id: str, **info: Any) -> None:
        if self.model_info(model_id) != info:
            self._models_added[model_id] = info

    @property
    def changed(self) -> bool:
        """Whether this run wrote or recorded anything here (a journal was opened, or entries wait to be saved)."""
        return self._journal_fd is not None or bool(self._added)

    # -- writing ---------------------------------------------------------------------------------------------

    def open_journal(self) -> None:
        """Start this run's journal, locked while the run lives (ended runs' journals are folded by :meth:`save`)."""
        if self._journal_fd is not None:
            return
        self.journals.mkdir(parents=True, exist_ok=True)
        path = self.journals / f"{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        _try_lock(fd)  # a new, unique name: nobody else holds it
        self._journal_fd, self._journal_path = fd, path

    @contextmanager
    def writing(self, dst: str | os.PathLike[str], info: dict[str, Any]) -> Iterator[Path]:
        """Yield a temporary path beside ``dst`` to write the output to; then append its entry (``info`` plus
        the file's size and mtime, which the rename keeps) to the journal and rename it over ``dst``. Call
        :meth:`add` with the same ``info`` once it is done. One writing thread at a time."""
        target = Path(dst)
        key = self.key(target)
        with atomic_path(target) as tmp:
            yield tmp
            stat = _stat(tmp)
            if key is not None and stat is not None and self._journal_fd is not None:
                line = json.dumps({"key": key, "entry": {**info, **stat}}, sort_keys=True) + "\n"
                os.write(self._journal_fd, line.encode("utf-8"))  # one append: whole lines, never interleaved

    def add(self, path: str | os.PathLike[str], *, save_every: float = 1.0, **info: Any) -> None:
        """Record a file texup has just written (its size and mtime now, plus ``info``: what it was made from);
        the manifest is saved at most every ``save_every`` seconds."""
        key = self.key(path)
        stat = _stat(Path(path))
        if key is None or stat is None:
            return
        self.put(key, {**info, **stat}, save_every=save_every)

    def put(self, key: str, entry: dict[str, Any], *, save_every: float = 1.0) -> None:
        """Record ``entry`` (with the output's ``size`` and ``mtime_ns``) for the output ``key``."""
        self._added[key] = entry
        if time.monotonic() - self._saved_at >= max(save_every, self._save_gap):
            self.save()

    def save(self) -> None:
        """Merge this run's entries and ended runs' journals into the manifest on disk (under its lock) and
        replace it atomically."""
        if not (self._added or self._hashes_added or self._models_added or self._journal_files()):
            return
        started = time.monotonic()
        self.state.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state / LOCK_NAME):
            disk = self._read()
            files = self._fold_ended(disk["files"])
            self._merge(files, self._added)
            hashes = {**disk["hashes"], **self._hashes_added}
            models = {**disk["models"], **self._models_added}
            payload = {"format": _FORMAT, "files": files, "hashes": hashes, "models": models}
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
        self._entries, self._hashes, self._models = files, hashes, models
        self._added, self._hashes_added, self._models_added = {}, {}, {}
        self._saved_at = time.monotonic()
        # A library's manifest grows with it (about 1 kB per output on disk): the whole file is rewritten each
        # time, so the gap between saves grows with its cost. Nothing is at risk meanwhile: each output's entry
        # is in this run's journal before its rename.
        self._save_gap = 20.0 * (self._saved_at - started)

    def close(self) -> None:
        """Save, then end this run's journal (its entries are in the manifest now)."""
        try:
            if self._journal_path is not None:  # written and renamed, but interrupted before add()
                own = self._matching(_read_journal(self._journal_path))
                self._added.update({k: v for k, v in own.items() if k not in self._added})
            self.save()
        finally:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                if self._journal_path is not None:
                    self._journal_path.unlink(missing_ok=True)
                self._journal_fd = self._journal_path = None
