"""Atomic file replacement: write into a temporary file beside the target, then rename over it.

Readers see either the old file or the complete new one, never a partial write; when writing fails,
the temporary file is removed and an existing target is left untouched.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write to; on success flush it to disk and
    ``os.replace`` it over ``path``; on any exception remove it and re-raise. The folder must exist."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
