"""`texup upscale` end to end: files, folders, globs, bad inputs, never over an input, formats kept."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from realdata import real_image

from texup.archs import RRDBNet
from texup.cli.main import main
from texup.imageio import probe_image, read_image, write_image
from texup.weights import save_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small random x4 RRDBNet saved as .safetensors: fast, and exercises the file-loading path."""
    torch.manual_seed(0)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    return save_model(net, tmp_path_factory.mktemp("model") / "tiny_x4.safetensors", provenance={"test": "cli"})


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    write_image(path, real_image("coffee.png", crop=(100, 200, 37, 53)))
    return path


def run_cli(*args: object) -> int:
    return main([str(a) for a in args])


def test_file_upscaled_with_suffix_and_listed(tiny_model, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model) == 0
    result = out / "photo_x4.png"
    info = probe_image(result)
    assert (info.width, info.height, info.channels, info.dtype) == (53 * 4, 37 * 4, 3, "uint8")
    assert f"{photo} -> {result}" in capsys.readouterr().out


def test_layout_choice_gives_the_same_pixels(tiny_model, photo, tmp_path, capsys):
    for layout in ("nchw", "channels_last"):
        assert run_cli("upscale", photo, "-o", tmp_path / layout, "--model", tiny_model, "--layout", layout) == 0
    a, b = (read_image(tmp_path / layout / "photo_x4.png").pixels.astype(int) for layout in ("nchw", "channels_last"))
    assert np.abs(a - b).max() <= 1
    with pytest.raises(SystemExit):
        run_cli("upscale", photo, "-o", tmp_path, "--model", tiny_model, "--layout", "nhwc")
    assert "invalid choice: 'nhwc'" in capsys.readouterr().err


def test_only_the_program_entry_tunes_malloc(monkeypatch, capsys):
    import texup.cli.main as cli_main

    calls: list[int] = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["texup", "models", "list"])
    assert cli_main.main() == 0  # run as a program: argv from sys.argv
    assert calls == [1]
    assert cli_main.main(["models", "list"]) == 0  # called from Python: the caller's process is left alone
    assert calls == [1]


def test_folder_glob_and_recursive(tiny_model, tmp_path):
    src = tmp_path / "lib"
    (src / "sub").mkdir(parents=True)
    pixels = real_image("gravel.png", crop=(0, 0, 20, 24))
    write_image(src / "a.png", pixels)
    write_image(src / "b.tga", np.repeat(pixels, 3, axis=2))
    write_image(src / "sub" / "c.png", pixels)
    (src / "notes.txt").write_text("not an image")

    out = tmp_path / "flat"
    assert run_cli("upscale", src, "-o", out, "--model", tiny_model) == 0
    assert sorted(p.name for p in out.iterdir()) == [".texup", "a_x4.png", "b_x4.tga"]

    out = tmp_path / "deep"
    assert run_cli("upscale", src, "-r", "-o", out, "--model", tiny_model) == 0
    assert (out / "sub" / "c_x4.png").is_file()

    out = tmp_path / "globbed"
    assert run_cli("upscale", str(src / "*.tga"), "-o", out, "--model", tiny_model) == 0
    assert sorted(p.name for p in out.iterdir()) == [".texup", "b_x4.tga"]


