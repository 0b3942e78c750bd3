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
written by texup. Reading writes nothing, never raises and never waits: ``.texup``, its journal folder, the
manifest and the journals are read only as a plain folder and plain files (a link is not followed, a FIFO or
device is not opened for reading in a way that blocks); a manifest that is not valid JSON or not shaped like one
keeps the entries that still parse, and says what was wrong in :attr:`OutputsView.problems`; an entry's fields of
the wrong type are ignored (texup.outputs reads it the same way). The source file is hashed only when it is a
plain file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat as stat_module
from collections.abc import Mapping
from typing import Any

from . import options as schema

STATE_DIR = ".texup"
RECORD_NAME = "outputs.json"
JOURNAL_DIR = "journal"
#: A recorded hash is trusted by size and mtime only for a file last modified this long before it was hashed
#: (texup.outputs.RACY_NS: a change within the file system's timestamp granularity could go unseen).
RACY_NS = 2_000_000_000
UP_TO_DATE = "up to date"  # texup.library.UP_TO_DATE: the worker's result reason when it did nothing


def pixel_options(**values: Any) -> dict[str, Any]:
    """The options an entry records as changing pixels, from the run's values by option name (texup's own rule:
    the schema's :func:`~.options.pixel_options`; the add-on never sets an exact output size)."""
    return schema.pixel_options(values)


#: The variable that names the block format of every DDS output (texup.imageio.ENV_DDS_FORMAT): the worker inherits
#: Blender's environment, so the add-on reads the same value.
ENV_DDS_FORMAT = "TEXUP_DDS_FORMAT"


def dds_format_setting(environ: Mapping[str, str] | None = None) -> str | None:
    """The DDS format the worker will write (texup.imageio.chosen_dds_format without a format asked for): the
    variable's value in lower case, or None when it is unset or empty (a name texup does not know fails in the
    worker, so the output is never taken as current)."""
    value = (os.environ if environ is None else environ).get(ENV_DDS_FORMAT, "").strip()
    return value.lower() or None


def model_ref(model: str) -> str:
    """A model reference as the worker records it: a file as its absolute path, a name as given."""
    path = os.path.expanduser(model)
    return os.path.abspath(path) if os.path.isfile(path) else model


