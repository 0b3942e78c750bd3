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


# --- --scale past the output format's largest side (issue 21, the third leftover) --------------------------------


class _CountingUpscaler:
    """Stands in for a x4 model: counts what it is asked to upscale and makes a small image (the size check comes
    from each input's header, before this is called)."""

    scale = 4
    engine = type("E", (), {"name": "fake"})()
    device = precision = "cpu"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def upscale_array(self, pixels, options, **_kw):
        self.calls.append(f"{pixels.shape[1]}x{pixels.shape[0]}")
        return np.zeros((2, 2, pixels.shape[2]), pixels.dtype)

    def upscale_file(self, src, dst, options, *, format=None, **_kw):
        self.calls.append(Path(src).name)
        write_image(dst, np.zeros((2, 2, 3), np.uint8), format=format)
        return Path(dst)


@pytest.mark.parametrize(
    ("width", "extra", "words"),
    [
        (4100, ["--format", "webp"], "WebP images are limited to 16383x16383 pixels, this one is 16400x8"),
        (16376, ["--format", "jpg"], "JPEG images are limited to 65500x65500 pixels, this one is 65504x8"),
        (3000, ["--format", "webp", "--scale", "6"], "this one is 18000x12"),  # --scale, not the model's
    ],
)
def test_a_scale_past_the_formats_largest_side_is_refused_per_item_before_upscaling(
    width, extra, words, tmp_path, monkeypatch, capsys
) -> None:
    import texup.api as api

    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a_wide.png", np.full((2, width, 3), 100, np.uint8))
    write_image(folder / "b_small.png", np.full((2, 3, 3), 100, np.uint8))
    upscaler = _CountingUpscaler()
    monkeypatch.setattr(api, "get_upscaler", lambda *a, **k: upscaler)
    code = main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", "realesrgan-x4plus", *extra])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith(f"texup: error: {folder / 'a_wide.png'}: output {tmp_path / 'out' / 'a_wide_x'}"), line
    assert words in line and "choose a smaller --scale" in line, line
    assert upscaler.calls == ["3x2"]  # only the small one was upscaled: the wide one was refused up front
    assert "1 upscaled" in err and "1 failed" in err


def test_the_worker_refuses_a_scale_past_the_formats_largest_side_before_upscaling(tmp_path) -> None:
    import io
    import json

    from texup.worker import protocol
    from texup.worker.server import WorkerServer

    src = tmp_path / "wide.png"
    write_image(src, np.full((2, 4100, 3), 100, np.uint8))
    small = tmp_path / "small.png"
    write_image(small, np.full((2, 3, 3), 100, np.uint8))
    upscaler = _CountingUpscaler()
    out = io.StringIO()
    server = WorkerServer(io.BytesIO(b""), out, device="cpu", get_upscaler=lambda model, **kw: upscaler)
    items = [
        {"key": "wide", "src": str(src), "dst": str(tmp_path / "wide_x4.webp")},
        {"key": "small", "src": str(small), "dst": str(tmp_path / "small_x4.webp")},
    ]
    server.run_job(protocol.parse_upscale({"type": "upscale", "id": "j", "options": {"model": "m"}, "items": items}))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    (error,) = [e for e in events if e["type"] == "error"]
    assert error["item"] == "wide" and not error["traceback"], error
    assert str(src) in error["message"] and "WebP images are limited to 16383x16383 pixels" in error["message"]
    assert "16400x8" in error["message"]
    assert upscaler.calls == ["small.png"]  # the wide one was never upscaled
    assert not any(e["type"] == "progress" and e.get("item") == "wide" for e in events)
    assert events[-1]["type"] == "done" and (events[-1]["ok"], events[-1]["failed"]) == (1, 1)
