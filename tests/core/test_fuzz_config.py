"""Hostile training configurations (issue 21 item 6): every setting is checked before anything is built or
loaded, and no model whose weights are not finite is ever exported.

``lr_g = inf`` used to train a model of NaN and export it with exit 0; 1e308 was a traceback; NaN and -1 were
refused by torch only after the data had loaded.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from texup.errors import FileError
from texup.training.config import (
    DISCRIMINATOR_KINDS,
    VGG19_LAYERS,
    TrainConfig,
    config_from_dict,
    load_config,
)

HOSTILE: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1,
    -1.0,
    0,
    10**400,
    2**63,
    True,
    "x" * 100_000,
    [],
    {},
    None,
    [1e308, math.nan],
]

#: Every setting as (section or "", name).
FIELDS = [
    ("", "stage"),
    ("", "steps"),
    ("", "seed"),
    ("", "precision"),
    ("", "device"),
    ("", "out_dir"),
    ("", "eval_every"),
    ("", "checkpoint_every"),
    ("", "log_every"),
    ("data", "root"),
    ("data", "hr_crop"),
    ("data", "batch_size"),
    ("data", "val_fraction"),
    ("data", "val_max_images"),
    ("data", "val_crop"),
    ("data", "tileable"),
    ("data", "degradation"),
    ("data", "num_workers"),
    ("generator", "pretrained"),
    ("generator", "arch"),
    ("generator", "hparams"),
    ("discriminator", "kind"),
    ("discriminator", "hparams"),
    ("loss", "pixel_weight"),
    ("loss", "perceptual_weight"),
    ("loss", "adversarial_weight"),
    ("loss", "feature_matching_weight"),
    ("loss", "perceptual_layer"),
    ("loss", "gan"),
    ("optim", "lr_g"),
    ("optim", "lr_d"),
    ("optim", "betas"),
    ("optim", "weight_decay"),
    ("optim", "milestones"),
    ("optim", "gamma"),
    ("optim", "grad_clip"),
    ("optim", "ema_decay"),
]
#: Settings for which None (null) is a valid value.
NULLABLE = {
    "pretrained",
    "pixel_weight",
    "perceptual_weight",
    "adversarial_weight",
    "lr_g",
    "milestones",
    "grad_clip",
}


def _config(section: str, name: str, value: Any) -> dict[str, Any]:
    return {name: value} if not section else {section: {name: value}}


def _accept_or_one_line(data: dict[str, Any]) -> TrainConfig | str:
    try:
        return config_from_dict(data)
    except ValueError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 600, message[:300]
        return message


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite_numbers(v) for v in value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    return True


@pytest.mark.parametrize(("section", "name"), FIELDS, ids=[f"{s}.{n}".strip(".") for s, n in FIELDS])
def test_every_setting_refuses_non_finite_huge_negative_and_wrong_typed_values(section: str, name: str) -> None:
    for value in HOSTILE:
        result = _accept_or_one_line(_config(section, name, value))
        if isinstance(result, str):
            assert name in result, (value, result)  # the message names the setting
            continue
        # Accepted: only a value that makes sense for the setting.
        got = getattr(getattr(result, section) if section else result, name)
        assert _finite_numbers(got), (name, value)
        if value is None:
            assert name in NULLABLE, name
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert value in (0, -1, -1.0) or abs(value) < 1e300, (name, value)
            assert value >= 0 or name in (), (name, value)


@pytest.mark.parametrize("lr", [math.inf, 1e308, math.nan, -1.0, -1e-9, 2.0])
def test_a_learning_rate_that_cannot_train_is_refused_up_front(lr: float) -> None:
    for key in ("lr_g", "lr_d"):
        with pytest.raises(ValueError, match=f"optim.{key}"):
            config_from_dict({"optim": {key: lr}})


def test_the_cli_refuses_lr_inf_before_reading_any_data(tmp_path: Path, capsys) -> None:
    """The data folder does not even exist: the configuration is the first thing checked (exit 2)."""
    from texup.cli.main import main

    for text in ('{"optim": {"lr_g": Infinity}}', '{"optim": {"lr_g": 1e999}}', '{"optim": {"lr_g": NaN}}'):
        cfg_file = tmp_path / "bad.json"
        cfg_file.write_text(text)
        code = main(
            ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--config", str(cfg_file)]
        )
        err = capsys.readouterr().err
        assert code in (1, 2) and "optim.lr_g" in err and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()
    code = main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--seed", "-1"])
    assert code == 2 and "seed" in capsys.readouterr().err


def test_config_files_nested_deeply_or_of_the_wrong_shape_are_one_line(tmp_path: Path) -> None:
    cases = {
        "deep.json": "[" * 200_000 + "]" * 200_000,
        "deep2.json": '{"generator": {"hparams": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}}",
        "list.json": "[1, 2]",
        "number.json": "3",
        "hugekey.json": json.dumps({"x" * 1_000_000: 1}),
        "deep.toml": "a = " + "[" * 100_000 + "]" * 100_000,
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(FileError) as err:
            load_config(path)
        message = str(err.value)
        assert "\n" not in message and len(message) < len(str(path)) + 700, (name, message[:200])


def test_random_configurations_are_accepted_only_when_every_value_is_sane() -> None:
    """Seeded: 400 configurations with two to five hostile or ordinary values."""
    rng = random.Random(21)
    ordinary = [1, 2, 8, 32, 128, 0.5, 1e-4, 0.9, "auto", "psnr", "gan", "cpu", "vgg19", "conv5_4", [0.9, 0.99], [10]]
    accepted = 0
    for _ in range(400):
        data: dict[str, Any] = {}
        for _ in range(rng.randint(2, 5)):
            section, name = rng.choice(FIELDS)
            value = rng.choice(HOSTILE + ordinary)
            (data.setdefault(section, {}) if section else data)[name] = value
        result = _accept_or_one_line(data)
        if isinstance(result, TrainConfig):
            accepted += 1
            assert _finite_numbers(result.to_dict())
            assert 0 <= result.lr_g <= 1 and 0 <= result.optim.lr_d <= 1 and result.steps >= 0 and result.seed >= 0
    assert 0 < accepted < 400


def test_the_known_names_match_the_networks() -> None:
    from texup.archs.discriminator import DISCRIMINATORS
    from texup.archs.vgg import layer_indices

    assert set(DISCRIMINATORS) == set(DISCRIMINATOR_KINDS)
    assert set(layer_indices()) == VGG19_LAYERS


def test_weights_that_are_not_finite_are_never_exported(tmp_path: Path) -> None:
    """A generator that diverged (here: one that starts with a NaN weight) ends the run with an error; the
    last good checkpoint stays and no model.safetensors is written (it used to be, with exit 0)."""
    import numpy as np
    import torch
    from PIL import Image
    from realdata import real_image

    from texup.archs import build
    from texup.training import train
    from texup.training.config import DataConfig, GeneratorConfig
    from texup.training.trainer import TrainingDiverged
    from texup.weights import save_model

    root = tmp_path / "data"
    root.mkdir()
    for index in range(4):
        Image.fromarray(real_image("gravel.png")[index * 64 : index * 64 + 64, :64, 0]).save(root / f"{index}.png")
    hparams = {"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}
    module = build("RRDBNet", hparams)
    with torch.no_grad():
        module.conv_last.weight[0, 0, 0, 0] = float("nan")
    base = save_model(module, tmp_path / "nan.safetensors")
    cfg = TrainConfig(
        data=DataConfig(root=str(root), hr_crop=32, batch_size=2, val_fraction=0.0),
        out_dir=str(tmp_path / "out"),
        steps=2,
        precision="fp32",
        device="cpu",
        generator=GeneratorConfig(pretrained=str(base)),
        eval_every=0,
        checkpoint_every=0,
        tensorboard=False,
    )
    with pytest.raises(TrainingDiverged, match="not finite"):
        train(cfg)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / "out" / "checkpoint.pt").exists()
    assert np.isnan(module.conv_last.weight.detach().numpy()).any()


def test_a_config_path_that_is_a_fifo_a_folder_huge_or_not_utf8_is_one_line_not_a_hang(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    caught: list[BaseException] = []

    def load() -> None:
        try:
            load_config(fifo)
        except FileError as exc:
            caught.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(10)
    assert caught and "not a regular file" in str(caught[0]), "load_config blocked on a FIFO"
    folder = tmp_path / "dir.json"
    folder.mkdir()
    huge = tmp_path / "huge.json"
    huge.write_text(" " * (2 << 20) + "{}")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'stage = "\xe9"\n')
    for path, words in ((folder, "not a regular file|directory"), (huge, "larger than"), (latin, "not UTF-8")):
        with pytest.raises(FileError, match=words):
            load_config(path)
