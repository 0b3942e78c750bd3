"""What texup wrote into an output folder, and from what: the manifest ``.texup/outputs.json``.

``texup upscale`` never replaces a file it did not write: an existing output path is overwritten only when
this folder's manifest (``.texup/outputs.json`` at the top of ``-o``) lists it and the file still has the size
and modification time it had when texup wrote it (an edited or foreign file is never replaced). Each entry
also says what the output was made from (the source's path, size, mtime and SHA-256, the model's identity,
texup's version, the options that change pixels), so a rerun redoes only what changed (:mod:`texup.library`).

Several runs may share one folder (farm shards, or two runs over the same inputs): the manifest is
read-modify-written under a lock (``.texup/lock``, ``flock``) and replaced atomically, and when two entries
claim one output the one that matches the file on disk wins. Runs over the same outputs split the work: before
making an output a run *claims* it (:meth:`OutputRecord.claim`: a line in its journal, written under the lock);
an output claimed by another live run is left to it and looked at again once that run has written it (then it
is up to date) or has died (its claims end with its journal's lock).

Killed at any moment: every output is renamed into place only after its entry has been appended to the
run's journal (``.texup/journal/<run>.jsonl``, held under a lock for the run's life) with the size and
mtime the renamed file will have. The next run reads the journals: an entry whose file matches was written
by texup (a kill after the rename); one whose file does not match is ignored (a kill before it). Journals of
runs that are no longer alive (their lock is free) are folded into the manifest and deleted, only once the
manifest that holds their entries is saved: a save that fails (a read-only folder, a full disk) keeps every
journal, and the next run still knows those outputs. A file nobody recorded is still never replaced.

Hostile or damaged state is named, never followed, never a hang: ``.texup``, its journal folder, the lock, the
manifest and the journals are used only as a plain folder or plain files (a link there is not followed, a FIFO
is never opened for reading in a way that waits). A manifest that is not valid JSON or not shaped like one
is reported (:attr:`OutputRecord.warnings`) and the entries that still parse are kept; the damaged file is
kept beside it (``outputs.json.damaged``) when the manifest is next saved, and a refusal to replace an output
then says why texup may not know its own output (:attr:`OutputRecord.damage_note`). Entries with fields of the
wrong type lose those fields (an entry without a valid size and mtime is dropped: it could never match).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat as stat_module
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from texup._atomic import atomic_path
from texup.weights.cache import _release, remove_stale_temp_files, sha256_file, try_lock

STATE_DIR = ".texup"
RECORD_NAME = "outputs.json"
DAMAGED_NAME = "outputs.json.damaged"
LOCK_NAME = "lock"
JOURNAL_DIR = "journal"
_FORMAT = 2
#: A cached hash is trusted only for a file last modified this long before it was hashed: a change within the
#: file system's timestamp granularity right after hashing would otherwise go unseen (git's "racy" rule).
RACY_NS = 2_000_000_000
#: How long a run waits for the manifest lock (another run saving a very large manifest) before giving up.
LOCK_TIMEOUT_S = 600.0

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO opened for reading does not wait for a writer
_BINARY = getattr(os, "O_BINARY", 0)

#: The fields an output's entry may hold, with their types; a field of another type is dropped when read.
ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "size": int,
    "mtime_ns": int,
    "hashed_ns": int,
    "source": str,
    "source_size": int,
    "source_mtime_ns": int,
    "source_sha256": str,
    "model": str,
    "texup": str,
    "options": dict,
    "engine": str,
    "origin": str,
    "model_ref": str,
    "model_files": list,
}
_HASH_FIELDS: dict[str, type | tuple[type, ...]] = {"size": int, "mtime_ns": int, "sha256": str, "hashed_ns": int}

# Claim states (OutputRecord.claim)
CLAIMED = "claimed"  # this run may make the output; no other run has claimed or written it while we looked
CLAIMED_AFTER_OTHER = "claimed after another run"  # free now, but another run claimed or wrote it: judge it again
HELD = "held by another run"  # another live run is making it


class ManifestError(OSError):
    """The output folder's manifest or journal cannot be used or saved; the message is one line naming the file."""


