"""Size and memory limits: how large an input texup decodes, and whether an output fits in memory.

Two guards against files that would take a machine down (a 249 KB PNG can declare 16000x16000 pixels):

* **Input pixels**, checked from the header before any pixel is decoded: at most :data:`DEFAULT_MAX_PIXELS`
  (8192x8192, an 8K texture) unless ``TEXUP_MAX_PIXELS`` or ``--max-pixels`` (``texup upscale``) says
  otherwise (``16384x16384``, ``268435456`` or ``268M``).
* **Output memory**, checked from the output size (scale or ``--size``) before the output is allocated:
  the output array plus the input's float copies must fit in the memory available now (Linux
  ``MemAvailable``; elsewhere 80 % of physical memory), or in ``TEXUP_MEMORY_BUDGET`` (``12G``, ``512M``,
  bytes) when set. ``TEXUP_MEMORY_BUDGET=0`` turns the check off.

Torch-free, numpy-free.
"""

from __future__ import annotations

import os
import re
import sys

from texup.errors import TexupError

ENV_MAX_PIXELS = "TEXUP_MAX_PIXELS"
ENV_MEMORY_BUDGET = "TEXUP_MEMORY_BUDGET"
DEFAULT_MAX_PIXELS = 8192 * 8192
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BYTE_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class MemoryBudgetError(TexupError):
    """An output would not fit in the memory available; ``str`` says how much it needs and what to do."""


def parse_pixels(text: str) -> int:
    """``"16384x16384"``, ``"268435456"`` or ``"268M"`` (k, M, G: powers of 1000) as a pixel count."""
    value = str(text).strip().lower().replace(",", "").replace("_", "")
    match = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", value)
    if match:
        count = int(match.group(1)) * int(match.group(2))
    else:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)", value)
        if match is None:
            raise ValueError(f"not a pixel count: {text!r} (examples: 16384x16384, 268435456, 268M)")
        count = int(float(match.group(1)) * _SUFFIX[match.group(2)])
    if count <= 0:
        raise ValueError(f"a pixel limit must be positive, got {text!r}")
    return count


def parse_bytes(text: str) -> int:
    """``"12G"``, ``"512M"``, ``"1048576"`` (k, M, G: powers of 1024) as bytes; 0 is allowed (no limit)."""
    value = str(text).strip().lower().replace(",", "").replace("_", "").removesuffix("b").removesuffix("i")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)", value)
    if match is None:
        raise ValueError(f"not a size in bytes: {text!r} (examples: 12G, 512M, 1048576)")
    return int(float(match.group(1)) * _BYTE_SUFFIX[match.group(2)])


def max_pixels() -> int:
    """The input pixel limit: ``TEXUP_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(ENV_MAX_PIXELS, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return parse_pixels(text)
    except ValueError as exc:
        raise ValueError(f"{ENV_MAX_PIXELS}: {exc}") from None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now, or ``None`` when it cannot be told."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if sys.platform == "win32":
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [
                ("length", ctypes.c_ulong),
                ("load", ctypes.c_ulong),
                ("total", ctypes.c_ulonglong),
                ("avail", ctypes.c_ulonglong),
                ("page_total", ctypes.c_ulonglong),
                ("page_avail", ctypes.c_ulonglong),
                ("virtual_total", ctypes.c_ulonglong),
                ("virtual_avail", ctypes.c_ulonglong),
                ("extended", ctypes.c_ulonglong),
            ]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.avail)
        return None
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.8)
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> int | None:
    """Bytes an upscale may use: ``TEXUP_MEMORY_BUDGET`` when set (0: no limit, ``None``), else what is
    available now."""
    text = os.environ.get(ENV_MEMORY_BUDGET, "").strip()
    if text:
        try:
            budget = parse_bytes(text)
        except ValueError as exc:
            raise ValueError(f"{ENV_MEMORY_BUDGET}: {exc}") from None
        return budget or None
    return available_memory()


def upscale_peak_bytes(height: int, width: int, channels: int, itemsize: int, out_h: int, out_w: int) -> int:
    """What an upscale holds at its peak beyond the network: the output array in the input's sample type,
    the input, and its float32 copies (colour, alpha) — the tiles' own memory is the engine's budget."""
    output = out_h * out_w * channels * itemsize
    inputs = height * width * (channels * itemsize + 4 * 3 + (4 if channels in (2, 4) else 0))
    return output + inputs


def _gb(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def check_output_memory(
    height: int, width: int, channels: int, itemsize: int, out_h: int, out_w: int, *, working: int = 0
) -> None:
    """Raise :class:`MemoryBudgetError` when an upscale to ``out_w``x``out_h`` would not fit in the budget
    (``working``: bytes the run holds besides, e.g. the colour fix's float32 copy of the output)."""
    budget = memory_budget()
    if budget is None:
        return
    need = upscale_peak_bytes(height, width, channels, itemsize, out_h, out_w) + working
    if need > budget:
        source = ENV_MEMORY_BUDGET if os.environ.get(ENV_MEMORY_BUDGET, "").strip() else "memory available now"
        raise MemoryBudgetError(
            f"the {out_w}x{out_h} output needs about {_gb(need)} of memory, more than the {_gb(budget)} "
            f"budget ({source}); choose a smaller --scale or --size, free memory, or set {ENV_MEMORY_BUDGET}"
        )
