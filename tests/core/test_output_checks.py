"""``texup upscale -o`` and ``--size`` checked before anything runs (issue 21 item 10).

``-o`` through a loop of symbolic links was a traceback; ``--size 2147483648x1`` passed every check and ran
for minutes at 5.6 GB. Each is now a usage error (exit 2), one line, before a model is loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from texup.cli.main import main
from texup.imageio import write_image
from texup.imageio.write import LARGEST_SIDE, size_problem


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    write_image(path, np.full((8, 9, 3), 100, np.uint8))
    return path


def _usage_error(capsys, *argv: str) -> str:
    start = time.monotonic()
    code = main(["upscale", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - start < 10
    return err


def test_an_output_folder_through_a_loop_of_links_is_a_usage_error(tmp_path: Path, photo: Path, capsys) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "self").symlink_to(tmp_path / "self")
    for out in ("a", "a/out", "self", "self/deeper/out"):
        err = _usage_error(capsys, str(photo), "-o", str(tmp_path / out))
        assert "loop of symbolic links" in err


def test_an_output_folder_name_the_system_refuses_is_a_usage_error(tmp_path: Path, photo: Path, capsys) -> None:
    err = _usage_error(capsys, str(photo), "-o", str(tmp_path / ("x" * 5000)))
    assert "cannot be used as a folder" in err


@pytest.mark.parametrize(
    ("size", "extra", "words"),
    [
        ("2147483648x1", [], "PNG images are limited to 2147483647"),  # the case (a PNG input)
        (f"{LARGEST_SIDE + 1}x1", [], "no image format texup writes"),
        ("1x99999999999999999999", [], "no image format texup writes"),
        ("1" * 100_000 + "x1", [], "must look like WIDTHxHEIGHT"),
        ("20000x16", ["--format", "webp"], "WebP images are limited to 16383"),
        ("70000x16", ["--format", "jpg"], "JPEG images are limited to 65500"),
        ("16x70000", ["--format", "tga"], "TGA images are limited to 65535"),
    ],
)
def test_a_size_no_output_format_can_store_is_a_usage_error(size, extra, words, photo, tmp_path, capsys) -> None:
    err = _usage_error(capsys, str(photo), "-o", str(tmp_path / "out"), "--size", size, *extra)
    assert words in err and len(err) < 400, err[:300]
    assert not (tmp_path / "out").exists()


def test_a_size_is_checked_against_each_input_files_own_format(tmp_path: Path, capsys) -> None:
    """As a file, in a folder or through a pattern: the output keeps the input's format."""
    folder = tmp_path / "in"
    folder.mkdir()
    jpeg = folder / "photo.jpg"
    write_image(jpeg, np.full((8, 9, 3), 100, np.uint8))
    write_image(folder / "other.png", np.full((8, 9, 3), 100, np.uint8))
    for given in (jpeg, folder, folder / "*.jpg"):
        err = _usage_error(capsys, str(given), "-o", str(tmp_path / "out"), "--size", "70000x16")
        assert "JPEG images are limited to 65500" in err
    assert main(["upscale", str(folder / "*.png"), "-o", str(tmp_path / "o2"), "--size", "70000x16", "--dry-run"]) in (
        0,
        1,
    )


def test_size_problem_knows_each_formats_largest_side() -> None:
    assert size_problem("png", 2**31 - 1, 1) is None and size_problem("png", 2**31, 1)
    assert size_problem("jpeg", 65500, 65500) is None and size_problem("jpeg", 65501, 1)
    assert size_problem("webp", 16383, 1) is None and size_problem("webp", 1, 16384)
    assert size_problem("tiff", 2**32 - 1, 1) is None and size_problem("tiff", 2**32, 1)
    assert LARGEST_SIDE == 2**32 - 1
