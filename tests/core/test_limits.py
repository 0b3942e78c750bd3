"""texup.limits: the input pixel limit (default, option, environment) and the output memory budget."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from texup import limits
from texup.errors import ImageReadError
from texup.imageio import read_image, write_image


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height RGB pixels (all zero rows, deflated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width * 3 + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "text, count",
    [
        ("16384x16384", 16384 * 16384),
        ("268435456", 268435456),
        ("268M", 268_000_000),
        ("8k", 8000),
        ("1,000", 1000),
        ("7 x 3", 21),
    ],
)
def test_pixel_counts_parse(text, count):
    assert limits.parse_pixels(text) == count


@pytest.mark.parametrize("text", ["", "lots", "0", "-5", "12x"])
def test_bad_pixel_counts_are_refused(text):
    with pytest.raises(ValueError):
        limits.parse_pixels(text)


@pytest.mark.parametrize(
    "text, count",
    [("12G", 12 << 30), ("512M", 512 << 20), ("1048576", 1 << 20), ("0", 0), ("1.5GiB", int(1.5 * (1 << 30)))],
)
def test_byte_sizes_parse(text, count):
    assert limits.parse_bytes(text) == count


def test_default_and_environment_pixel_limit(monkeypatch):
    monkeypatch.delenv(limits.ENV_MAX_PIXELS, raising=False)
    assert limits.max_pixels() == 8192 * 8192
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "100x100")
    assert limits.max_pixels() == 10_000
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "lots")
    with pytest.raises(ValueError, match="TEXUP_MAX_PIXELS"):
        limits.max_pixels()


def test_a_png_bomb_under_the_old_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    """16000x16000 (256 Mpx, under the old 268 Mpx limit) in a few hundred kB: refused before decoding."""
    monkeypatch.delenv(limits.ENV_MAX_PIXELS, raising=False)
    bomb = _png_bomb(tmp_path / "bomb.png", 16000, 16000)
    assert bomb.stat().st_size < 1_000_000
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match="16000x16000, larger than the limit of 67,108,864 pixels.*--max-pixels"):
        read_image(bomb)
    assert time.perf_counter() - start < 1.0  # header only (a decode takes tens of seconds)


def test_the_environment_and_the_argument_move_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    write_image(path, np.zeros((20, 30, 3), np.uint8))
    monkeypatch.setenv(limits.ENV_MAX_PIXELS, "500")
    with pytest.raises(ImageReadError, match="larger than the limit of 500 pixels"):
        read_image(path)
    assert read_image(path, max_pixels=600).pixels.shape == (20, 30, 3)


def test_cli_max_pixels_refuses_one_file_and_the_batch_goes_on(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    write_image(small, np.zeros((8, 8, 3), np.uint8))
    write_image(big, np.zeros((40, 40, 3), np.uint8))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "texup",
            "upscale",
            str(small),
            str(big),
            "-o",
            str(tmp_path / "out"),
            "--model",
            "realesr-animevideov3",
            "--engine",
            "ncnn",
            "--max-pixels",
            "30x30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "big.png: image is 40x40, larger than the limit of 900 pixels" in run.stderr
    assert (tmp_path / "out" / "small_x4.png").is_file() and not (tmp_path / "out" / "big_x4.png").exists()


def test_an_output_over_the_memory_budget_is_refused_before_allocating(monkeypatch):
    import texup

    monkeypatch.setenv(limits.ENV_MEMORY_BUDGET, "1M")
    upscaler = texup.Upscaler("realesr-animevideov3", engine="ncnn")
    pixels = np.zeros((200, 300, 4), np.uint16)  # x4: 1200x800x4x2 bytes = 7.7 MB of output
    with pytest.raises(limits.MemoryBudgetError, match="1200x800 output needs about 9 MB.*TEXUP_MEMORY_BUDGET"):
        upscaler.upscale_array(pixels, texup.UpscaleOptions(color_fix="off"))
    # the colour fix holds a float32 copy of the output's colour besides: 1200x800x3x4 bytes = 11.5 MB more
    with pytest.raises(limits.MemoryBudgetError, match="1200x800 output needs about 21 MB"):
        upscaler.upscale_array(pixels, texup.UpscaleOptions(color_fix="on"))
    monkeypatch.setenv(limits.ENV_MEMORY_BUDGET, "0")  # off
    assert upscaler.upscale_array(np.zeros((6, 5, 3), np.uint8)).shape == (24, 20, 3)


def test_the_peak_estimate_counts_output_input_and_float_copies():
    assert limits.upscale_peak_bytes(10, 10, 4, 2, 40, 40) == 40 * 40 * 4 * 2 + 100 * (4 * 2 + 12 + 4)
    assert limits.upscale_peak_bytes(10, 10, 3, 1, 40, 40) == 40 * 40 * 3 + 100 * (3 + 12)
    assert limits.available_memory() is None or limits.available_memory() > 0
