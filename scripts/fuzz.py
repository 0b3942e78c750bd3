"""Seeded fuzzing of texup's image readers, of ``texup upscale`` and of the worker's JSON-lines protocol.

    .venv/bin/python scripts/fuzz.py                                  # 5000 file mutants, seed 0
    .venv/bin/python scripts/fuzz.py --count 20000 --seconds 600 --seed 7
    .venv/bin/python scripts/fuzz.py --count 300 --cli 40 --worker 200 --manifest 150  # tests/core/test_fuzz.py

Valid seed files of every format texup reads (PNG 8/16-bit, gray, RGBA, palette; JPEG baseline, gray and
progressive; TIFF 8/16-bit, float16/32, LZW, uncompressed; EXR half/float, ZIP/PIZ/none; WebP lossless and
lossy; TGA raw and RLE; BMP 24/32-bit; DDS BC1, BC5, BC6H, BC7 sRGB with mips, R16 and RGBA16F without) are
written with texup's own writer from real image crops (tests/realdata.py), then mutated deterministically (numpy
``Generator`` seeded with ``--seed``): bit flips, byte overwrites, truncation, zero-filled ranges, slice and
chunk/segment duplication or removal, header field overwrites (sizes, offsets, counts) with PNG checksums fixed
up half the time so the damage reaches the decoder, PNG pixel-stream (IDAT) damage under a valid zlib stream,
and splices of two seeds of one format.

Four engines, each checking what issues 11 and 21 ask:

* decode: every mutant through ``texup.imageio.read_image`` in a child process (so a hang is a per-file
  timeout, not a stuck run); each must decode to a C-contiguous (H, W, C) array of the header's dtype and shape
  or raise ``ImageReadError`` whose one-line message starts with the file's path. Anything else (another
  exception type, a message not naming the file, a wrong array, a timeout, more than ``--max-rss-mb`` of peak
  memory growth for one file or "not enough memory") is a finding.
* cli: one ``texup upscale`` over a folder of mutants (realesr-animevideov3 on ncnn, ``--max-pixels 64x64``):
  exit 0/1, no "Traceback", exactly one ``texup: error: <file>:`` line per failed file and one ``->`` line
  per written file (together: the number of inputs), no temporary file left, no output for a failed input.
* worker: one ``python -m texup worker`` fed garbage lines (truncated JSON, wrong types, huge numbers, deep
  nesting, unknown types, binary junk, jobs with hostile fields), each followed by a ``ping``: it must answer
  every ping, finish every job it accepted with ``done``, send at most one ``error`` per bad line (one per item
  for a job) with no traceback, never exit, write nothing outside its temporary folder, and exit 0 at end of input.

* manifest (issue 21): damaged states of an output folder texup wrote (:func:`manifest_cases`: the manifest or a
  journal line damaged as bytes or as JSON, junk journal lines, state files and folders swapped for FIFOs, links
  or folders), each read by ``texup.outputs.OutputRecord`` and the add-on's ``bridge.manifest.OutputsView``,
  written to and saved in a child process with a per-case alarm: no exception but a one-line ``ManifestError``, no
  hang, nothing outside the folder changed, a file texup did not write never taken for texup's, no temporary
  file left.

Everything is written under one temporary folder, removed at the end. Prints per-format counts and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "core") not in sys.path:
    sys.path.insert(0, str(ROOT / "core"))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from texup.machine import describe  # noqa: E402

OUTCOMES = ("decoded", "refused", "other-exception", "hang", "memory")
PER_FILE_TIMEOUT_S = 20.0
MAX_RSS_MB = 512
CHILD_ADDRESS_SPACE = 6 * 1024**3  # a runaway allocation becomes a MemoryError in the child, not a swapped machine
PREFIX = "texup: error: "
MODEL = "realesr-animevideov3"


# --- seeds ---------------------------------------------------------------------------------------------------


def _crops() -> dict[str, np.ndarray]:
    from realdata import real_image

    rgb = real_image("coffee.png", crop=(140, 230, 20, 28))
    gray = real_image("gravel.png", crop=(40, 60, 24, 18))
    alpha = real_image("camera.png", crop=(100, 200, 20, 28))
    return {"rgb": rgb, "gray": gray, "rgba": np.concatenate([rgb, alpha], axis=2)}


def make_seeds(folder: Path) -> list[tuple[str, str, Path]]:
    """Write the valid seed files into ``folder``; return (name, format, path) for each."""
    from PIL import Image as PILImage

    from texup.imageio import ImageInfo, srgb_to_linear, write_image

    folder.mkdir(parents=True, exist_ok=True)
    c = _crops()
    rgb, gray, rgba = c["rgb"], c["gray"], c["rgba"]
    u16 = (rgba.astype(np.uint16) * 257) ^ np.uint16(0x15)
    lin = srgb_to_linear(rgb.astype(np.float32) / 255)
    lin[0, 0] = [40.0, 2.5, 0.0]  # HDR values above 1
    lin_a = np.concatenate([lin, rgba[:, :, 3:].astype(np.float32) / 255], axis=2)

    def like(fmt: str, **extra: Any) -> ImageInfo:
        return ImageInfo(None, fmt, 1, 1, 3, "uint8", "srgb", extra)

    seeds: list[tuple[str, str, np.ndarray | None, ImageInfo | None, str]] = [
        ("png_rgb8", "png", rgb, None, ".png"),
        ("png_rgba16", "png", u16, None, ".png"),
        ("png_gray8", "png", gray, None, ".png"),
        ("png_graya16", "png", u16[:, :, [0, 3]], None, ".png"),
        ("png_palette", "png", None, None, ".png"),
        ("jpeg_rgb", "jpeg", rgb, like("jpeg", jpeg_quality=85, jpeg_subsampling=2), ".jpg"),
        ("jpeg_gray", "jpeg", gray, None, ".jpg"),
        ("jpeg_progressive", "jpeg", None, None, ".jpg"),
        ("tiff_rgb8", "tiff", rgb, None, ".tif"),
        ("tiff_rgba16_lzw", "tiff", u16, like("tiff", tiff_compression="lzw"), ".tif"),
        ("tiff_f32_rgb", "tiff", lin, None, ".tif"),
        ("tiff_f16_gray_raw", "tiff", lin[:, :, :1].astype(np.float16), like("tiff", tiff_compression="none"), ".tif"),
        ("exr_half_rgba", "exr", lin_a.astype(np.float16), None, ".exr"),
        ("exr_float_rgb_piz", "exr", lin, like("exr", exr_compression="piz"), ".exr"),
        ("exr_half_gray_none", "exr", lin[:, :, :1].astype(np.float16), like("exr", exr_compression="none"), ".exr"),
        ("webp_lossless_rgba", "webp", rgba, like("webp", webp_lossless=True), ".webp"),
        ("webp_lossy_rgb", "webp", rgb, like("webp", webp_lossless=False), ".webp"),
        ("tga_rle_rgba", "tga", rgba, like("tga", tga_rle=True), ".tga"),
        ("tga_raw_rgb", "tga", rgb, None, ".tga"),
        ("tga_rle_gray", "tga", gray, like("tga", tga_rle=True), ".tga"),
        ("bmp_rgb", "bmp", rgb, None, ".bmp"),
        ("bmp_rgba", "bmp", rgba, None, ".bmp"),
        ("dds_bc1_rgba", "dds", rgba, like("dds", dds_format="bc1"), ".dds"),
        ("dds_bc5_normal", "dds", rgb, like("dds", dds_format="bc5"), ".dds"),
        ("dds_bc6h", "dds", lin, like("dds", dds_format="bc6h"), ".dds"),
        ("dds_bc7_srgb", "dds", rgba, like("dds", dds_format="bc7", dds_srgb=True), ".dds"),
        ("dds_r16_flat", "dds", u16[:, :, :1], like("dds", dds_format="r16", dds_mipmaps=1), ".dds"),
        ("dds_rgba16f_flat", "dds", lin_a, like("dds", dds_format="rgba16f", dds_mipmaps=1), ".dds"),
    ]
    out: list[tuple[str, str, Path]] = []
    for name, fmt, pixels, info, ext in seeds:
        path = folder / f"{name}{ext}"
        if name == "png_palette":  # texup writes palette sources as RGB(A); Pillow makes the palette seed
            PILImage.fromarray(rgb).quantize(16).save(path, format="PNG", transparency=3)
        elif name == "jpeg_progressive":
            PILImage.fromarray(rgb).save(path, format="JPEG", quality=70, progressive=True)
        else:
            assert pixels is not None
            write_image(path, pixels, like=info, format=fmt)
        out.append((name, fmt, path))
    return out


# --- mutators ------------------------------------------------------------------------------------------------

_INTERESTING = (
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    0xFFFFFFFE,
    8193,
    16384,
    65535,
)
_BIG_ENDIAN = {"png", "jpeg"}


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole PNG chunk (length, type, data, CRC) that fits in ``data``."""
    spans, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            break
        spans.append((pos, end))
        pos = end
    return spans


