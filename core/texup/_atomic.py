"""Atomic file replacement: write into a temporary file beside the target, then rename over it.

Readers see either the old file or the complete new one, never a partial write; when writing fails,
the temporary file is removed and an existing target is left untouched. After the rename the folder is
flushed too, so a power cut cannot lose the new name (a checkpoint, a manifest). Files get the permissions
of any file the user creates (0666 less the umask), so a shared studio cache stays readable by the team.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def create_temp(target: Path) -> Path:
    """A new, empty file beside ``target`` with a name nobody else has (O_EXCL), mode 0666 & ~umask."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {target}")


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (after a rename into it); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; there the rename is already durable enough for NTFS
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders; the file itself was flushed
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write to; on success flush it to disk,
    ``os.replace`` it over ``path`` and flush the folder; on any exception remove it and re-raise.
    The folder must exist."""
    target = Path(path)
    tmp = create_temp(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)