def test_bad_inputs_reported_one_line_each_and_batch_continues(tiny_model, photo, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("hello, I am not a PNG\n")
    (bad / "noise.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    good_bytes = photo.read_bytes()
    (bad / "truncated.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    # a valid PNG signature and IHDR claiming 100000 x 100000 pixels, then nothing
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (bad / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    missing = tmp_path / "missing.png"

    names = ["empty.png", "text.png", "noise.jpg", "truncated.png", "huge.png"]
    out = tmp_path / "out"
    code = run_cli("upscale", *(bad / n for n in names), missing, photo, "-o", out, "--model", tiny_model)
    assert code == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("texup: error:")]
    assert len(err_lines) == len(names) + 1
    for name in [*names, "missing.png"]:
        assert any(name in line for line in err_lines), (name, err_lines)
    # the good file after the bad ones was still done
    assert (out / "photo_x4.png").is_file()
    # no partial outputs or temp files for the failures
    assert sorted(p.name for p in out.iterdir()) == [".texup", "photo_x4.png"]


def test_never_writes_over_an_input(tiny_model, photo, capsys):
    before = photo.read_bytes()
    code = run_cli("upscale", photo, "-o", photo.parent, "--suffix", "", "--model", tiny_model)
    assert code == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_skip_existing(tiny_model, photo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "photo_x4.png"
    existing.write_bytes(b"keep me")
    assert run_cli("upscale", photo, "-o", out, "--skip-existing", "--model", tiny_model) == 0
    assert existing.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "name, pixels",
    [
        ("rgba16.png", (np.random.default_rng(2).random((19, 23, 4)) * 65535).astype(np.uint16)),
        ("gray_alpha.png", (np.random.default_rng(3).random((17, 21, 2)) * 255).astype(np.uint8)),
        ("linear.exr", np.random.default_rng(4).random((15, 13, 3)).astype(np.float16)),
        ("gray16.tif", (np.random.default_rng(5).random((16, 9, 1)) * 65535).astype(np.uint16)),
    ],
)
def test_format_bit_depth_and_channels_kept(tiny_model, tmp_path, name, pixels):
    src = tmp_path / name
    write_image(src, pixels)
    out = tmp_path / "out"
    assert run_cli("upscale", src, "-o", out, "--model", tiny_model, "--scale", "2") == 0
    result = read_image(out / f"{src.stem}_x2{src.suffix}")
    h, w, c = pixels.shape
    assert result.pixels.shape == (h * 2, w * 2, c)
    assert result.pixels.dtype == pixels.dtype


def test_exact_size_and_usage_errors(tiny_model, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model, "--size", "100x64", "--suffix", "_big") == 0
    info = probe_image(out / "photo_big.png")
    assert (info.width, info.height) == (100, 64)
    assert run_cli("upscale", photo, "-o", out, "--size", "100by64") == 2
    assert "--size" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(photo, tmp_path, capsys):
    assert run_cli("upscale", photo, "-o", tmp_path / "out", "--model", "no-such-model") == 1
    assert "no-such-model" in capsys.readouterr().err


@pytest.mark.slow  # the real x4plus model through the console script
def test_console_script_with_default_pretrained_model(photo, tmp_path, texup_home):
    """The installed `texup` command runs the real default model offline and prints where the result is."""
    exe = Path(sys.executable).with_name("texup")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "texup"]
    out = tmp_path / "out"
    env = {**os.environ, "TEXUP_HOME": str(texup_home)}
    proc = subprocess.run(
        [*command, "upscale", str(photo), "-o", str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out / "photo_x4.png") in proc.stdout
    assert probe_image(out / "photo_x4.png").width == 53 * 4


# --- reliability (issue 11) ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _fifo_watch(fifo: Path):
    """Yield a list that gets an entry whenever someone opened ``fifo`` to read; that reader gets EOF at once,
    so a regression fails the test instead of hanging it."""
    import threading

    stop, opened = threading.Event(), []

    def watch() -> None:
        while not stop.wait(0.05):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody is reading it
                continue
            opened.append(1)
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join(5)


def test_fifo_input_is_refused_without_opening_it_and_the_batch_goes_on(tiny_model, photo, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with _fifo_watch(fifo) as opened:
        code = run_cli("upscale", fifo, photo, "-o", tmp_path / "out", "--model", tiny_model)
    assert code == 1 and not opened
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("texup: error:")]
    assert len(err_lines) == 1 and "pipe.png" in err_lines[0] and "not a regular file" in err_lines[0]
    assert (tmp_path / "out" / "photo_x4.png").is_file()


def test_fifo_swapped_in_after_listing_is_refused_before_reading(tmp_path):
    from texup.batch import read_source as _read_source
    from texup.errors import ImageReadError
    from texup.library import NEW, Planned, WorkItem

    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)
    planned = Planned(WorkItem(fifo, Path()), tmp_path / "late_x4.png", NEW)
    with _fifo_watch(fifo) as opened, pytest.raises(ImageReadError, match="not a regular file"):
        _read_source(planned, None)
    assert not opened


def test_outputs_never_leave_the_out_dir(tiny_model, photo, tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    for flag, value in (("--suffix", "/../../escape"), ("--format", "/../../escape.png")):
        assert run_cli("upscale", photo, "-o", out, flag, value, "--model", tiny_model) == 2
        assert flag in capsys.readouterr().err
    assert not any(p.name.startswith(("escape", "photo")) for p in tmp_path.rglob("*") if p.is_file() and p != photo)
    # a sub-folder of -o that links elsewhere: what would land behind the link is refused, the rest is written
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    write_image(lib / "a.png", real_image("gravel.png", crop=(0, 0, 20, 24)))
    write_image(lib / "sub" / "b.png", real_image("gravel.png", crop=(0, 0, 20, 24)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir(parents=True)
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    assert run_cli("upscale", lib, "-r", "-o", out, "--model", tiny_model) == 1
    assert "outside" in capsys.readouterr().err
    assert (out / "a_x4.png").is_file() and list(elsewhere.iterdir()) == []


def test_overlap_larger_than_tile_is_a_usage_error(photo, tmp_path, capsys):
    assert run_cli("upscale", photo, "-o", tmp_path / "out", "--tile", "16", "--overlap", "200") == 2
    assert "--overlap" in capsys.readouterr().err


def test_same_input_twice_is_upscaled_once_and_succeeds(tiny_model, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("upscale", photo, photo, photo.parent, "-o", out, "--model", tiny_model) == 0
    assert sorted(p.name for p in out.iterdir()) == [".texup", "photo_x4.png"]
    assert "error" not in capsys.readouterr().err


def test_out_dir_that_is_a_file_is_a_clear_usage_error(photo, tmp_path, capsys):
    not_a_folder = tmp_path / "out.png"
    not_a_folder.write_bytes(b"x")
    for out in (not_a_folder, not_a_folder / "sub"):
        assert run_cli("upscale", photo, "-o", out) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "File exists" not in err


@pytest.mark.parametrize(
    "error",
    [
        TypeError("unsupported operand"),
        AttributeError("'NoneType' has no 'shape'"),
        KeyError(273),
        IndexError("list index out of range"),
    ],
)
def test_a_decoder_crash_is_one_files_error_and_the_batch_goes_on(
    tiny_model, photo, tmp_path, capsys, monkeypatch, error
):
    # A fuzzed TIFF made tifffile raise TypeError/AttributeError, which escaped as a traceback and ended the batch.
    from texup.imageio import _tiff

    bad = photo.parent / "bad.tif"
    write_image(bad, real_image("coffee.png", crop=(0, 0, 20, 24)))

    def crash(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(_tiff, "decode", crash)
    out = tmp_path / "out"
    assert run_cli("upscale", bad, photo, "-o", out, "--model", tiny_model) == 1
    err = capsys.readouterr().err
    assert f"{bad}: corrupt or unsupported tiff file (decoder: {type(error).__name__}" in err
    assert "Traceback" not in err and (out / "photo_x4.png").is_file() and not (out / "bad_x4.tif").exists()


def test_stale_temp_files_of_a_killed_run_are_swept_from_the_output_folder(tiny_model, photo, tmp_path):
    """kill -9 mid-write leaves `.<name>.<hex>.tmp`; the next run into that folder removes those an hour old."""
    import os
    import time

    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".old_x4.png.0123456789ab.tmp"
    fresh = out / ".busy_x4.png.ba9876543210.tmp"  # another run may be writing it right now
    unrelated = out / "notes.tmp"
    for path in (stale, fresh, unrelated):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(unrelated, (two_hours_ago, two_hours_ago))
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model) == 0
    assert not stale.exists() and fresh.exists() and unrelated.exists()


def test_never_replaces_a_file_texup_did_not_write(tiny_model, tmp_path, capsys):
    """`--format jpg --suffix ''` next to an original small.jpg used to overwrite it silently."""
    folder = tmp_path / "textures"
    folder.mkdir()
    write_image(folder / "small.png", np.full((9, 7, 3), 120, np.uint8))
    original = folder / "small.jpg"
    write_image(original, np.full((9, 7, 3), 40, np.uint8))
    before = original.read_bytes()
    assert (
        run_cli("upscale", folder / "small.png", "-o", folder, "--format", "jpg", "--suffix", "", "--model", tiny_model)
        == 1
    )
    assert original.read_bytes() == before
    assert "small.jpg exists and is not an unchanged earlier texup output; not replacing it" in capsys.readouterr().err
    # --overwrite is the explicit way to replace it (never an input of the run).
    assert (
        run_cli(
            "upscale",
            folder / "small.png",
            "-o",
            folder,
            "--format",
            "jpg",
            "--suffix",
            "",
            "--model",
            tiny_model,
            "--overwrite",
        )
        == 0
    )
    assert original.read_bytes() != before


def test_a_rerun_replaces_its_own_outputs_but_not_ones_edited_since(tiny_model, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model) == 0
    result = out / "photo_x4.png"
    first = result.stat().st_mtime_ns
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model) == 0  # up to date (issue 13): left as is
    assert result.stat().st_mtime_ns == first
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model, "--force") == 0  # texup's own: replaced
    assert result.stat().st_mtime_ns != first
    capsys.readouterr()
    write_image(result, np.zeros((5, 5, 3), np.uint8))  # the user painted over it
    edited = result.read_bytes()
    os.utime(result, ns=(first, first))  # even with an old timestamp the size gives it away
    assert run_cli("upscale", photo, "-o", out, "--model", tiny_model) == 1
    assert result.read_bytes() == edited
    assert "not an unchanged earlier texup output" in capsys.readouterr().err


def test_output_records_of_runs_sharing_a_folder_merge(tmp_path):
    from texup.outputs import OutputRecord

    (tmp_path / "a.png").write_bytes(b"a")
    (tmp_path / "b.png").write_bytes(b"bb")
    one, two = OutputRecord(tmp_path), OutputRecord(tmp_path)
    one.add(tmp_path / "a.png")
    two.add(tmp_path / "b.png")
    one.save()
    two.save()  # read-modify-write under the lock: a.png stays
    fresh = OutputRecord(tmp_path)
    assert fresh.wrote(tmp_path / "a.png") and fresh.wrote(tmp_path / "b.png")
    assert not fresh.wrote(tmp_path / "c.png") and not fresh.wrote(tmp_path.parent / "a.png")
    (tmp_path / "a.png").write_bytes(b"changed")
    assert not OutputRecord(tmp_path).wrote(tmp_path / "a.png")
