"""The Python API: cheap import, same operations as the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import texup
from realdata import real_image
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
