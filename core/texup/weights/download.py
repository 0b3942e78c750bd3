"""Explicit downloads of official weights: resumable, checksum-verified, atomic.

Nothing in texup downloads implicitly: running a model that is not cached raises an error that
names the ``texup models fetch NAME`` command, and only that command (or
:func:`texup.weights.registry.fetch_model`, which calls :func:`download`) touches the network. Only the
standard library is used (``urllib``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from texup._atomic import fsync_folder
from texup.errors import DownloadError
from texup.weights.cache import file_lock, sha256_file

__all__ = ["download", "ProgressCallback"]

#: ``progress(done_bytes, total_bytes_or_None)``, called after each chunk (and once at the start).
ProgressCallback = Callable[[int, "int | None"], None]

_CHUNK = 1 << 16
#: The most a download may hold when the caller knows no size: well above any ESRGAN generator (x4plus is
#: 67 MB), far below what would fill a disk. A server announcing more is refused before a byte is written.
DEFAULT_MAX_BYTES = 2 << 30
#: How long a second process waits for another one's download of the same file before giving up.
LOCK_TIMEOUT_S = 3600.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _user_agent() -> str:
    from texup import __version__

    return f"texup/{__version__} (+https://github.com/xinntao/Real-ESRGAN weights fetcher)"


def normalize_sha256(value: str) -> str:
    """Return ``value`` as 64 lower-case hex digits, or raise ``ValueError`` if it is not a SHA-256."""
    digest = value.strip().lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"not a SHA-256 hex digest (64 hex digits): {value!r}")
    return digest


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming an earlier partial download.

    Bytes are streamed to ``dest + ".part"``. When that file already exists, an HTTP ``Range``
    request asks for the rest; a ``206 Partial Content`` answer is appended, any other success
    (``200``: the server ignores ranges) restarts from byte 0, and ``416`` (the part is not a prefix
    of the file) discards it and restarts. When ``sha256`` is given, the complete file must match it
    (case-insensitive hex); on a mismatch the ``.part`` is deleted and ``DownloadError`` names the
    expected and actual digests. Only then is the file moved to ``dest`` with ``os.replace``, so
    ``dest`` is either absent, its previous version, or the complete verified download.

    ``progress(done, total)`` reports bytes so far (including resumed ones) and the total size
    when the server states it. ``timeout`` (seconds) applies to connecting and to each read.

    Several processes fetching the same ``dest`` take turns (a lock file beside it, ``.<name>.lock``); one
    that waited finds the finished, verified file and returns it without a request. The ``.part`` is
    flushed to disk before the rename and the folder after it. A transfer announced or grown beyond
    ``max_bytes`` is refused and its ``.part`` deleted, before any hash check (a hostile or broken server
    cannot fill the disk).

    Raises ``DownloadError`` (message names the URL) for HTTP errors, refused or dropped connections,
    time-outs and short transfers; an interrupted transfer keeps its ``.part`` so a second call
    resumes it. Returns ``Path(dest)``.
    """
    if not url.lower().startswith(("https://", "http://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs can be downloaded")
    expected = None
    if sha256 is not None:
        try:
            expected = normalize_sha256(sha256)
        except ValueError as exc:
            raise DownloadError(f"{url}: {exc}") from exc
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    try:
        with file_lock(dest.with_name(f".{dest.name}.lock"), LOCK_TIMEOUT_S):
            if expected is not None and dest.is_file() and sha256_file(dest) == expected:
                return dest  # another process finished it while this one waited
            digest, done, total = _transfer(url, part, progress, timeout, max_bytes)
            if total is not None and done != total:
                raise DownloadError(f"{url}: transfer ended after {done} of {total} bytes; run again to resume")
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"{url}: SHA-256 mismatch: expected {expected}, got {actual} ({done} bytes); "
                    "the download was deleted"
                )
            os.replace(part, dest)
            fsync_folder(dest.parent)
    except TimeoutError as exc:
        raise DownloadError(
            f"{url}: another texup process has been downloading {dest} for over {LOCK_TIMEOUT_S:.0f} s; try again later"
        ) from exc
    return dest


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked by download()
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            exc.close()
            raise _RangeNotSatisfiable from exc
        exc.close()
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: cannot connect ({exc.reason})") from exc
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: cannot connect ({exc})") from exc


class _RangeNotSatisfiable(Exception):
    pass


def _hash_prefix(part: Path) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    size = 0
    with open(part, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest, size


def _too_big(url: str, part: Path, size: int, max_bytes: int, what: str) -> DownloadError:
    part.unlink(missing_ok=True)
    return DownloadError(f"{url}: {what} {size:,} bytes, more than the {max_bytes:,} expected; refused and deleted")


def _transfer(
    url: str, part: Path, progress: ProgressCallback | None, timeout: float, max_bytes: int
) -> tuple[hashlib._Hash, int, int | None]:
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, timeout)
    except _RangeNotSatisfiable:
        part.unlink(missing_ok=True)
        offset = 0
        response = _open(url, 0, timeout)

    with contextlib.closing(response):
        status = response.status
        length = response.headers.get("Content-Length")
        body_length = int(length) if length is not None and length.isdigit() else None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise DownloadError(
                    f"{url}: server answered the resume request with an unusable Content-Range "
                    f"{response.headers.get('Content-Range')!r}"
                )
            total = int(match.group(3)) if match.group(3) != "*" else None
            digest, done = _hash_prefix(part)
            mode = "ab"
        elif 200 <= status < 300 and status != 206:
            total = body_length
            digest, done = hashlib.sha256(), 0
            mode = "wb"  # no resume: start again from byte 0
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {status} {response.reason}")

        if total is not None and total > max_bytes:
            raise _too_big(url, part, total, max_bytes, "the server announces")
        if progress is not None:
            progress(done, total)
        try:
            with open(part, mode) as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    if done + len(chunk) > max_bytes:
                        out.close()
                        raise _too_big(url, part, done + len(chunk), max_bytes, "the server sent at least")
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.filename is not None:
                raise DownloadError(f"{url}: cannot write {exc.filename}: {exc.strerror}") from exc
            raise DownloadError(f"{url}: connection lost after {done} bytes ({exc}); run again to resume") from exc
    return digest, done, total
