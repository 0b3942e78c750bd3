"""Where texup keeps its per-user files (converted and downloaded models).

The home folder is, in order of precedence:

1. ``$TEXUP_HOME`` when set (any platform; tests and shared studio caches use this);
2. ``$XDG_CACHE_HOME/texup`` when ``XDG_CACHE_HOME`` is set;
3. the platform's cache folder: ``%LOCALAPPDATA%\\texup`` on Windows, ``~/Library/Caches/texup`` on
   macOS, ``~/.cache/texup`` elsewhere.

Folders are created on demand, the first time one of these functions is called.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from texup._atomic import atomic_path
from texup.errors import FileError

__all__ = [
    "texup_home",
    "models_dir",
    "sha256_file",
    "manifest_path",
    "read_manifest",
    "record_file",
    "forget_file",
    "verify_file",
    "Verification",
    "cache_lock",
    "file_lock",
    "atomic_write_bytes",
]


def _default_home() -> Path:
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "texup"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "texup"
    return Path.home() / ".cache" / "texup"


def texup_home() -> Path:
    """Return texup's per-user cache folder (see the module docstring), creating it if needed.

    The path is absolute (``~`` expanded). Raises ``FileError`` (naming the folder and what to do) when it
    is a file, cannot be created or is not writable.
    """
    explicit = os.environ.get("TEXUP_HOME")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if explicit:
        home = Path(explicit).expanduser()
    elif xdg:
        home = Path(xdg).expanduser() / "texup"
    else:
        home = _default_home()
    home = home.absolute()
    origin = " (TEXUP_HOME)" if explicit else " (XDG_CACHE_HOME)" if xdg else ""
    return _make_folder(home, f"texup's cache folder{origin}")


def _make_folder(path: Path, what: str) -> Path:
    """Create ``path`` (and parents) if needed; a ``FileError`` naming it when it is a file, cannot be
    created or is not writable — one line for the user instead of an ``OSError`` traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FileError(path, f"{what} is a file, not a folder; remove it or set TEXUP_HOME to a folder") from None
    except OSError as exc:
        raise FileError(
            path, f"cannot create {what}: {exc.strerror or exc}; set TEXUP_HOME to a folder you can write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FileError(path, f"{what} is not writable; set TEXUP_HOME to a folder you can write")
    return path


def models_dir() -> Path:
    """Return the folder holding cached models (``texup_home()/models``), creating it if needed.

    It holds ``<name>.safetensors`` per known model, ``manifest.json`` (their SHA-256 and
    provenance) and ``downloads/`` (the official ``.pth`` files fetched by ``texup models fetch``).
    """
    return _make_folder(texup_home() / "models", "texup's model cache folder")


# --------------------------------------------------------------------------------------------------
# The manifest: what texup put into models_dir(), with the SHA-256 of each file.
#
# Verification is cheap in the common case: each entry keeps the file's size and mtime_ns as
# recorded right after writing it; while they still match, the file is trusted. When they
# differ (the file was touched, copied, restored from backup) the full SHA-256 is computed once,
# compared with the recorded one, and on a match the new size/mtime are recorded.
# File systems stamp mtimes with a coarse clock, so a change made within the same clock tick as
# the recording can keep size and mtime identical ("racy" entries, as git calls them): while the
# recording is less than _RACY_NS after the file's mtime, the full hash is always computed.
# --------------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
_MANIFEST_VERSION = 1
_LOCK_NAME = ".lock"
_HASH_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file's bytes as 64 lower-case hex digits (reads in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path() -> Path:
    """Return ``models_dir()/manifest.json`` (which may not exist yet)."""
    return models_dir() / MANIFEST_NAME


def read_manifest() -> dict[str, dict[str, Any]]:
    """Return the manifest's entries, keyed by file name relative to :func:`models_dir`.

    A missing manifest reads as empty. A manifest that is not valid JSON raises ``FileError``
    naming it (it is never silently discarded: deleting it by hand is the user's decision).
    """
    path = manifest_path()
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(mode):  # a FIFO would block the read forever; a link could lead anywhere
        raise FileError(path, "the model manifest is not a regular file; delete it to rebuild the cache")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise FileError(
            path, f"corrupt model manifest (not UTF-8: {exc.reason}); delete it to rebuild the cache"
        ) from exc
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise FileError(path, f"corrupt model manifest ({why}); delete it to rebuild the cache") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise FileError(path, "not a texup model manifest (no 'files' object); delete it to rebuild the cache")
    return {str(k): dict(v) for k, v in data["files"].items() if isinstance(v, dict)}


def _write_manifest(entries: dict[str, dict[str, Any]]) -> None:
    path = manifest_path()
    payload = json.dumps({"version": _MANIFEST_VERSION, "files": entries}, indent=2, sort_keys=True)
    atomic_write_bytes(path, (payload + "\n").encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers see either the old file or the complete new one, never a partial write.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _key(path: Path) -> str:
    root = models_dir()
    try:
        return path.absolute().relative_to(root).as_posix()
    except ValueError as exc:
        raise ValueError(f"{path} is not inside the model cache {root}") from exc


def record_file(path: Path, *, sha256: str | None = None, **info: Any) -> dict[str, Any]:
    """Record ``path`` (a file inside :func:`models_dir`) in the manifest and return its entry.

    ``sha256`` is computed when not given. ``info`` (JSON-serialisable: source, licence, ...) is
    stored alongside. Call it while holding :func:`cache_lock` so concurrent updates are not lost.
    """
    st = path.stat()
    entry: dict[str, Any] = {
        **info,
        "sha256": sha256 or sha256_file(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "recorded_ns": time.time_ns(),
    }
    entries = read_manifest()
    entries[_key(path)] = entry
    _write_manifest(entries)
    return entry


def forget_file(path: Path) -> None:
    """Remove ``path``'s manifest entry if any (call while holding :func:`cache_lock`)."""
    entries = read_manifest()
    if entries.pop(_key(path), None) is not None:
        _write_manifest(entries)


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify_file`.

    ``status`` is ``"ok"`` (matches the manifest), ``"missing"`` (no such file), ``"unrecorded"``
    (the file exists but the manifest has no entry for it) or ``"mismatch"`` (its SHA-256 is not the
    recorded one: corrupted or replaced). ``expected``/``actual`` are the hashes when known.
    """

    status: str
    expected: str | None = None
    actual: str | None = None


def verify_file(path: Path) -> Verification:
    """Check a cached file against the manifest (size+mtime fast path, full SHA-256 after a change).

    Takes :func:`cache_lock` only when the manifest has to be updated with a new size/mtime.
    """
    if not path.is_file():
        return Verification("missing")
    entry = read_manifest().get(_key(path))
    if entry is None:
        return Verification("unrecorded")
    expected = str(entry.get("sha256"))
    st = path.stat()
    unchanged = st.st_size == entry.get("size") and st.st_mtime_ns == entry.get("mtime_ns")
    racy = int(entry.get("recorded_ns", 0)) - st.st_mtime_ns < _RACY_NS
    if unchanged and not racy:
        return Verification("ok", expected, expected)
    actual = sha256_file(path)
    if actual != expected:
        return Verification("mismatch", expected, actual)
    if unchanged:
        return Verification("ok", expected, actual)
    with cache_lock():
        current = read_manifest()
        if _key(path) in current:
            fresh = path.stat()
            current[_key(path)].update(size=fresh.st_size, mtime_ns=fresh.st_mtime_ns, recorded_ns=time.time_ns())
            _write_manifest(current)
    return Verification("ok", expected, actual)


@contextlib.contextmanager
def cache_lock(timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive, inter-process lock on the model cache for the ``with`` block.

    Uses ``flock`` (POSIX) / ``msvcrt.locking`` (Windows) on ``models_dir()/.lock``; the operating
    system releases it if the holder dies, so a crash never leaves a stale lock. Re-entrant within
    one thread. Raises ``TimeoutError`` after ``timeout`` seconds of waiting.
    """
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    with file_lock(models_dir() / _LOCK_NAME, timeout):
        _local.depth = 1
        try:
            for folder in (models_dir(), models_dir() / "ncnn"):
                remove_stale_temp_files(folder)
            yield
        finally:
            _local.depth = 0


@contextlib.contextmanager
def file_lock(lock_path: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``lock_path`` (created if needed) for the ``with`` block.

    ``flock`` (POSIX) / ``msvcrt.locking`` (Windows): released by the operating system when the holder
    dies. Not re-entrant. Raises ``TimeoutError`` after ``timeout`` seconds of waiting.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, lock_path, timeout)
        try:
            yield
        finally:
            _release(fd)
    finally:
        os.close(fd)


_local = threading.local()

#: texup's own temporary names (texup._atomic, imageio's writer): ``.<target name>.<hex>.tmp``.
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8,}\.tmp$")
#: A temporary file this old is left over from a killed process, not one being written (a conversion of the
#: largest model takes seconds; every cache write also holds the cache lock).
STALE_TEMP_S = 3600.0


def remove_stale_temp_files(folder: Path, older_than: float = STALE_TEMP_S) -> list[Path]:
    """Delete texup's temporary files in ``folder`` older than ``older_than`` seconds; return what was deleted.

    A ``kill -9`` during an atomic write leaves its temporary file behind (67 MB for an x4plus conversion);
    they are cleaned when the cache lock is next taken. Only names of texup's own pattern are touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    cutoff = time.time() - older_than
    for entry in entries:
        try:
            if (
                _TEMP_NAME.match(entry.name)
                and entry.is_file(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_mtime < cutoff
            ):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile or not ours to delete: leave it
            continue
    return removed


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting (flock; msvcrt on Windows); False when another process
    holds it. Other failures (a file system without locks) raise OSError."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN, errno.EDEADLK):
            raise
        return False
    return True


def _acquire(fd: int, lock_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{lock_path}: another texup process held the model cache lock for {timeout:.0f} s")
        time.sleep(0.1)


def _release(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
