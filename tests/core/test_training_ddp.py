"""Data-parallel training: two ranks under torchrun (gloo, CPU) end a step with the same weights as
one process over the same global batch.

The run uses the GAN stage, so the parity covers the generator's and the discriminator's gradient
averaging, the relativistic average taken over the *global* batch, feature matching, gradient
clipping, Adam and EMA. The VGG19-style discriminator has no BatchNorm, whose per-rank batch
statistics would (legitimately) differ from one process's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realdata import real_image
from texup.training.checkpoint import load_checkpoint
from texup.training.config import config_from_dict
from texup.training.trainer import train

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")

SETTINGS = {
    "stage": "gan",
    "steps": 2,
    "seed": 11,
    "precision": "fp32",
    "device": "cpu",
    "tensorboard": False,
    "eval_every": 0,
    "checkpoint_every": 0,
    "log_every": 1,
    "deterministic": True,
    "generator": {"pretrained": None, "arch": "RRDBNet",
                  "hparams": {"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}},
    "discriminator": {"kind": "vgg19", "hparams": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8]}},
    "data": {"hr_crop": 32, "batch_size": 4, "val_fraction": 0.0, "degradation": "realesrgan"},
    "optim": {"lr_g": 1e-3, "lr_d": 1e-3, "ema_decay": 0.5, "grad_clip": 0.05},
}


@pytest.fixture()
def library(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    root.mkdir()
    Image.fromarray(real_image("gravel.png")[:80, :90, 0]).save(root / "gravel.png")
    Image.fromarray(real_image("coffee.png")[50:150, 100:190]).save(root / "coffee.png")
    Image.fromarray(real_image("brick.png")[:64, :70, 0]).save(root / "brick.png")
    return root


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"g.{k}": v for k, v in ckpt["generator"]["state_dict"].items()}
    out.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    out.update({f"d.{k}": v for k, v in ckpt["discriminator"]["state_dict"].items()})
    return out


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_two_gloo_ranks_match_one_process(library: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(SETTINGS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "texup", "train", "--config", str(cfg_file),
         "--data", str(library), "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks" in proc.stderr  # the CLI on rank 0 reported the process group

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = config_from_dict({**SETTINGS, "data": {**SETTINGS["data"], "root": str(library)},
                                   "out_dir": str(tmp_path / "single")})
        train(single)
    finally:
        torch.set_num_threads(previous)

    ddp_ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    one_ckpt = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    assert ddp_ckpt["step"] == one_ckpt["step"] == 2
    ddp, one = _tensors(ddp_ckpt), _tensors(one_ckpt)
    assert ddp.keys() == one.keys()
    # The relativistic loss does not change when every logit shifts by the same amount, so the
    # discriminator's gradient along such directions (e.g. biases feeding the head through units that
    # are active for every sample) is zero up to rounding, and Adam divides that rounding noise by
    # itself. Those elements (gradient RMS below 1e-6, read from Adam's second moment) carry no signal
    # and are left out; every other element of every network must match.
    from texup.archs.discriminator import build_discriminator

    names = [n for n, _ in build_discriminator("vgg19", SETTINGS["discriminator"]["hparams"]).named_parameters()]
    informative = {}
    for index, name in enumerate(names):
        v = one_ckpt["optim_d"]["state"][index]["exp_avg_sq"]
        informative[f"d.{name}"] = (v / (1 - 0.999**2)).sqrt() > 1e-6
    total = sum(m.numel() for m in informative.values())
    assert sum(int(m.sum()) for m in informative.values()) > 0.98 * total
    for key in one:
        a, b = ddp[key], one[key]
        if key in informative:
            a, b = a[informative[key]], b[informative[key]]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
    # Sanity: the weights did move during the two steps (the comparison is not between untouched inits).
    from texup.archs import build

    torch.manual_seed(SETTINGS["seed"])
    fresh = build("RRDBNet", SETTINGS["generator"]["hparams"]).state_dict()
    changed = [k for k, v in fresh.items() if not torch.equal(v, one[f"g.{k}"])]
    assert len(changed) > len(fresh) // 2
    losses = np.loadtxt(tmp_path / "ddp" / "log.csv", delimiter=",", skiprows=1, usecols=3)
    assert np.isfinite(losses).all()