def _fix_png_crcs(data: bytes) -> bytes:
    out = bytearray(data)
    for start, end in _png_chunks(data):
        out[end - 4 : end] = struct.pack(">I", zlib.crc32(bytes(out[start + 4 : end - 4])))
    return bytes(out)


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each JPEG marker segment up to and including SOS's header."""
    spans, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if end > len(data):
            break
        spans.append((pos, end))
        if marker == 0xDA:
            break
        pos = end
    return spans


def _riff_chunks(data: bytes) -> list[tuple[int, int]]:
    spans, pos = [], 12
    while pos + 8 <= len(data):
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        end = pos + 8 + size + (size & 1)
        if end > len(data):
            break
        spans.append((pos, end))
        pos = end
    return spans


def _segments(data: bytes, fmt: str) -> list[tuple[int, int]]:
    if fmt == "png":
        return _png_chunks(data)
    if fmt == "jpeg":
        return _jpeg_segments(data)
    if fmt == "webp":
        return _riff_chunks(data)
    return []


def _header_region(data: bytes, fmt: str) -> tuple[int, int]:
    """Where a format keeps its sizes, offsets and counts (the region field overwrites aim at)."""
    n = len(data)
    if fmt == "png":
        return 16, min(29, n)
    if fmt == "jpeg":
        spans = _jpeg_segments(data)
        return 2, min(spans[-1][1] if spans else 64, n)
    if fmt == "tiff" and n >= 8:
        (ifd,) = struct.unpack("<I" if data[:2] == b"II" else ">I", data[4:8])
        if 8 <= ifd < n - 2:
            return ifd, min(n, ifd + 2 + 12 * 24 + 4)
        return 0, min(n, 64)
    if fmt == "exr":
        end = data.find(b"\x00\x00", 8)
        return 8, min(n, max(end, 64) + 64)
    if fmt == "bmp":
        return 0, min(n, 138)
    if fmt == "tga":
        return 0, min(n, 18)
    if fmt == "dds":
        return 4, min(n, 148)  # the header and its DX10 extension
    return 0, min(n, 48)


def _endian(fmt: str, data: bytes) -> str:
    if fmt == "tiff":
        return "<" if data[:2] == b"II" else ">"
    return ">" if fmt in _BIG_ENDIAN else "<"


