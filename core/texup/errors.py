"""Exceptions texup raises at its boundaries.

Every error that concerns a file names the file and says what is wrong with it, in one line,
so the CLI can print ``path: reason`` and go on with the next item of a batch.
"""

from __future__ import annotations

from pathlib import Path


class TexupError(Exception):
    """Base class of texup's own errors."""


class FileError(TexupError):
    """An error about one file: ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageReadError(FileError):
    """An image file could not be read (missing, corrupt, truncated, unsupported, absurd size)."""


class ImageWriteError(FileError):
    """An image could not be written to the given path."""


class ModelLoadError(FileError):
    """A weights file could not be loaded or its architecture was not recognised."""


class UnsafeWeightsError(ModelLoadError):
    """A pickle-based weights file tried to run code or load objects other than tensors."""


class UnknownModelError(TexupError):
    """A model name is neither a known model nor an existing file."""


class DownloadError(TexupError):
    """A download failed or its checksum did not match."""
