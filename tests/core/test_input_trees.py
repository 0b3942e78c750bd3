"""Links and unreadable folders in the trees ``texup upscale`` walks (issue 21, the first leftover).

A loop of symbolic links inside the output tree of ``texup upscale -r`` was a traceback; a ``**`` pattern over a
folder holding two links back to itself never ended; a sub-folder that could not be listed was left out without a
word. Each failed before the fix: now every such path is named in one line and the rest of the batch goes on.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from texup.archs import RRDBNet
from texup.cli.main import main
from texup.imageio import write_image
from texup.library import expand_inputs
from texup.weights import save_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    return save_model(net, tmp_path_factory.mktemp("model") / "tiny_x4.safetensors")


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((8, 9, 3), 100, np.uint8))
    return path


def _tree(tmp_path: Path) -> Path:
    """in/a.png, in/sub/b.png, in/deep/c.png; a link to a folder outside, a loop of links named like an image,
    a loop named like a folder."""
    lib = tmp_path / "in"
    _image(lib / "a.png")
    _image(lib / "sub" / "b.png")
    _image(lib / "deep" / "c.png")
    _image(tmp_path / "outside" / "d.png")
    (lib / "ext").symlink_to(tmp_path / "outside")
    (lib / "sub" / "loop.png").symlink_to(lib / "sub" / "loop.png")
    (lib / "self").symlink_to(lib / "self")
    return lib


def test_links_in_a_recursive_input_tree_are_named_and_the_batch_goes_on(tmp_path, tiny_model, capsys):
    lib = _tree(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "deep").symlink_to(out / "deep")  # the output tree: a loop where deep/c_x4.png would go
    argv = ["upscale", "-r", str(lib), "-o", str(out), "--model", str(tiny_model), "--engine", "torch"]
    code = main([*argv, "--device", "cpu"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 1 and "Traceback" not in err, err
    lines = err.splitlines()

    def line_of(name: str) -> str:
        found = [line for line in lines if name in line]
        assert len(found) == 1, (name, err)
        return found[0]

    assert line_of("loop.png").startswith("texup: error: ") and "loop of symbolic links" in line_of("loop.png")
    assert line_of(f"{lib / 'self'}").startswith("texup: warning: ")  # a loop without an image's name: skipped
    assert line_of(f"{lib / 'ext'}").startswith("texup: warning: ") and "not followed" in line_of(f"{lib / 'ext'}")
    deep = line_of("c_x4.png")
    assert deep.startswith(f"texup: error: {lib / 'deep' / 'c.png'}: output ") and "loop of symbolic links" in deep
    assert "2 upscaled" in lines[-1] and "2 failed" in lines[-1], err  # a.png and sub/b.png made all the same
    assert (out / "a_x4.png").is_file() and (out / "sub" / "b_x4.png").is_file()
    assert not (out / "d_x4.png").exists() and not (out / "ext").exists()


def test_a_link_to_a_folder_is_only_a_warning(tmp_path, capsys):
    """Nothing fails: the run's exit code is 0, the link is named once."""
    lib = tmp_path / "in"
    _image(lib / "a.png")
    _image(tmp_path / "outside" / "d.png")
    (lib / "ext").symlink_to(tmp_path / "outside")
    code = main(["upscale", "-r", str(lib), "-o", str(tmp_path / "out"), "--suffix", "_up", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("texup: warning: ") == 1 and "ext: a link to a folder is not followed" in err


@pytest.mark.parametrize("pattern", ["in/**/*.png", "in/**"])
def test_a_double_star_pattern_over_links_back_to_their_folder_ends(tmp_path, pattern):
    """``glob.glob`` followed both links at every level: 2**40 paths. Now links to folders are never followed."""
    lib = tmp_path / "in"
    _image(lib / "a.png")
    _image(lib / "sub" / "b.png")
    _image(lib / ".hidden" / "h.png")
    (lib / "l1").symlink_to(".")
    (lib / "l2").symlink_to(".")
    command = [sys.executable, "-m", "texup", "upscale", pattern, "-o", "out", "--suffix", "_up", "--dry-run"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split(" -> ")[0] for line in proc.stdout.splitlines()) == ["in/a.png", "in/sub/b.png"]


def test_a_folder_that_cannot_be_listed_is_named_not_left_out_silently(tmp_path, monkeypatch):
    lib = tmp_path / "in"
    _image(lib / "a.png")
    _image(lib / "locked" / "b.png")
    scandir = os.scandir

    def refusing(path):
        if Path(path) == lib / "locked":  # chmod 000 does not stop root, who runs the tests in CI containers
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    items, problems = expand_inputs([str(lib)], recursive=True)
    assert [item.src for item in items] == [lib / "a.png"]
    assert [(p.arg, p.warning) for p in problems] == [(str(lib / "locked"), False)]
    assert "cannot list this folder (Permission denied)" in problems[0].reason
    only, alone = expand_inputs([str(lib / "locked")], recursive=True)
    assert only == [] and len(alone) == 1 and "cannot list" in alone[0].reason  # not "holds no image files"


def test_a_broken_link_named_like_an_image_is_an_error_naming_its_target(tmp_path):
    lib = tmp_path / "in"
    _image(lib / "a.png")
    (lib / "gone.png").symlink_to(tmp_path / "nowhere.png")
    items, problems = expand_inputs([str(lib)], recursive=False)
    assert [item.src for item in items] == [lib / "a.png"]
    assert [(p.arg, p.warning) for p in problems] == [(str(lib / "gone.png"), False)]
    assert "broken symbolic link" in problems[0].reason and "nowhere.png" in problems[0].reason
    _, named = expand_inputs([str(lib / "gone.png")], recursive=False)  # named directly: the same words
    assert "broken symbolic link" in named[0].reason