def m_bitflip(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    k = int(rng.integers(1, 9))
    for _ in range(k):
        i = int(rng.integers(0, len(out)))
        out[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(out), f"bitflip x{k}"


def m_bytes(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    out = bytearray(data)
    k = int(rng.integers(1, 17))
    for i in rng.integers(0, len(out), size=k):
        out[int(i)] = int(rng.integers(0, 256))
    return bytes(out), f"bytes x{k}"


def m_truncate(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        cut = int(rng.integers(1, len(data)))
    else:
        cut = len(data) - int(rng.integers(1, min(len(data), 64) + 1))
    return data[: max(cut, 1)], f"truncate at {cut}/{len(data)}"


def m_zero(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    start = int(rng.integers(0, len(data)))
    n = int(rng.integers(1, max(2, min(256, len(data) // 4))))
    out = bytearray(data)
    out[start : start + n] = bytes(len(out[start : start + n]))
    return bytes(out), f"zero [{start}:+{n}]"


def m_dup_slice(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    spans = _segments(data, fmt)
    if spans and rng.random() < 0.7:
        a, b = spans[int(rng.integers(0, len(spans)))]
        at = b if rng.random() < 0.5 else spans[int(rng.integers(0, len(spans)))][0]
        return data[:at] + data[a:b] + data[at:], f"dup segment [{a}:{b}] at {at}"
    a = int(rng.integers(0, len(data)))
    b = min(len(data), a + int(rng.integers(1, 512)))
    at = int(rng.integers(0, len(data)))
    return data[:at] + data[a:b] + data[at:], f"dup [{a}:{b}] at {at}"


def m_remove(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    spans = _segments(data, fmt)
    if spans and rng.random() < 0.7:
        a, b = spans[int(rng.integers(0, len(spans)))]
    else:
        a = int(rng.integers(0, len(data)))
        b = min(len(data), a + int(rng.integers(1, 256)))
    out = data[:a] + data[b:]
    return (out or data[:1]), f"remove [{a}:{b}]"


def m_field(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    lo, hi = _header_region(data, fmt) if rng.random() < 0.8 else (0, len(data))
    width = int(rng.choice([1, 2, 4]))
    if hi - lo < width:
        lo, hi = 0, len(data)
    pos = int(rng.integers(lo, max(lo + 1, hi - width + 1)))
    value = int(rng.choice(_INTERESTING)) if rng.random() < 0.8 else int(rng.integers(0, 1 << 31))
    value &= (1 << (8 * width)) - 1
    code = {1: "B", 2: "H", 4: "I"}[width]
    out = bytearray(data)
    out[pos : pos + width] = struct.pack(_endian(fmt, data) + code, value)[: len(out[pos : pos + width])]
    return bytes(out), f"field u{8 * width}@{pos}={value:#x}"


def m_png_idat(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Damage the decompressed pixel stream (filter bytes, samples, length) under a valid zlib stream and CRC."""
    spans = _png_chunks(data)
    idat = [(a, b) for a, b in spans if data[a + 4 : a + 8] == b"IDAT"]
    if fmt != "png" or not idat:
        return m_bitflip(data, fmt, rng)
    try:
        raw = bytearray(zlib.decompress(b"".join(data[a + 8 : b - 4] for a, b in idat)))
    except zlib.error:
        return m_bitflip(data, fmt, rng)
    how = int(rng.integers(0, 3))
    if how == 0 and raw:
        for i in rng.integers(0, len(raw), size=int(rng.integers(1, 6))):
            raw[int(i)] = int(rng.integers(0, 256))
        what = "bytes"
    elif how == 1:
        raw = raw[: int(rng.integers(0, len(raw) + 1))]
        what = "short"
    else:
        raw += bytes(int(rng.integers(1, 4096)))
        what = "long"
    body = b"IDAT" + zlib.compress(bytes(raw))
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[: idat[0][0]] + chunk + data[idat[-1][1] :], f"idat {what}"


MUTATORS: tuple[Callable[[bytes, str, np.random.Generator], tuple[bytes, str]], ...] = (
    m_bitflip,
    m_bytes,
    m_truncate,
    m_zero,
    m_dup_slice,
    m_remove,
    m_field,
    m_field,
    m_png_idat,
)


def mutate(data: bytes, fmt: str, rng: np.random.Generator, other: bytes | None = None) -> tuple[bytes, str]:
    """One deterministic mutant of ``data`` (1-3 stacked mutations; ``other``: a seed of the same format to splice)."""
    steps: list[str] = []
    if other is not None and rng.random() < 0.08:
        cut_a, cut_b = int(rng.integers(1, len(data))), int(rng.integers(0, len(other)))
        data = data[:cut_a] + other[cut_b:]
        steps.append(f"splice {cut_a}+{cut_b}")
    for _ in range(int(rng.integers(1, 4))):
        mutator = MUTATORS[int(rng.integers(0, len(MUTATORS)))]
        if mutator is m_png_idat and fmt != "png":
            mutator = m_field
        data, what = mutator(data, fmt, rng)
        steps.append(what)
    if fmt == "png" and rng.random() < 0.5:
        data = _fix_png_crcs(data)
        steps.append("crc fixed")
    return data, "; ".join(steps)


@dataclass
class Mutant:
    path: Path
    format: str
    seed: str
    how: str


def make_mutants(
    seeds: list[tuple[str, str, Path]], count: int, rng: np.random.Generator, folder: Path, start: int = 0
) -> list[Mutant]:
    """``count`` mutants, seeds taken in turn, written as ``m<index>_<seed><ext>`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {name: path.read_bytes() for name, _, path in seeds}
    by_format: dict[str, list[str]] = {}
    for name, fmt, _ in seeds:
        by_format.setdefault(fmt, []).append(name)
    out = []
    for i in range(start, start + count):
        name, fmt, path = seeds[i % len(seeds)]
        partners = by_format[fmt]
        other = blobs[partners[int(rng.integers(0, len(partners)))]]
        data, how = mutate(blobs[name], fmt, rng, other)
        target = folder / f"m{i:05d}_{name}{path.suffix}"
        target.write_bytes(data)
        out.append(Mutant(target, fmt, name, how))
    return out


# --- decode engine ---------------------------------------------------------------------------------------------


def _vm_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _decode_child(list_file: str, start: int, max_rss_mb: int) -> int:
    """Child side: decode each listed file from ``start`` on, one JSON line per file on stdout."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
    except (ValueError, OSError):
        pass
    import PIL.Image  # noqa: E401,F401

    import texup.imageio  # noqa: F401  (codecs imported once, before the first file's memory is measured)
    from texup.errors import ImageReadError
    from texup.imageio import probe_image, read_image

    paths = Path(list_file).read_text(encoding="utf-8").splitlines()
    can_reset = Path("/proc/self/clear_refs").exists()
    selftest = os.environ.get("TEXUP_FUZZ_SELFTEST") == "1"
    # Results go out on a copy of fd 1; fd 1 itself goes to stderr, so a decoder that prints cannot break them.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for index in range(start, len(paths)):
        path = Path(paths[index])
        out.write(json.dumps({"i": index, "start": True}) + "\n")
        out.flush()
        before = _vm_kb("VmRSS")
        if can_reset:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                can_reset = False
        outcome, detail = "decoded", ""
        try:
            if selftest and "selftest-hang" in path.name:  # tests/core/test_fuzz.py checks the harness itself
                time.sleep(3600)
            if selftest and "selftest-exit" in path.name:
                os._exit(3)
            if selftest and "selftest-typeerror" in path.name:
                raise TypeError("planted by the self-test")
            image = read_image(path)
            pixels, info = image.pixels, image.info
            header = probe_image(path)
            problems = []
            if not isinstance(pixels, np.ndarray) or pixels.ndim != 3:
                problems.append(f"not an (H, W, C) array: {getattr(pixels, 'shape', None)}")
            elif pixels.shape != (header.height, header.width, header.channels) or pixels.shape != info.shape:
                problems.append(f"shape {pixels.shape}, header {header.shape}")
            if pixels.dtype.name != header.dtype or pixels.dtype.name != info.dtype:
                problems.append(f"dtype {pixels.dtype}, header {header.dtype}")
            if not pixels.flags.c_contiguous or info.channels not in (1, 2, 3, 4):
                problems.append("not C-contiguous or bad channel count")
            if problems:
                outcome, detail = "other-exception", "invalid array: " + "; ".join(problems)
            else:
                detail = f"{info.width}x{info.height}x{info.channels} {info.dtype}"
            del image, pixels
        except ImageReadError as err:
            text = str(err)
            if "not enough memory" in text:
                outcome, detail = "memory", text
            elif not text.startswith(f"{path}: ") or not text.isprintable():
                outcome, detail = "other-exception", f"message does not name the file in one line: {text!r}"
            else:
                outcome, detail = "refused", text[len(str(path)) + 2 :]
        except BaseException as err:  # noqa: BLE001 - anything else is the finding being looked for
            outcome, detail = "other-exception", f"{type(err).__name__}: {err}"[:400]
        peak = _vm_kb("VmHWM") if can_reset else _vm_kb("VmRSS")
        growth_mb = max(0, peak - before) / 1024
        if outcome != "other-exception" and growth_mb > max_rss_mb:
            outcome, detail = "memory", f"peak RSS grew by {growth_mb:.0f} MB ({detail})"
        out.write(json.dumps({"i": index, "outcome": outcome, "detail": detail, "rss_mb": round(growth_mb, 1)}) + "\n")
        out.flush()
    return 0


@dataclass
class DecodeResult:
    mutant: Mutant
    outcome: str
    detail: str
    rss_mb: float = 0.0


def decode_all(
    mutants: list[Mutant], work: Path, *, per_file_timeout: float = PER_FILE_TIMEOUT_S, max_rss_mb: int = MAX_RSS_MB
) -> list[DecodeResult]:
    """Decode every mutant in a child process; a file taking longer than ``per_file_timeout`` is a hang
    (the child is killed and a new one continues with the next file)."""
    list_file = work / "decode-list.txt"
    list_file.write_text("".join(f"{m.path}\n" for m in mutants), encoding="utf-8")
    results: dict[int, DecodeResult] = {}
    start = 0
    while start < len(mutants):
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--decode-child",
                str(list_file),
                str(start),
                str(max_rss_mb),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(ROOT / "core")},
        )
        assert proc.stdout is not None and proc.stderr is not None
        current, buffer = start, b""
        deadline = time.monotonic() + per_file_timeout + 30  # the first file also pays for the imports
        stalled = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                stalled = True
                break
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("start"):
                    current = msg["i"]
                    deadline = time.monotonic() + per_file_timeout
                else:
                    results[msg["i"]] = DecodeResult(mutants[msg["i"]], msg["outcome"], msg["detail"], msg["rss_mb"])
                    current = msg["i"] + 1
        if stalled:
            proc.kill()
            proc.wait()
            results[current] = DecodeResult(mutants[current], "hang", f"no answer within {per_file_timeout:.0f} s")
            start = current + 1
            continue
        err = proc.stderr.read().decode("utf-8", "replace")
        code = proc.wait()
        if current < len(mutants) and current not in results:  # the child died on this file
            results[current] = DecodeResult(
                mutants[current], "other-exception", f"decoder process died (exit {code}): {err[-400:]}"
            )
            start = current + 1
        else:
            start = len(mutants)
    return [results[i] for i in range(len(mutants))]


# --- CLI engine ------------------------------------------------------------------------------------------------


@dataclass
class CliReport:
    returncode: int
    inputs: int
    written: int
    failed: int
    seconds: float
    problems: list[str] = field(default_factory=list)
    stderr: str = ""


def run_cli_batch(mutants: list[Mutant], work: Path, *, timeout: float = 300.0) -> CliReport:
    """Copy the mutants into one folder, upscale it with one ``texup upscale``, check every promise of issue 11."""
    src_dir, out_dir = work / "cli-in", work / "cli-out"
    src_dir.mkdir(parents=True)
    inputs: list[Path] = []
    for m in mutants:
        target = src_dir / m.path.name
        shutil.copyfile(m.path, target)
        inputs.append(target)
    command = [
        sys.executable,
        "-m",
        "texup",
        "upscale",
        str(src_dir),
        "-o",
        str(out_dir),
        "--model",
        MODEL,
        "--engine",
        "ncnn",
        "--device",
        "cpu",
        "--max-pixels",
        "64x64",
    ]
    started = time.monotonic()
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT / "core")},
    )
    seconds = time.monotonic() - started
    problems: list[str] = []
    if proc.returncode not in (0, 1):
        problems.append(f"exit code {proc.returncode}")
    if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
        problems.append("a traceback was printed")
    written: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if " -> " in line:
            src, dst = line.split(" -> ", 1)
            if src in written:
                problems.append(f"written twice: {src}")
            written[src] = dst
    errors: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith(PREFIX):
            continue
        rest = line[len(PREFIX) :]
        named = [str(p) for p in inputs if rest.startswith(f"{p}: ")]
        if not named:  # a write failure names the output; map it back to its input
            named = [src for src, dst in written.items() if rest.startswith(f"{dst}: ")]
            named += [str(p) for p in inputs if rest.startswith(f"{out_dir / p.stem}_x")]
        if len(named) != 1:
            problems.append(f"error line naming no input: {line[:200]}")
            continue
        errors[named[0]] = errors.get(named[0], 0) + 1
    for p in inputs:
        key = str(p)
        n_err, n_ok = errors.get(key, 0), int(key in written)
        if n_err + n_ok != 1:
            problems.append(f"{p.name}: {n_ok} '->' lines and {n_err} error lines (expected one line)")
        produced = [q for q in out_dir.glob(f"{p.stem}_x4*")] if out_dir.exists() else []
        if n_err and produced:
            problems.append(f"{p.name} failed but left {[q.name for q in produced]}")
        if n_ok and not Path(written[key]).is_file():
            problems.append(f"{p.name}: reported output {written[key]} does not exist")
    leftovers = [str(q) for q in out_dir.rglob("*") if q.name.endswith(".tmp")] if out_dir.exists() else []
    leftovers += [str(q) for q in src_dir.iterdir() if q not in set(inputs)]
    if leftovers:
        problems.append(f"left behind: {leftovers[:5]}")
    expected_code = 1 if errors else 0
    if proc.returncode in (0, 1) and proc.returncode != expected_code:
        problems.append(f"exit code {proc.returncode} with {len(errors)} failed files")
    return CliReport(proc.returncode, len(inputs), len(written), len(errors), seconds, problems, proc.stderr)


# --- worker engine ---------------------------------------------------------------------------------------------


def worker_lines(rng: np.random.Generator, count: int, work: Path, valid_src: list[Path]) -> list[bytes]:
    """``count`` bad or hostile request lines (no ``shutdown``: the worker must survive them all)."""
    out_dir = work / "worker-out"
    good_src = str(valid_src[0])

    def job(i: int, **over: Any) -> dict[str, Any]:
        item = {"key": f"k{i}", "src": str(valid_src[i % len(valid_src)]), "dst": str(out_dir / f"j{i}.png")}
        item.update(over.pop("item", {}))
        message = {
            "type": "upscale",
            "id": f"L{i}",
            "options": {"model": MODEL, "engine": "ncnn", "tile": 32},
            "items": [item],
        }
        message["options"].update(over.pop("options", {}))
        message.update(over)
        return message

    junk_values: list[Any] = [None, True, False, 0, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, 10**30, -(10**30)]
    hostile_items: list[dict[str, Any]] = [
        {"src": "relative/in.png"},
        {"src": "../in.png"},
        {"src": f"{work}/../{work.name}/x.png"},
        {"dst": "out.png"},
        {"dst": f"{out_dir}/../escape.png"},
        {"src": "/dev/zero"},
        {"src": str(work)},
        {"src": "/proc/self/status"},
        {"src": good_src, "dst": good_src},
        {"src": good_src + "\u0000x"},
        {"dst": str(out_dir / "a\u0000b.png")},
        {"role": "alpha"},
        {"role": None},
        {"key": ""},
        {"key": 7},
        {"key": "\ud800"},
        {"key": "k" * 100_000},
        {"src": str(work / "missing.png")},
        {"dst": str(out_dir / "x.unknown")},
        {"dst": str(out_dir)},
        {"src": str(work / "\ud83d.png")},
        {"role": "normal"},
        {"role": "data"},
    ]
    hostile_options: list[dict[str, Any]] = [
        {"scale": float("nan")},
        {"scale": float("inf")},
        {"scale": -2},
        {"scale": 0.01},
        {"scale": 16},
        {"tile": -16},
        {"tile": float("nan")},
        {"tile": 15},
        {"tile": 2**62},
        {"overlap": -1},
        {"overlap": 10**6},
        {"tile": 16, "overlap": 17},
        {"target_size": [0, 5]},
        {"target_size": [10**9, 10**9]},
        {"target_size": [1, 1]},
        {"target_size": [3]},
        {"target_size": [True, 2]},
        {"target_size": [8, 8], "scale": 2},
        {"model": ""},
        {"model": "../../../etc/passwd"},
        {"model": "/nonexistent/model.pth"},
        {"model": str(work)},
        {"model": "no-such-model"},
        {"device": "cuda:99"},
        {"device": "vulkan:-1"},
        {"device": "cpu\u0000"},
        {"engine": "gpu"},
        {"precision": "fp8"},
        {"precision": "fp16"},
        {"seamless": "maybe"},
        {"seamless": "on"},
        {"colour": "red"},
        {"scale": "2"},
        {"tile": 32.0},
        {"tile": 32.5},
        {"scale": 1e-300},
        {"scale": 1},
    ]
    templates = [
        job(0),
        {"type": "ping", "id": "t"},
        {"type": "cancel", "id": "nobody"},
        {"type": "models", "id": "m"},
        {
            "type": "train",
            "id": "tr",
            "data_dir": str(work / "no-data"),
            "out_dir": str(work / "train-out"),
            "steps": 1,
        },
    ]

    def nested(depth: int) -> str:
        return "[" * depth + "]" * depth

    lines: list[bytes] = []
    for i in range(count):
        kind = i % 12
        if kind == 0:  # truncated JSON
            text = json.dumps(templates[int(rng.integers(0, len(templates)))] if i % 24 else job(i))
            line = text[: int(rng.integers(1, len(text)))].encode()
        elif kind == 1:  # a field of a valid message replaced by a value of the wrong type
            message = job(i)
            where = int(rng.integers(0, 4))
            value = junk_values[int(rng.integers(0, len(junk_values)))]
            if where == 0:
                message["type"] = value
            elif where == 1:
                message["id"] = value
            elif where == 2:  # (not {} or null: the default model on the auto engine would be measured, ~40 s)
                message["options"] = [value] if value is None or isinstance(value, dict) else value
            else:
                message["items"] = value if rng.random() < 0.5 else [value]
            line = json.dumps(message).encode()
        elif kind == 2:  # huge and odd numbers in the raw text
            raw = [
                "1e400",
                "-1e400",
                "1" + "0" * 5000,
                "9" * 400,
                "-0",
                "NaN",
                "Infinity",
                "-Infinity",
                "1e-400",
                "123456789012345678901234567890",
            ][int(rng.integers(0, 10))]
            slot = ["id", "tile", "scale", "overlap", "steps"][int(rng.integers(0, 5))]
            if slot == "id":
                line = f'{{"type": "ping", "id": {raw}}}'.encode()
            elif slot == "steps":
                line = (
                    f'{{"type": "train", "id": "L{i}", "data_dir": "{work}/no-data", "out_dir": "{work}/t",'
                    f' "steps": {raw}}}'
                ).encode()
            else:
                # A tile is given with the overlap: an overlap far above the automatic tile is a known pipeline
                # problem (minutes of work or a huge allocation; see docs/reliability.md), not a protocol one.
                tile = ', "tile": 64' if slot == "overlap" else ""
                line = (
                    f'{{"type": "upscale", "id": "L{i}", "options": {{"{slot}": {raw}, "engine": "ncnn",'
                    f' "model": "{MODEL}"{tile}}}, "items": []}}'
                ).encode()
        elif kind == 3:  # nesting: under the limit, at it, over it, far over it
            depth = [1, 20, 30, 31, 32, 33, 100, 5000][int(rng.integers(0, 8))]
            where = int(rng.integers(0, 3))
            if where == 0:
                line = nested(depth).encode()
            elif where == 1:
                line = f'{{"type": "ping", "id": "L{i}", "pad": {nested(depth)}}}'.encode()
            else:
                line = (
                    f'{{"type": "upscale", "id": "L{i}", "options": {{"model": {nested(depth)}}}, "items": []}}'
                ).encode()
        elif kind == 4:  # unknown or odd message types
            t = [
                "upscalee",
                "",
                "PING",
                "Ping ",
                "shutdown ",
                "hello",
                "done",
                "result",
                "\u0000",
                "\ud800",
                "u" * 10_000,
            ][int(rng.integers(0, 11))]
            line = json.dumps({"type": t, "id": f"L{i}"}).encode()
        elif kind == 5:  # binary junk, invalid UTF-8, NUL bytes, BOM, control characters
            n = int(rng.integers(1, 200))
            blob = bytes(rng.integers(0, 256, size=n, dtype=np.uint8)).replace(b"\n", b"")
            choice = int(rng.integers(0, 5))
            if choice == 0:
                line = blob
            elif choice == 1:
                line = b"\xef\xbb\xbf" + json.dumps({"type": "ping", "id": f"L{i}"}).encode()
            elif choice == 2:
                line = b'{"type": "ping", "id": "\xff\xfe"}'
            elif choice == 3:
                line = b"\x00" * n
            else:
                line = b"\r" + b" \t" * 3
        elif kind in (6, 7):  # valid jobs with a hostile item field
            over = dict(hostile_items[int(rng.integers(0, len(hostile_items)))])
            line = json.dumps(job(i, item=over)).encode()
        elif kind in (8, 9):  # valid jobs with hostile options
            line = json.dumps(
                job(i, options=dict(hostile_options[int(rng.integers(0, len(hostile_options)))]))
            ).encode()
        elif kind == 10:  # byte-level damage of a valid job line
            data = bytearray(json.dumps(job(i)).encode())
            lo = data.index(b'"items"') if rng.random() < 0.8 else 0  # mostly past the options (see kind 1)
            for j in rng.integers(lo, len(data), size=int(rng.integers(1, 4))):
                data[int(j)] = int(rng.integers(32, 127))
            line = bytes(data).replace(b"shutdown", b"shutdowx")
        else:  # protocol misuse: cancels, duplicate keys, many items, extra fields, train with bad fields
            choice = int(rng.integers(0, 7))
            if choice == 0:
                line = json.dumps({"type": "cancel"}).encode()
            elif choice == 1:
                line = json.dumps({"type": "cancel", "id": f"nobody-{i}"}).encode()
            elif choice == 2:
                message = job(i)
                message["items"] = [message["items"][0], dict(message["items"][0])]
                line = json.dumps(message).encode()
            elif choice == 3:
                message = job(i)
                message["items"] = [
                    {"key": f"k{j}", "src": f"{work}/missing{j}.png", "dst": f"{out_dir}/n{j}.png"}
                    for j in range(int(rng.integers(2, 6)))
                ]
                line = json.dumps(message).encode()
            elif choice == 4:
                line = json.dumps({"type": "train", "id": f"L{i}", "data_dir": "", "out_dir": "x", "steps": 0}).encode()
            elif choice == 5:
                line = json.dumps(
                    {
                        "type": "train",
                        "id": f"L{i}",
                        "data_dir": str(work / "no-data"),
                        "out_dir": str(work / "train-out"),
                        "steps": 1,
                        "evil": 1,
                    }
                ).encode()
            else:
                line = json.dumps({**job(i), "extra": {"a": [1, 2, {"b": None}]}}).encode()
        lines.append(line.replace(b"\n", b" "))
    return lines


@dataclass
class WorkerReport:
    lines: int
    errors: int
    jobs: int
    seconds: float
    exit_code: int | None
    problems: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    tracebacks: int = 0  # error events of jobs that carried a traceback (model load failures, unexpected item errors)
    slowest: list[tuple[float, int, bytes]] = field(default_factory=list)


def _expects(line: bytes) -> tuple[str | None, int]:
    """(job id whose ``done`` the worker owes for this line, most ``error`` events it may send for it)."""
    from texup.worker.protocol import ProtocolError, decode

    try:
        message = decode(line)
    except (ProtocolError, ValueError, RecursionError):
        return None, 1
    if message["type"] in ("upscale", "train"):
        job_id = message.get("id")
        if isinstance(job_id, (str, int)) and not isinstance(job_id, bool) and job_id != "":
            items = message.get("items")
            return str(job_id), max(1, len(items) if isinstance(items, list) else 1)
    return None, 1


def run_worker_fuzz(lines: list[bytes], work: Path, *, line_timeout: float = 60.0) -> WorkerReport:
    """Feed ``lines`` to one ``python -m texup worker``, each followed by a ping; check the promises of issue 11."""
    cwd = work / "worker-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(work / "worker-stderr.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "texup", "worker", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT / "core")},
    )
    assert proc.stdin is not None and proc.stdout is not None
    buffer = b""
    problems: list[str] = []
    kinds: dict[str, int] = {}

    def read_until(done: Callable[[dict[str, Any]], bool], timeout: float) -> list[dict[str, Any]] | None:
        nonlocal buffer
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(raw)
                except ValueError:
                    problems.append(f"worker wrote a line that is not JSON: {raw[:120]!r}")
                    continue
                seen.append(event)
                if done(event):
                    return seen
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    return None
                buffer += chunk

    started = time.monotonic()
    hello = read_until(lambda e: e.get("type") == "hello", 120)
    errors = jobs = tracebacks = 0
    slowest: list[tuple[float, int, bytes]] = []
    if hello is None:
        problems.append("no hello from the worker")
    else:
        for i, line in enumerate(lines):
            job_id, allowed = _expects(line)
            jobs += job_id is not None
            ping = f"fuzz-ping-{i}"
            try:
                proc.stdin.write(line + b"\n" + json.dumps({"type": "ping", "id": ping}).encode() + b"\n")
                proc.stdin.flush()
            except OSError as err:
                problems.append(f"line {i}: the worker stopped reading ({err}); line was {line[:120]!r}")
                break
            pending = {("pong", ping)} | ({("done", job_id)} if job_id is not None else set())

            def finished(event: dict[str, Any]) -> bool:
                pending.discard((event.get("type"), event.get("id")))  # noqa: B023 (read_until runs in this iteration)
                return not pending  # noqa: B023

            line_started = time.monotonic()
            events = read_until(finished, line_timeout)
            slowest.append((time.monotonic() - line_started, i, line[:100]))
            if events is None:
                problems.append(
                    f"line {i}: no answer within {line_timeout:.0f} s (waiting for {sorted(pending)});"
                    f" line was {line[:160]!r}; worker exit code {proc.poll()}"
                )
                break
            errs = [e for e in events if e.get("type") == "error"]
            errors += len(errs)
            for e in errs:
                kinds[str(e.get("kind"))] = kinds.get(str(e.get("kind")), 0) + 1
            if len(errs) > allowed:
                shown = "; ".join(
                    f"{e.get('id')}/{e.get('item')}: {e.get('kind')}: {str(e.get('message'))[:100]}" for e in errs
                )
                problems.append(
                    f"line {i}: {len(errs)} error events (at most {allowed}): {shown}; line was {line[:300]!r}"
                )
            for e in errs:
                # By design only a job's model-load failure (item null) carries its traceback; one on a line's or an
                # item's error means an exception type nobody expected reached the catch-all.
                if not e.get("traceback"):
                    continue
                tracebacks += 1
                print(f"  traceback on line {i}: {e.get('kind')}: {str(e.get('message', ''))[:200]}", file=sys.stderr)
                if job_id is None:
                    problems.append(
                        f"line {i}: error {e.get('kind')}: {e.get('message', '')[:160]} came with a "
                        f"traceback (the reader's catch-all); line was {line[:160]!r}"
                    )
        final = None
        if proc.poll() is None:
            proc.stdin.write(b'{"type": "ping", "id": "last"}\n')
            proc.stdin.flush()
            final = read_until(lambda e: e.get("type") == "pong" and e.get("id") == "last", 30)
        if final is None:
            problems.append(f"the worker did not answer the last ping (exit code {proc.poll()})")
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        code: int | None = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
        problems.append("the worker did not exit within 60 s of the end of its input")
    log.close()
    if code not in (0, None):
        problems.append(f"worker exit code {code}")
    leftovers = [str(p) for p in work.rglob("*") if p.name.endswith(".tmp")]
    leftovers += [str(p) for p in cwd.rglob("*")]
    leftovers += [str(p) for p in work.parent.glob("escape*")]
    if leftovers:
        problems.append(f"left behind: {leftovers[:5]}")
    slowest.sort(reverse=True)
    return WorkerReport(
        len(lines), errors, jobs, time.monotonic() - started, code, problems, kinds, tracebacks, slowest[:50]
    )


# --- the output folder's manifest and journals ------------------------------------------------------------------

#: Values that break a reader that trusts a manifest's types (wrong types, NUL, paths out of the folder, huge and
#: non-finite numbers, deep nesting).
_HOSTILE_JSON: list[Any] = [
    None,
    True,
    "12",
    "",
    "\u0000",
    "../outside.png",
    "/etc/passwd",
    -1,
    2**70,
    1e308,
    float("nan"),
    [],
    {},
    [[[[[[[[]]]]]]]],
    {"size": "1"},
]
_STATE_FILES = ("manifest", "journal", "lock", "state", "journals")


@dataclass
class ManifestCase:
    index: int
    how: str
    manifest: bytes | None  # None: leave as written
    journal: bytes | None
    swap: tuple[str, str] | None  # (which of _STATE_FILES, "fifo" | "link-file" | "link-dir" | "dangling" | "folder")


def _poke(tree: Any, rng: np.random.Generator) -> tuple[Any, str]:
    """Replace one value (or key) somewhere in a parsed manifest with a hostile one."""
    path: list[Any] = []
    node = tree
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        key = list(node)[int(rng.integers(0, len(node)))] if isinstance(node, dict) else int(rng.integers(0, len(node)))
        path.append(key)
        node = node[key]
    value = _HOSTILE_JSON[int(rng.integers(0, len(_HOSTILE_JSON)))]
    if rng.random() < 0.05:
        value = _DEEP  # replaced by 5000 nested lists when written
    if not path:
        return value, f"whole={value!r:.40}"
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.2:
        parent[str(value)[:40] if not isinstance(value, str) else value] = parent.pop(last)
        return tree, f"key {'/'.join(map(str, path))} -> {value!r:.40}"
    if isinstance(parent, dict) and rng.random() < 0.15:
        del parent[last]
        return tree, f"del {'/'.join(map(str, path))}"
    parent[last] = value
    return tree, f"{'/'.join(map(str, path))}={value!r:.40}"


_DEEP = "__deep__"


def _dump(tree: Any) -> bytes:
    text = json.dumps(tree, indent=1, sort_keys=False).replace(f'"{_DEEP}"', "[" * 5000 + "]" * 5000)
    return text.encode("utf-8", errors="surrogatepass")


def _damage(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    if not data:
        return b"\xff", "empty -> 0xff"
    mutator = [m_bitflip, m_bytes, m_truncate, m_zero, m_dup_slice, m_remove][int(rng.integers(0, 6))]
    return mutator(data, "json", rng)


def manifest_cases(rng: np.random.Generator, count: int, manifest: bytes, journal: bytes) -> list[ManifestCase]:
    """``count`` damaged states of one output folder: the manifest or the journal damaged as bytes (bit flips,
    truncation, ...), poked as JSON (wrong types, hostile keys and values, deep nesting), junk journal lines
    (invalid UTF-8, claims of hostile keys), or a state file or folder swapped for a FIFO, a link (to a file or
    folder outside the output folder, or dangling) or a folder."""
    cases = []
    lines = journal.splitlines()
    for index in range(count):
        roll = rng.random()
        m = j = None
        swap = None
        if roll < 0.3:
            m, how = _damage(manifest, rng)
            how = "manifest " + how
        elif roll < 0.55:
            tree, how = _poke(json.loads(manifest), rng)
            m, how = _dump(tree), "manifest " + how
        elif roll < 0.8:
            pick = int(rng.integers(0, len(lines)))
            kind = rng.random()
            if kind < 0.3:
                bad, how = _damage(lines[pick], rng)
            elif kind < 0.6:
                tree, how = _poke(json.loads(lines[pick]), rng)
                bad = _dump(tree).replace(b"\n", b"")
            else:
                junk = [
                    b"\xff\xfe\x00\x81",
                    b"[" * 50_000,
                    json.dumps({"claim": "../x.png"}).encode(),
                    json.dumps({"release": 5}).encode(),
                    json.dumps({"key": "\u0000", "entry": {"size": 1, "mtime_ns": 1}}).encode(),
                    b'{"key": "o0.png", "entry": {"size": 1e999, "mtime_ns": ' + b"7" * 5000 + b"}}",
                ]
                bad = junk[int(rng.integers(0, len(junk)))]
                how = f"junk {bad[:30]!r}"
            j = b"\n".join([*lines[:pick], bad, *lines[pick + 1 :]]) + b"\n"
            how = f"journal line {pick}: {how}"
        else:
            swap = (
                _STATE_FILES[int(rng.integers(0, len(_STATE_FILES)))],
                ("fifo", "link-file", "link-dir", "dangling", "folder")[int(rng.integers(0, 5))],
            )
            how = f"{swap[0]} -> {swap[1]}"
        cases.append(ManifestCase(index, how, m, j, swap))
    return cases


_MANIFEST_OUTPUTS = 6


def _manifest_folder(root: Path) -> tuple[Path, Path]:
    """An output folder written by texup (six outputs, a manifest, an ended run's journal with two more) and a
    file texup did not write (``foreign.png``); returns (folder, that file)."""
    from texup.outputs import OutputRecord

    out = root / "out"
    out.mkdir(parents=True)
    record = OutputRecord(out)
    record.open_journal()
    for i in range(_MANIFEST_OUTPUTS):
        with record.writing(out / f"o{i}.png", {"source_sha256": f"{i:064x}", "options": {"scale": 4}}) as tmp:
            tmp.write_bytes(bytes([i]) * (i + 10))
        if i < _MANIFEST_OUTPUTS - 2:  # the last two stay only in the journal, as after a kill
            record.add(out / f"o{i}.png", source_sha256=f"{i:064x}", options={"scale": 4})
    record.save()
    journal = record._journal_path
    assert journal is not None and record._journal_fd is not None
    os.close(record._journal_fd)  # "killed": the journal stays, unlocked
    record._journal_fd = None
    (out / "foreign.png").write_bytes(b"an artist's own file")
    return out, journal


def _apply(case: ManifestCase, out: Path, journal: Path, outside: Path) -> None:
    state = out / ".texup"
    if case.manifest is not None:
        (state / "outputs.json").write_bytes(case.manifest)
    if case.journal is not None:
        journal.write_bytes(case.journal)
    if case.swap is None:
        return
    which, kind = case.swap
    target = {
        "manifest": state / "outputs.json",
        "journal": journal,
        "lock": state / "lock",
        "state": state,
        "journals": state / "journal",
    }[which]
    if which == "state":  # keep the real state outside, so a link to it would be followed into it
        os.rename(state, outside / "real-state")
    elif target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
        (target / "inner").write_bytes(b"x")
    elif kind == "dangling":
        os.symlink(outside / "made-by-texup", target)
    elif kind == "link-dir":
        os.symlink(outside / "real-state" if which == "state" else outside, target)
    else:
        os.symlink(outside / "sentinel.json", target)


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "link"
        elif path.is_fifo():
            found[str(path)] = "fifo"
        elif path.is_file():
            found[str(path)] = path.read_bytes()
    return found


_HANG_S = 10


class _Hang(BaseException):
    """A case ran past its time (a blocking open or read)."""


def _manifest_case(case: ManifestCase, work: Path) -> list[str]:
    """Run one case: read the folder as texup and as the add-on, judge every output, record one more, save and
    close; what went wrong (each a finding)."""
    import signal as signal_module

    sys.path.insert(0, str(ROOT / "blender_addon"))
    from bridge.manifest import OutputsView

    from texup.outputs import ManifestError, OutputRecord

    root = work / f"case{case.index}"
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "sentinel.json").write_bytes(b'{"files": {}}')
    (outside / "x.jsonl").write_bytes(b"{}\n")
    out, journal = _manifest_folder(root)
    _apply(case, out, journal, outside)
    before = _snapshot(outside)
    problems: list[str] = []

    def hang(signum: int, frame: object) -> None:
        raise _Hang  # not an OSError: no `except OSError` in the code under test can swallow it

    signal_module.signal(signal_module.SIGALRM, hang)
    signal_module.alarm(_HANG_S)
    try:
        record = OutputRecord(out)
        for line in record.warnings:
            if "\n" in line or "Traceback" in line:
                problems.append(f"warning not one line: {line!r:.200}")
        if record.wrote(out / "foreign.png"):
            problems.append("a file texup did not write is taken for texup's")
        for i in range(_MANIFEST_OUTPUTS):
            record.entry(out / f"o{i}.png")
        view = OutputsView(str(out))
        if view.entry(str(out / "foreign.png")) is not None:
            problems.append("the add-on takes a file texup did not write for texup's")
        for line in view.problems:
            if "\n" in line:
                problems.append(f"add-on problem not one line: {line!r:.200}")
        try:
            record.open_journal()
            with record.writing(out / "new.png", {"source_sha256": "0" * 64}) as tmp:
                tmp.write_bytes(b"a new output")
            record.add(out / "new.png", source_sha256="0" * 64)
            record.close()
        except ManifestError as err:
            if "\n" in str(err):
                problems.append(f"ManifestError not one line: {err!s:.200}")
        else:
            again = OutputRecord(out)
            if not again.wrote(out / "new.png"):
                problems.append("an output recorded by a successful save is not known as texup's")
            if again.wrote(out / "foreign.png"):
                problems.append("after the save, a file texup did not write is taken for texup's")
    except _Hang:
        problems.append(f"hang: blocked for {_HANG_S} s")
    except Exception as err:  # noqa: BLE001 - every other exception is a finding
        problems.append(f"{type(err).__name__}: {err!s:.200}")
    finally:
        signal_module.alarm(0)
    if _snapshot(outside) != before:
        problems.append("something outside the output folder was changed")
    leftovers = [p.name for p in (out / ".texup").glob(".*.tmp")] if (out / ".texup").is_dir() else []
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    return [f"case {case.index} ({case.how}): {p}" for p in problems]


@dataclass
class ManifestReport:
    cases: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)


def run_manifest_fuzz(rng: np.random.Generator, count: int, work: Path, *, timeout: float = 600.0) -> ManifestReport:
    """``count`` damaged output-folder states (:func:`manifest_cases`), each read, judged, written to and saved in a
    child process: no exception but texup's one-line ``ManifestError``, no hang, no file outside the output folder
    touched, a file texup did not write never taken for texup's, no temporary file left."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    seed_root = work / "manifest-seed"
    out, journal = _manifest_folder(seed_root)
    cases = manifest_cases(rng, count, (out / ".texup" / "outputs.json").read_bytes(), journal.read_bytes())
    shutil.rmtree(seed_root)
    spec = work / "manifest-cases.json"
    spec.write_text(
        json.dumps(
            [
                {
                    "index": c.index,
                    "how": c.how,
                    "manifest": None if c.manifest is None else c.manifest.hex(),
                    "journal": None if c.journal is None else c.journal.hex(),
                    "swap": c.swap,
                }
                for c in cases
            ]
        )
    )
    report = ManifestReport(cases=len(cases))
    for c in cases:
        kind = c.how.split(" ")[0] if c.swap is None else "swap"
        report.kinds[kind] = report.kinds.get(kind, 0) + 1
    command = [sys.executable, str(Path(__file__).resolve()), "--manifest-child", str(spec), str(work / "cases")]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        report.problems = [line for line in stdout.splitlines() if line.startswith("case ")]
        report.problems.append(f"hang: the cases did not finish in {timeout:.0f} s")
    else:
        report.problems = [line for line in proc.stdout.splitlines() if line.startswith("case ")]
        if proc.returncode != 0:
            report.problems.append(f"the child exited {proc.returncode}: {proc.stderr[-2000:]}")
    report.seconds = time.monotonic() - started
    return report


def _manifest_child(spec: str, work: str) -> int:
    for row in json.loads(Path(spec).read_text()):
        case = ManifestCase(
            row["index"],
            row["how"],
            None if row["manifest"] is None else bytes.fromhex(row["manifest"]),
            None if row["journal"] is None else bytes.fromhex(row["journal"]),
            None if row["swap"] is None else tuple(row["swap"]),  # type: ignore[arg-type]
        )
        for problem in _manifest_case(case, Path(work)):
            print(problem, flush=True)
        shutil.rmtree(Path(work) / f"case{case.index}", ignore_errors=True)
    return 0


# --- the run -------------------------------------------------------------------------------------------------


def summarize(results: Iterable[DecodeResult]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for r in results:
        row = table.setdefault(r.mutant.format, dict.fromkeys(OUTCOMES, 0))
        row[r.outcome] += 1
    return dict(sorted(table.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="file mutants to decode (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--seconds", type=float, default=None, help="stop making mutants after this long")
    parser.add_argument(
        "--cli", type=int, default=200, help="mutants upscaled by one texup upscale (default 200; 0: skip)"
    )
    parser.add_argument("--worker", type=int, default=1000, help="bad lines sent to one worker (default 1000; 0: skip)")
    parser.add_argument(
        "--max-rss-mb", type=int, default=MAX_RSS_MB, help="peak memory growth per file counted as a finding"
    )
    parser.add_argument(
        "--manifest", type=int, default=500, help="damaged output-folder states (manifest, journal; default 500)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--decode-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--manifest-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decode_child:
        return _decode_child(args.decode_child[0], int(args.decode_child[1]), int(args.decode_child[2]))
    if args.manifest_child:
        return _manifest_child(*args.manifest_child)

    started = time.monotonic()
    rng = np.random.default_rng(args.seed)
    report: dict[str, Any] = {"machine": describe(), "seed": args.seed}
    print(f"texup fuzz, seed {args.seed}, on {report['machine']}; load average {os.getloadavg()[0]:.2f}")
    findings = 0
    with tempfile.TemporaryDirectory(prefix="texup-fuzz-") as tmp:
        work = Path(tmp)
        os.environ["TEXUP_HOME"] = str(work / "home")  # nothing written outside the temporary folder
        seeds = make_seeds(work / "seeds")
        results: list[DecodeResult] = []
        made = 0
        while made < args.count:
            if args.seconds is not None and time.monotonic() - started > args.seconds:
                break
            n = min(500, args.count - made)
            batch = make_mutants(seeds, n, rng, work / f"mutants{made // 500}", start=made)
            results += decode_all(batch, work, max_rss_mb=args.max_rss_mb)
            for m in batch:
                m.path.unlink()
            made += n
        table = summarize(results)
        decode_s = time.monotonic() - started
        print(
            f"\ndecode: {len(results)} mutants of {len(seeds)} seeds in {decode_s:.0f} s "
            f"(largest peak-RSS growth for one file: {max((r.rss_mb for r in results), default=0):.0f} MB)"
        )
        print(f"{'format':8} " + " ".join(f"{o:>15}" for o in OUTCOMES))
        for fmt, row in table.items():
            print(f"{fmt:8} " + " ".join(f"{row[o]:>15}" for o in OUTCOMES))
        total = {o: sum(row[o] for row in table.values()) for o in OUTCOMES}
        print(f"{'total':8} " + " ".join(f"{total[o]:>15}" for o in OUTCOMES))
        bad = [r for r in results if r.outcome not in ("decoded", "refused")]
        for r in bad[:30]:
            print(f"  FINDING {r.outcome}: {r.mutant.path.name} ({r.mutant.how}): {r.detail[:300]}")
        findings += len(bad)
        report["decode"] = {
            "count": len(results),
            "seconds": round(decode_s, 1),
            "by_format": table,
            "findings": [
                {"file": r.mutant.path.name, "how": r.mutant.how, "outcome": r.outcome, "detail": r.detail} for r in bad
            ],
        }
        if args.cli:
            cli_mutants = make_mutants(seeds, args.cli, rng, work / "cli-mutants", start=10**6)
            cli = run_cli_batch(cli_mutants, work)
            print(
                f"\ncli: {cli.inputs} mutants in one texup upscale: {cli.written} written, {cli.failed} one-line "
                f"errors, exit {cli.returncode}, {cli.seconds:.1f} s; problems: {len(cli.problems)}"
            )
            for p in cli.problems[:20]:
                print(f"  FINDING cli: {p}")
            findings += len(cli.problems)
            report["cli"] = {
                "inputs": cli.inputs,
                "written": cli.written,
                "failed": cli.failed,
                "exit": cli.returncode,
                "seconds": round(cli.seconds, 1),
                "problems": cli.problems,
            }
        if args.worker:
            valid = [path for name, fmt, path in seeds if fmt in ("png", "tga", "exr")]
            lines = worker_lines(rng, args.worker, work, valid)
            wr = run_worker_fuzz(lines, work)
            print(
                f"\nworker: {wr.lines} bad lines (+ a ping after each), {wr.jobs} jobs, {wr.errors} error events, "
                f"{wr.seconds:.1f} s, exit {wr.exit_code}; problems: {len(wr.problems)}"
            )
            print(
                "  error kinds: "
                + ", ".join(f"{k} {v}" for k, v in sorted(wr.kinds.items()))
                + f"; {wr.tracebacks} job errors came with a traceback"
            )
            for seconds, index, text in wr.slowest[: int(os.environ.get("FUZZ_SHOW_SLOWEST", "3"))]:
                print(f"  slowest: line {index} {seconds:.1f} s: {text!r}")
            for p in wr.problems[:20]:
                print(f"  FINDING worker: {p}")
            findings += len(wr.problems)
            report["worker"] = {
                "lines": wr.lines,
                "jobs": wr.jobs,
                "errors": wr.errors,
                "kinds": wr.kinds,
                "tracebacks": wr.tracebacks,
                "seconds": round(wr.seconds, 1),
                "exit": wr.exit_code,
                "problems": wr.problems,
            }
        if args.manifest:
            mr = run_manifest_fuzz(rng, args.manifest, work / "manifest")
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(mr.kinds.items()))
            print(f"\nmanifest: {mr.cases} damaged output-folder states ({kinds}) in {mr.seconds:.1f} s")
            for p in mr.problems[:20]:
                print(f"  FINDING manifest: {p}")
            findings += len(mr.problems)
            report["manifest"] = {
                "cases": mr.cases,
                "kinds": mr.kinds,
                "seconds": round(mr.seconds, 1),
                "problems": mr.problems,
            }
    report["findings"] = findings
    report["seconds"] = round(time.monotonic() - started, 1)
    print(f"\n{findings} findings in {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