def _stat(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL in a damaged entry's name
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


def _typed(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is int)


def _clean(value: Any, fields: dict[str, type | tuple[type, ...]]) -> tuple[dict[str, Any] | None, bool]:
    """``value`` with the known fields of a wrong type removed; None when it is no dict or lacks a valid size and
    mtime (it could never match a file). The flag says whether anything was removed or refused."""
    if not isinstance(value, dict):
        return None, True
    if not (_typed(value.get("size"), int) and _typed(value.get("mtime_ns"), int)):
        return None, True
    bad = [k for k, kind in fields.items() if k in value and not _typed(value[k], kind)]
    if not bad:
        return value, False
    return {k: v for k, v in value.items() if k not in bad}, True


def valid_key(key: Any) -> TypeGuard[str]:
    """An output's key: a relative ``/`` path inside the folder, no ``..``, no NUL, not in ``.texup``."""
    if not isinstance(key, str) or not key or "\0" in key or key.startswith("/") or "\\" in key:
        return False
    parts = key.split("/")
    return ".." not in parts and "" not in parts and parts[0] != STATE_DIR and not re.match(r"^[A-Za-z]:", key)


class _Unusable(Exception):
    """A state file or folder that is not a plain file or folder; the message says what it is instead."""


def _kind(mode: int) -> str:
    if stat_module.S_ISLNK(mode):
        return "a link"
    if stat_module.S_ISDIR(mode):
        return "a folder"
    if stat_module.S_ISFIFO(mode):
        return "a FIFO"
    if stat_module.S_ISSOCK(mode):
        return "a socket"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _plain_dir(path: Path) -> bool:
    """True when ``path`` is a folder (not a link to one); False when it does not exist; raises :class:`_Unusable`
    for anything else (a link, a file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as err:
        raise _Unusable(f"cannot be read ({getattr(err, 'strerror', None) or err})") from err
    if stat_module.S_ISDIR(st.st_mode):
        return True
    raise _Unusable(f"is {_kind(st.st_mode)}, not a folder; texup keeps its state in a plain folder there")


def _open_plain(path: Path, flags: int, mode: int = 0o666) -> int:
    """Open ``path`` as a plain file only: a link is not followed (``O_NOFOLLOW``), a FIFO does not block
    (``O_NONBLOCK``) and is refused after opening, as is anything else that is not a regular file. Raises
    :class:`_Unusable` (what it is instead) or ``OSError``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    else:
        if not stat_module.S_ISREG(st.st_mode):
            raise _Unusable(f"is {_kind(st.st_mode)}, not a plain file")
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _BINARY, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _Unusable("is a link, not a plain file") from err
        raise
    try:
        st = os.fstat(fd)
        if not stat_module.S_ISREG(st.st_mode):  # swapped in between
            raise _Unusable(f"is {_kind(st.st_mode)}, not a plain file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_plain(path: Path, offset: int = 0) -> bytes | None:
    """The bytes of a plain file from ``offset`` (None when it does not exist); raises :class:`_Unusable` or
    ``OSError``."""
    try:
        fd = _open_plain(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _why(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


def _json(line: bytes | str) -> Any:
    """``json.loads``, with every way a damaged text fails (bad UTF-8, deep nesting, huge numbers) as ValueError."""
    try:
        return json.loads(line)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err


@dataclass
class _Rows:
    """What one journal says: entries (later lines win), the keys claimed and not yet done, every key it names."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: set[str] = field(default_factory=set)
    written: set[str] = field(default_factory=set)  # entry lines not released: the rename follows the line
    named: set[str] = field(default_factory=set)
    bad: int = 0  # lines that could not be read, not counting a last line cut short by a kill

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = _json(line)
            except ValueError:
                self.bad += index < len(lines) - 1  # the last line may be cut short by a kill: not damage
                continue
            if not isinstance(row, dict):
                self.bad += 1
                continue
            if "claim" in row or "release" in row:
                key = row.get("claim", row.get("release"))
                if valid_key(key):
                    self.named.add(key)
                    if "claim" in row:
                        self.claims.add(key)
                    else:
                        self.claims.discard(key)
                        self.written.discard(key)
                continue
            key = row.get("key")
            entry, damaged = _clean(row.get("entry"), ENTRY_FIELDS)
            if not valid_key(key) or entry is None:
                self.bad += 1
                continue
            self.bad += damaged
            self.entries[key] = entry
            self.claims.discard(key)
            self.written.add(key)
            self.named.add(key)


def _read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of one journal, later lines winning; a line cut short by a kill is skipped (as is any line
    that is not an entry: damaged, or a claim)."""
    rows = _Rows()
    try:
        data = _read_plain(path)
    except (OSError, _Unusable):
        return rows.entries
    if data:
        rows.feed(data)
    return rows.entries


_TOP = re.compile(r'^ "(files|hashes|models)": ', re.M)
_PAIR = re.compile(r'^  "', re.M)
_COLON = re.compile(r"\s*:\s*")


def _salvage(data: bytes) -> dict[str, dict[str, Any]]:
    """The entries that still parse in a damaged manifest written by :meth:`OutputRecord.save` (``indent=1``: a
    section's entries start at lines indented by two spaces), read one by one; a damaged entry is skipped."""
    out: dict[str, dict[str, Any]] = {"files": {}, "hashes": {}, "models": {}}
    text = data.decode("utf-8", errors="replace")
    tops = [(m.start(), m.group(1)) for m in _TOP.finditer(text)]
    decoder = json.JSONDecoder()
    section = None
    top = 0
    for match in _PAIR.finditer(text):
        while top < len(tops) and tops[top][0] < match.start():
            section = tops[top][1]
            top += 1
        if section is None:
            continue
        try:
            key, end = decoder.raw_decode(text, match.end() - 1)
            colon = _COLON.match(text, end)
            if colon is None:
                continue
            value, _ = decoder.raw_decode(text, colon.end())
        except (ValueError, RecursionError):
            continue
        if isinstance(key, str) and isinstance(value, dict):
            out[section][key] = value
    return out


@dataclass
class _Manifest:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    hashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None  # why the file on disk could not be read whole (it is then "damaged")
    replaceable: bool = True  # a save may move the damaged file aside (False: a folder is in its place)


class OutputRecord:
    """The manifest of one output folder (``root``); keys are paths relative to it, with ``/``.

    Reading it writes nothing (``--dry-run``) and never raises: what is damaged is in :attr:`warnings`.
    :meth:`open_journal` starts a run's journal, :meth:`add` / :meth:`put` record entries (saved at most every
    ``save_every`` seconds; a failed periodic save is retried and the entries stay in the journal),
    :meth:`close` saves and ends the journal (raises :class:`ManifestError` when the manifest cannot be saved;
    the journal then stays for the next run); call it in a ``finally``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state = self.root / STATE_DIR
        self.path = self.state / RECORD_NAME
        self.journals = self.state / JOURNAL_DIR
        #: One line per problem found with the folder's state (damaged manifest, links, unreadable journals).
        self.warnings: list[str] = []
        #: Set when the manifest was found damaged (now or by an earlier run): why an output may not be known
        #: as texup's although texup wrote it. Appended to a refusal to replace an output.
        self.damage_note: str | None = None
        self.save_error: ManifestError | None = None  # the last failed periodic save (retried; raised by close)
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None
        self._journal_torn = False  # a journal write failed part-way: the next line starts on a new line
        self._entries: dict[str, dict[str, Any]] = {}
        self._hashes: dict[str, dict[str, Any]] = {}
        self._models: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, dict[str, Any]] = {}  # entries of live runs' journals read while claiming
        self._scans: dict[str, tuple[int, _Rows]] = {}  # other journals read so far: (offset, what they said)
        self.reload()
        self._added: dict[str, dict[str, Any]] = {}
        self._hashes_added: dict[str, dict[str, Any]] = {}
        self._models_added: dict[str, dict[str, Any]] = {}
        self._saved_at = time.monotonic()
        self._save_gap = 0.0  # 20x the last save's duration: saving never takes over 5 % of a run

    # -- reading ---------------------------------------------------------------------------------------------

    def _warn(self, line: str) -> None:
        if line not in self.warnings:
            self.warnings.append(line)

    def reload(self) -> None:
        """Read the manifest and every journal again (what other runs have written since)."""
        journals: dict[str, dict[str, Any]] = {}
        for journal in self._journal_files():  # journals first: a run folding one writes the manifest, then
            if journal != self._journal_path:  # deletes it, so each entry is in one or the other when read
                journals.update(self._journal_entries(journal))
        disk = self._read()
        self._merge(disk.files, journals)
        self._entries, self._hashes, self._models = disk.files, disk.hashes, disk.models

    def catch_up(self) -> None:
        """Read what other runs' journals added since the last look (only the new bytes: cheap), so the outputs
        they wrote since are known to :meth:`entry` without reading the whole manifest again."""
        self._scan_journals()

    def key(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` relative to the root with ``/``, or None when it is not inside."""
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return None

    def _state_usable(self) -> bool:
        """True when ``.texup`` is a plain folder; a warning when it is something else (a link is not followed)."""
        try:
            return _plain_dir(self.state)
        except _Unusable as err:
            self._warn(f"{self.state} {err}: it is not read, and no output can be recorded here until it is removed")
            return False

    def _read(self) -> _Manifest:
        out = _Manifest()
        if not self._state_usable():
            return out
        if (self.state / DAMAGED_NAME).exists():
            self.damage_note = (
                f"this folder's manifest was found damaged (kept as {self.state / DAMAGED_NAME}); texup's records of "
                "some of its outputs were lost with it"
            )
        try:
            data = _read_plain(self.path)
        except FileNotFoundError:
            data = None
        except _Unusable as err:
            out.problem, out.replaceable = str(err), not self.path.is_dir()
            self._damaged(out, 0)
            return out
        except OSError as err:  # unreadable (permissions): nothing is known, and a save would fail too
            out.problem, out.replaceable = f"cannot be read ({_why(err)})", False
            self._warn(f"{self.path} {out.problem}; texup treats the outputs recorded only in it as unknown")
            self.damage_note = f"this folder's manifest {self.path} {out.problem}"
            return out
        if data is None:
            return out
        try:
            parsed = _json(data)
        except ValueError as err:
            out.problem = f"is not valid JSON ({str(err).splitlines()[0][:120]})"
            salvaged = _salvage(data)
            self._take(out, salvaged)
            self._damaged(out, len(out.files))
            return out
        if not isinstance(parsed, dict) or not isinstance(parsed.get("files", {}), dict):
            shape = type(parsed).__name__ if not isinstance(parsed, dict) else "'files' of the wrong type"
            out.problem = f"is not shaped like a texup manifest ({shape})"
            self._damaged(out, 0)
            return out
        dropped, trimmed = self._take(out, {s: parsed.get(s) for s in ("files", "hashes", "models")})
        if dropped or trimmed:
            parts = [
                f"{n} {what}"
                for n, what in (
                    (dropped, "unreadable (dropped)"),
                    (trimmed, "with fields of the wrong type (those fields ignored)"),
                )
                if n
            ]
            self._warn(f"{self.path}: entries " + " and ".join(parts))
        if dropped:  # an output's record is lost: say so where it matters, and keep the file when saving
            out.problem = f"holds {dropped} unreadable entr{'y' if dropped == 1 else 'ies'}"
            self.damage_note = (
                f"this folder's manifest {self.path} {out.problem}; texup's records of some of its outputs were lost"
            )
        return out

    def _take(self, out: _Manifest, sections: dict[str, Any]) -> tuple[int, int]:
        """Keep the valid entries of ``sections``; the numbers of entries dropped and of entries trimmed."""
        dropped = trimmed = 0
        files, hashes, models = (sections.get(s) for s in ("files", "hashes", "models"))
        for key, value in (files if isinstance(files, dict) else {}).items():
            entry, damaged = _clean(value, ENTRY_FIELDS)
            if entry is None or not valid_key(key):
                dropped += 1
                continue
            trimmed += damaged
            out.files[key] = entry
        for key, value in (hashes if isinstance(hashes, dict) else {}).items():
            entry, damaged = _clean(value, _HASH_FIELDS)
            trimmed += damaged  # a cached hash is taken again when it is missing
            if entry is not None and "\0" not in key:
                out.hashes[key] = entry
        for key, value in (models if isinstance(models, dict) else {}).items():
            if isinstance(value, dict):
                out.models[key] = value
        return dropped, trimmed

    def _damaged(self, out: _Manifest, kept: int) -> None:
        kept_text = (
            f"{kept} entr{'y' if kept == 1 else 'ies'} could still be read and are kept"
            if kept
            else "no entry could be read"
        )
        self._warn(
            f"{self.path} {out.problem}: {kept_text}; outputs recorded only in it count as files texup did not "
            f"write (--overwrite replaces them); the damaged file is kept as {DAMAGED_NAME} when the manifest is "
            "next saved"
        )
        self.damage_note = (
            f"this folder's manifest {self.path} is damaged ({out.problem}); texup's records of some of its outputs "
            "were lost with it"
        )

    def _journal_files(self) -> list[Path]:
        try:
            if not (self._state_usable() and _plain_dir(self.journals)):
                return []
        except _Unusable as err:
            self._warn(f"{self.journals} {err}: its journals are not read, and this run cannot record outputs here")
            return []
        try:
            names = os.listdir(self.journals)
        except OSError as err:
            self._warn(f"{self.journals} cannot be read ({_why(err)}); killed runs' outputs there are not known")
            return []
        return sorted(self.journals / n for n in names if n.endswith(".jsonl"))

    def _journal_entries(self, journal: Path) -> dict[str, dict[str, Any]]:
        rows = _Rows()
        try:
            data = _read_plain(journal)
        except _Unusable as err:
            self._warn(f"{journal} {err}: it is not read")
            return {}
        except OSError as err:
            self._warn(f"{journal} cannot be read ({_why(err)})")
            return {}
        if data:
            rows.feed(data)
        if rows.bad:
            self._warn(f"{journal}: {rows.bad} damaged line{'s' if rows.bad > 1 else ''} skipped")
        return rows.entries

    def _fold_ended(self, files: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[Path]]:
        """``files`` plus the entries of journals whose runs ended (their lock is free) that match their files, and
        those journals (to delete once the manifest holding their entries is saved). Call under the manifest lock."""
        merged = dict(files)
        ended: list[Path] = []
        for journal in self._journal_files():
            if journal == self._journal_path:
                continue
            try:
                fd = _open_plain(journal, os.O_RDWR)
            except (OSError, _Unusable):
                continue
            try:
                if not _try_lock(fd):
                    continue  # its run is still going: it folds its own journal in when it ends
                self._merge(merged, self._matching(self._journal_entries(journal)))
                ended.append(journal)
            finally:
                os.close(fd)
        return merged, ended

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
        stat = _stat(Path(path))
        for entry in (self._added.get(key), self._entries.get(key), self._seen.get(key)):
            if _matches(entry, stat):
                return entry
        return None

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
        if (
            cached is not None
            and _matches(cached, stat)
            and isinstance(cached.get("sha256"), str)
            and _typed(cached.get("hashed_ns"), int)
            and cached["hashed_ns"] - stat["mtime_ns"] >= RACY_NS
        ):
            return str(cached["sha256"])
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

    # -- the state folder and its lock ---------------------------------------------------------------------

    def _make_state(self, *folders: Path) -> None:
        """Create ``.texup`` (and ``folders`` in it) as plain folders; :class:`ManifestError` when one is a link,
        a file, or cannot be created."""
        for folder in (self.state, *folders):
            try:
                if not _plain_dir(folder):
                    folder.mkdir(parents=folder == self.state, exist_ok=True)
                    if not _plain_dir(folder):  # replaced meanwhile
                        raise _Unusable("is not a folder")
            except _Unusable as err:
                raise ManifestError(f"{folder} {err}; remove it so texup can record its outputs here") from None
            except OSError as err:
                raise ManifestError(f"{folder}: cannot create texup's state folder ({_why(err)})") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the manifest lock (``.texup/lock``, a plain file: a link there is refused, never followed)."""
        path = self.state / LOCK_NAME
        try:
            fd = _open_plain(path, os.O_RDWR | os.O_CREAT)
        except _Unusable as err:
            raise ManifestError(f"{path} {err}; remove it so texup can lock its manifest") from None
        except OSError as err:
            raise ManifestError(f"{path}: cannot open the manifest lock ({_why(err)})") from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    if try_lock(fd):
                        break
                except OSError as err:
                    raise ManifestError(f"{path}: cannot lock the manifest ({_why(err)})") from None
                if time.monotonic() >= deadline:
                    raise ManifestError(f"{path}: another texup run held the manifest lock for {LOCK_TIMEOUT_S:.0f} s")
                time.sleep(0.02)
            try:
                yield
            finally:
                _release(fd)
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------------------------

    def open_journal(self) -> None:
        """Start this run's journal, locked while the run lives (ended runs' journals are folded by :meth:`save`).
        Raises :class:`ManifestError` (one line) when the folder's state cannot take it: nothing could be
        recorded, so nothing should be written."""
        if self._journal_fd is not None:
            return
        self._make_state(self.journals)
        path = self.journals / f"{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        with self._locked():  # a run folding ended journals (under this lock) never sees it unlocked
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _NOFOLLOW | _BINARY, 0o666)
            except OSError as err:
                raise ManifestError(f"{path}: cannot start this run's journal ({_why(err)})") from None
            _try_lock(fd)  # a new, unique name: nobody else holds it
        self._journal_fd, self._journal_path = fd, path

    def _append(self, row: dict[str, Any]) -> None:
        """One line in this run's journal, written with one ``write`` (lines of runs never interleave). A write that
        failed part-way (a full disk) makes the next line start on a new line, so only the torn line is lost."""
        assert self._journal_fd is not None
        data = (b"\n" if self._journal_torn else b"") + (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
        self._journal_torn = True
        written = os.write(self._journal_fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, "the journal line was written only in part")
        self._journal_torn = False

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
                self._append({"key": key, "entry": {**info, **stat}})

    def claim(self, key: str) -> str:
        """Claim the output ``key`` for this run (its journal must be open): :data:`HELD` when another live run
        has claimed it and not yet written it (leave it, ask again later), else :data:`CLAIMED` or, when another
        run claimed or wrote it before (it may be up to date now: judge it again), :data:`CLAIMED_AFTER_OTHER`.
        A claim ends when this run writes the output (its journal line), :meth:`release`\\ s it, or dies."""
        if self._journal_fd is None:
            return CLAIMED
        with self._locked():
            holders = self._scan_journals()
            if key in holders:
                return HELD
            self._append({"claim": key})
        named = any(key in rows.named for _, rows in self._scans.values())
        return CLAIMED_AFTER_OTHER if named else CLAIMED

    def release(self, key: str) -> None:
        """End this run's claim on ``key`` without writing it (it failed): another run may try it."""
        if self._journal_fd is not None:
            try:
                self._append({"release": key})
            except OSError:
                pass  # the claim ends with this run anyway

    def _scan_journals(self) -> set[str]:
        """Read what other runs' journals added since the last scan; the keys claimed by live runs."""
        held: set[str] = set()
        for journal in self._journal_files():
            if journal == self._journal_path:
                continue
            offset, rows = self._scans.get(journal.name, (0, _Rows()))
            try:
                data = _read_plain(journal, offset) or b""
            except (OSError, _Unusable):
                continue
            whole = data.rfind(b"\n") + 1  # a line being written is read next time
            if whole:
                rows.feed(data[:whole])
                for key, entry in rows.entries.items():
                    self._seen[key] = entry
            self._scans[journal.name] = (offset + whole, rows)
            # A claim ends with the output's rename, which follows its journal line: until the file matches the
            # line, the output is still being made.
            rows.written = {k for k in rows.written if not _matches(rows.entries[k], _stat(self.root / k))}
            busy = rows.claims | rows.written
            if busy and self._alive(journal):
                held |= busy
        return held

    @staticmethod
    def _alive(journal: Path) -> bool:
        try:
            fd = _open_plain(journal, os.O_RDWR)
        except (OSError, _Unusable):
            return False
        try:
            return not _try_lock(fd)
        finally:
            os.close(fd)

    def add(self, path: str | os.PathLike[str], *, save_every: float = 1.0, **info: Any) -> None:
        """Record a file texup has just written (its size and mtime now, plus ``info``: what it was made from);
        the manifest is saved at most every ``save_every`` seconds."""
        key = self.key(path)
        stat = _stat(Path(path))
        if key is None or stat is None:
            return
        self.put(key, {**info, **stat}, save_every=save_every)

    def put(self, key: str, entry: dict[str, Any], *, save_every: float = 1.0) -> None:
        """Record ``entry`` (with the output's ``size`` and ``mtime_ns``) for the output ``key``. A periodic save
        that fails is kept in :attr:`save_error` and tried again later (the journal holds the entries)."""
        self._added[key] = entry
        if time.monotonic() - self._saved_at >= max(save_every, self._save_gap):
            try:
                self.save()
            except ManifestError as err:
                self.save_error = err
                self._saved_at = time.monotonic()

    def save(self) -> None:
        """Merge this run's entries and ended runs' journals into the manifest on disk (under its lock) and
        replace it atomically; only then delete the ended journals. Raises :class:`ManifestError` (one line) when
        it cannot be saved; nothing is lost then (the journals stay)."""
        if not (self._added or self._hashes_added or self._models_added or self._journal_files()):
            return
        started = time.monotonic()
        self._make_state()
        with self._locked():
            disk = self._read()
            if not disk.replaceable:
                raise ManifestError(f"{self.path} {disk.problem}; move it away so texup can save its manifest there")
            files, ended = self._fold_ended(disk.files)
            self._merge(files, self._added)
            hashes = {**disk.hashes, **self._hashes_added}
            models = {**disk.models, **self._models_added}
            payload = {"format": _FORMAT, "files": files, "hashes": hashes, "models": models}
            try:
                if disk.problem is not None and (self.path.exists() or self.path.is_symlink()):
                    os.replace(self.path, self.state / DAMAGED_NAME)  # kept for whoever wants to look
                with atomic_path(self.path) as tmp:
                    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
            except OSError as err:
                raise ManifestError(f"{self.path}: cannot save the manifest ({_why(err)})") from None
            for journal in ended:  # their entries are in the saved manifest now
                try:
                    journal.unlink(missing_ok=True)
                except OSError:
                    pass  # folded again next time: the same entries
            # A kill -9 during a save leaves its temporary file; every save happens under this lock, so any
            # temporary file of the manifest seen while holding it belongs to a dead process.
            remove_stale_temp_files(self.state, older_than=0.0)
        self._entries, self._hashes, self._models = files, hashes, models
        self._added, self._hashes_added, self._models_added = {}, {}, {}
        self.save_error = None
        self._saved_at = time.monotonic()
        # A library's manifest grows with it (about 1 kB per output on disk): the whole file is rewritten each
        # time, so the gap between saves grows with its cost. Nothing is at risk meanwhile: each output's entry
        # is in this run's journal before its rename.
        self._save_gap = 20.0 * (self._saved_at - started)

    def close(self) -> None:
        """Save, then end this run's journal (its entries are in the manifest now). When the manifest cannot be
        saved the journal stays (its lock ends with this call), so the next run still knows this run's outputs,
        and :class:`ManifestError` says so."""
        saved = False
        try:
            if self._journal_path is not None:  # written and renamed, but interrupted before add()
                own = self._matching(self._journal_entries(self._journal_path))
                self._added.update({k: v for k, v in own.items() if k not in self._added})
            try:
                self.save()
            except ManifestError as err:
                kept = self._journal_path if self._journal_fd is not None else None
                if kept is not None:
                    raise ManifestError(
                        f"{err}; this run's outputs stay recorded in its journal {kept}, which the next run in "
                        f"{self.root} reads and saves"
                    ) from None
                raise
            saved = True
        finally:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                if saved and self._journal_path is not None:
                    self._journal_path.unlink(missing_ok=True)
                self._journal_fd = self._journal_path = None
