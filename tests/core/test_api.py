"""The Python API: cheap import, same operations as the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from realdata import real_image

import texup
from texup.archs import RRDBNet
from texup.weights import LoadedModel, save_model


def test_import_texup_does_not_import_torch():
    code = "import sys, texup; print(texup.__version__); assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        texup.no_such_thing  # noqa: B018


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(1)
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    return save_model(net, tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_upscale_array_and_file_through_the_api(tiny, tmp_path):
    model = texup.load_model(tiny)
    assert isinstance(model, LoadedModel) and model.scale == 4
    pixels = real_image("coffee.png", crop=(0, 0, 21, 17))
    out = texup.upscale_array(pixels, model=model, scale=3)
    assert out.shape == (63, 51, 3) and out.dtype == np.uint8

    src = tmp_path / "a.png"
    texup.write_image(src, pixels)
    dst = texup.upscale_file(src, tmp_path / "a_x4.png", model=str(tiny))
    assert texup.read_image(dst).pixels.shape == (84, 68, 3)


def _save_random(path, seed):
    torch.manual_seed(seed)
    return save_model(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=4), path)


def test_upscalers_are_reused_rebuilt_when_the_file_changes_and_evicted_least_recent_first(tmp_path, monkeypatch):
    from texup import api

    api.clear_cache()
    monkeypatch.setattr(api, "CACHE_SIZE", 2)
    a, b, c = (_save_random(tmp_path / f"{n}.safetensors", i) for i, n in enumerate("abc"))
    pixels = real_image("coffee.png", crop=(0, 0, 12, 10))
    first = api.get_upscaler(a, engine="torch")
    assert api.get_upscaler(str(a), engine="torch") is first  # the same file however it is named
    before = texup.upscale_array(pixels, model=str(a), engine="torch")

    _save_random(a, 99)  # the weights file rewritten at the same path
    os.utime(a, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a new mtime even on a coarse clock
    fresh = api.get_upscaler(a, engine="torch")
    assert fresh is not first
    assert not np.array_equal(texup.upscale_array(pixels, model=str(a), engine="torch"), before)
    assert len([k for k in api._upscalers if k[1] == str(a.resolve())]) == 1  # the stale one was freed

    api.get_upscaler(b, engine="torch")
    api.get_upscaler(a, engine="torch")  # a is now the most recent
    api.get_upscaler(c, engine="torch")  # over the size: b, the least recent, goes
    assert len(api._upscalers) == 2
    assert api.get_upscaler(a, engine="torch") is fresh
    assert {k[1] for k in api._upscalers} == {str(a.resolve()), str(c.resolve())}
    api.clear_cache()
