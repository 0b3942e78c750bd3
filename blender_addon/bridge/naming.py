"""Names of upscaled files: ``<stem>_x<scale>.<ext>``, UDIM-aware and collision-free (stdlib only).

A UDIM image's file path holds a token where the tile number goes -- ``wall.<UDIM>.png`` (tiles
``wall.1001.png``, ``wall.1002.png``...) or ``wall.<UVTILE>.png`` (``wall.u1_v1.png``). The scale suffix
goes before the token when the token ends the stem, so the result is again a UDIM pattern:
``wall.<UDIM>.png`` -> ``wall_x4.<UDIM>.png``; a token inside the stem stays where it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

UDIM_TOKENS: tuple[str, ...] = ("<UDIM>", "<UVTILE>")
_SEPARATORS = "._-"
_TILE_NUMBER = re.compile(r"^(?P<head>.*?)(?P<sep>[._-]?)(?P<tile>1\d{3}|u\d+_v\d+)$")
_UNSAFE = re.compile(r'[\x00-\x1f<>:"/\\|?*]')

Number = int | float


def scale_label(scale: Number) -> str:
    """4 -> "4", 2.0 -> "2", 1.5 -> "1.5"; a positive number is required."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return str(int(scale)) if float(scale).is_integer() else f"{scale:g}"


def _normalize_ext(ext: str) -> str:
    ext = ext.strip().lstrip(".")
    if not ext or _UNSAFE.search(ext):
        raise ValueError(f"not a file extension: {ext!r}")
    return ext


def _insert_suffix(stem: str, suffix: str, *, udim_file: bool = False) -> str:
    """``stem`` with ``suffix`` added at its end, or before a UDIM token / tile number that ends it."""
    for token in UDIM_TOKENS:
        if stem.endswith(token):
            head = stem[: -len(token)]
            sep = head[-1] if head and head[-1] in _SEPARATORS else ""
            head = head[: len(head) - len(sep)]
            if head:
                return f"{head}{suffix}{sep}{token}"
            return f"{suffix.lstrip('_')}{sep or '.'}{token}"
    if udim_file:
        match = _TILE_NUMBER.match(stem)
        if match and match.group("head"):
            return f"{match.group('head')}{suffix}{match.group('sep')}{match.group('tile')}"
    return f"{stem}{suffix}"


def output_name(stem: str, scale: Number, ext: str, *, counter: int = 1, udim_file: bool = False) -> str:
    """The file name for an upscaled ``stem``: ``output_name("wall", 4, "png") == "wall_x4.png"``.

    ``stem`` may hold a UDIM token (``"wall.<UDIM>"`` -> ``"wall_x4.<UDIM>.png"``); with ``udim_file``
    a trailing tile number is treated like the token (``"wall.1001"`` -> ``"wall_x4.1001.png"``).
    ``counter`` > 1 makes an alternative name (``"wall_x4_2.png"``) for collisions. ``ext`` may have a dot.
    """
    if not stem:
        raise ValueError("an output name needs a non-empty stem")
    suffix = f"_x{scale_label(scale)}" + (f"_{counter}" if counter > 1 else "")
    return f"{_insert_suffix(stem, suffix, udim_file=udim_file)}.{_normalize_ext(ext)}"


def output_filename(filename: str, scale: Number, *, udim_file: bool = False) -> str:
    """:func:`output_name` for a whole file name: ``"wall.<UDIM>.png"`` -> ``"wall_x4.<UDIM>.png"``."""
    base = os.path.basename(filename)
    stem, ext = os.path.splitext(base)
    if not ext:
        raise ValueError(f"file name {filename!r} has no extension")
    return output_name(stem, scale, ext, udim_file=udim_file)


def has_udim_token(path: str) -> bool:
    return any(token in path for token in UDIM_TOKENS)


def udim_tile_path(pattern: str, tile: int) -> str:
    """The file of one tile: ``<UDIM>`` -> ``1001``; ``<UVTILE>`` -> ``u1_v1`` (tile 1001 is u1_v1, 1012 is u2_v2)."""
    if not 1001 <= tile <= 2000:
        raise ValueError(f"UDIM tile numbers run from 1001 to 2000, got {tile}")
    u = (tile - 1001) % 10 + 1
    v = (tile - 1001) // 10 + 1
    return pattern.replace("<UDIM>", str(tile)).replace("<UVTILE>", f"u{u}_v{v}")


def safe_stem(name: str, *, fallback: str = "image") -> str:
    """A file-name-safe stem for a datablock name (packed or generated images have no file name).

    Path separators, characters Windows refuses, and control characters become ``_``; leading and
    trailing dots and spaces are dropped (UDIM tokens are kept).
    """
    parts = re.split("(" + "|".join(re.escape(t) for t in UDIM_TOKENS) + ")", name)
    text = "".join(part if part in UDIM_TOKENS else _UNSAFE.sub("_", part) for part in parts)
    text = text.strip(" .")
    return text or fallback


def unique_output_path(
    folder: str,
    stem: str,
    scale: Number,
    ext: str,
    *,
    tiles: Iterable[int] = (),
    taken: AbstractSet[str] = frozenset(),
    udim_file: bool = False,
    max_tries: int = 10000,
    ours: Callable[[str], bool] | None = None,
) -> str:
    """A path in ``folder`` for the upscaled ``stem`` that is not in ``taken`` and names no existing file, or
    only files ``ours(path)`` says are this texture's own earlier outputs (a rerun then reuses the same name).

    ``taken`` holds paths already given to other outputs of the same job (compared case-insensitively,
    as on Windows and macOS). For a UDIM pattern, a name is free only when none of ``tiles``' files
    exist (or all that do are ours). The first free one of ``wall_x4.png``, ``wall_x4_2.png``, ``wall_x4_3.png``...
    is returned: ``_2`` only when another texture of the job, another texture's earlier output or a file texup
    did not write holds the plain name.
    """
    taken_keys = {os.path.normcase(os.path.normpath(p)).lower() for p in taken}
    tiles = tuple(tiles)
    for counter in range(1, max_tries + 1):
        path = os.path.join(folder, output_name(stem, scale, ext, counter=counter, udim_file=udim_file))
        if os.path.normcase(os.path.normpath(path)).lower() in taken_keys:
            continue
        if has_udim_token(path):
            files = [udim_tile_path(path, tile) for tile in tiles] if tiles else []
            if any(os.path.exists(f) and not (ours and ours(f)) for f in files) or (
                not tiles and _any_tile_exists(path)
            ):
                continue
        elif os.path.exists(path) and not (ours and ours(path)):
            continue
        return path
    raise ValueError(f"no free output name for {stem!r} in {folder} after {max_tries} tries")


def _any_tile_exists(pattern: str) -> bool:
    folder, name = os.path.split(pattern)
    regex = re.escape(name).replace(re.escape("<UDIM>"), r"1\d{3}").replace(re.escape("<UVTILE>"), r"u\d+_v\d+")
    matcher = re.compile(f"^{regex}$", re.IGNORECASE)
    try:
        return any(matcher.match(entry) for entry in os.listdir(folder or "."))
    except FileNotFoundError:
        return False


def tile_of(path: str) -> int | None:
    """The UDIM tile number at the end of a file's stem (``wall.1001.png`` -> 1001), else None."""
    stem = os.path.splitext(os.path.basename(path))[0]
    match = _TILE_NUMBER.match(stem)
    if not match or not match.group("tile")[0] == "1":
        return None
    return int(match.group("tile"))