#: The fields an entry may hold and their types (texup.outputs.ENTRY_FIELDS; a test compares): a field of
#: another type is ignored; an entry without an integer size and mtime is dropped (it could never match).
ENTRY_FIELDS: dict[str, type] = {
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
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class NotPlain(OSError):
    """A path that is not a plain file (a link, a FIFO, a device, a folder)."""


def _open_plain(path: str) -> int:
    """A read descriptor of ``path`` when it is a plain file: a link is not followed, a FIFO does not block."""
    st = os.lstat(path)
    if not stat_module.S_ISREG(st.st_mode):
        raise NotPlain(errno.EINVAL, "not a plain file", path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotPlain(errno.ELOOP, "a link", path) from err
        raise
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):  # swapped in between
        os.close(fd)
        raise NotPlain(errno.EINVAL, "not a plain file", path)
    return fd


def _read_plain(path: str) -> bytes:
    fd = _open_plain(path)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _plain_dir(path: str) -> bool:
    try:
        return stat_module.S_ISDIR(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def sha256_of(path: str) -> str:
    """SHA-256 of a plain file; OSError for anything else (a FIFO would block the UI)."""
    digest = hashlib.sha256()
    fd = _open_plain(path)
    with open(fd, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in a damaged entry's path
        return None
    return st.st_size, st.st_mtime_ns


def _matches(entry: Mapping[str, Any] | None, path: str) -> bool:
    stat = _stat(path)
    return entry is not None and stat is not None and (entry.get("size"), entry.get("mtime_ns")) == stat


def _typed(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is int)


def clean_entry(value: Any) -> dict[str, Any] | None:
    """``value`` without the fields of a wrong type; None when it is no dict or has no integer size and mtime."""
    if not isinstance(value, dict) or not (_typed(value.get("size"), int) and _typed(value.get("mtime_ns"), int)):
        return None
    return {k: v for k, v in value.items() if k not in ENTRY_FIELDS or _typed(v, ENTRY_FIELDS[k])}


def valid_key(key: Any) -> bool:
    """An output's key: a relative ``/`` path inside the folder, no ``..``, no NUL, not in ``.texup``."""
    if not isinstance(key, str) or not key or "\0" in key or key.startswith("/") or "\\" in key:
        return False
    parts = key.split("/")
    return ".." not in parts and "" not in parts and parts[0] != STATE_DIR and not re.match(r"^[A-Za-z]:", key)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err


_PAIR = re.compile(r'^  "', re.M)
_FILES = re.compile(r'^ "files": ', re.M)
_TOP = re.compile(r'^ "', re.M)
_COLON = re.compile(r"\s*:\s*")


def salvage_files(data: bytes) -> dict[str, Any]:
    """The ``files`` entries that still parse in a damaged manifest (texup writes it with ``indent=1``: each
    entry starts a line indented by two spaces), read one by one; a damaged one is skipped."""
    text = data.decode("utf-8", errors="replace")
    files = _FILES.search(text)
    if files is None:
        return {}
    end_match = _TOP.search(text, files.end())
    end = end_match.start() if end_match else len(text)
    decoder = json.JSONDecoder()
    found: dict[str, Any] = {}
    for match in _PAIR.finditer(text, files.end(), end):
        try:
            key, at = decoder.raw_decode(text, match.end() - 1)
            colon = _COLON.match(text, at)
            if colon is None:
                continue
            value, _ = decoder.raw_decode(text, colon.end())
        except (ValueError, RecursionError):
            continue
        if isinstance(key, str):
            found[key] = value
    return found


class OutputsView:
    """The manifest of one output folder as this process found it (see the module docstring)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._entries: dict[str, dict[str, Any]] = {}
        #: What could not be read, one line each (a damaged manifest, a link or FIFO in ``.texup``); never raised.
        self.problems: list[str] = []
        try:
            self._read()
        except Exception as err:  # noqa: BLE001 - reading must never fail inside Blender: unknown is safe
            self.problems.append(f"{os.path.join(self.root, STATE_DIR)}: cannot be read ({type(err).__name__}: {err})")

    def _read(self) -> None:
        state = os.path.join(self.root, STATE_DIR)
        if not _plain_dir(state):
            if os.path.lexists(state):
                self.problems.append(f"{state} is not a plain folder (a link or a file): not read")
            return
        path = os.path.join(state, RECORD_NAME)
        files: Any = None
        try:
            data = _read_plain(path)
        except FileNotFoundError:
            data = None
        except OSError as err:
            self.problems.append(f"{path}: cannot be read ({err.strerror or err})")
            data = None
        if data is not None:
            try:
                parsed = _loads(data)
            except ValueError:
                files = salvage_files(data)
                self.problems.append(f"{path} is damaged (not valid JSON); {len(files)} entries could still be read")
            else:
                files = parsed.get("files") if isinstance(parsed, dict) else None
                if not isinstance(files, dict):
                    self.problems.append(f"{path} is not shaped like a texup manifest")
        dropped = 0
        for key, value in (files if isinstance(files, dict) else {}).items():
            entry = clean_entry(value)
            if entry is not None and valid_key(key):
                self._entries[key] = entry
            else:
                dropped += 1
        if dropped and data is not None and not self.problems:
            self.problems.append(f"{path}: {dropped} unreadable entries ignored")
        journals = os.path.join(state, JOURNAL_DIR)
        names: list[str] = []
        if _plain_dir(journals):
            try:
                names = sorted(n for n in os.listdir(journals) if n.endswith(".jsonl"))
            except OSError:
                names = []
        elif os.path.lexists(journals):
            self.problems.append(f"{journals} is not a plain folder (a link or a file): not read")
        for name in names:  # a killed run's outputs: an entry counts only while its file matches it
            try:
                lines = _read_plain(os.path.join(journals, name)).split(b"\n")
            except OSError:
                continue
            for line in lines:
                if not line.strip():
                    continue
                try:
                    row = _loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or not valid_key(row.get("key")):
                    continue
                key, entry = row["key"], clean_entry(row.get("entry"))
                if entry is None:
                    continue
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
        if not schema.same_pixel_options(entry.get("options"), options):
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
