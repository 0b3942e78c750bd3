"""glibc malloc settings for texup's own long-running processes (the CLI and the worker), not for library users.

Tiled inference allocates and frees many blocks of tens of MB (tile tensors, row bands). glibc serves
every block above its mmap threshold (dynamic, up to 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so the next tile faults the same memory in again, and freed heap memory is trimmed back to the
kernel eagerly. :func:`keep_freed_memory` turns both off for the process (``mallopt``, the same knobs as the
``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables, but settable after start): large
upscales then peak lower and run faster (docs/benchmarks.md). The price is that freed
memory stays with the process: the worker calls :func:`release_freed_memory` (``malloc_trim``) after every
job, so Blender gets it back between jobs.

Both are no-ops returning False where the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import functools
import platform

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Keep freed blocks in the process for reuse (no per-block mmap/munmap, no eager trimming).

    Returns True when the settings were applied (glibc), False otherwise.
    """
    libc = _glibc()
    if libc is None:
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 256 << 20))
    return all(libc.mallopt(ctypes.c_int(key), ctypes.c_int(value)) == 1 for key, value in settings)


def release_freed_memory() -> bool:
    """Give freed heap memory back to the operating system (``malloc_trim(0)``); True when glibc did it."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True
