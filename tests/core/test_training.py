"""Trainer: data pipeline, degradations, config, both stages learning, exact resume, export, CLI.

Tiny networks on small crops of real textures (scikit-image's samples) keep every run to seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from realdata import real_image

from texup.training.checkpoint import load_checkpoint
from texup.training.config import (
    DataConfig,
    DiscriminatorConfig,
    GeneratorConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)
from texup.training.data import (
    CropDataset,
    StepSampler,
    load_textures,
    scan_textures,
    split_files,
)
from texup.training.degradations import bicubic_downscale, realesrgan_degrade
from texup.training.trainer import TrainEvent, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY_G = {"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}
TINY_D = {
    "vgg19": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8]},
    "vgg19-fc4": {"channels": [4, 4, 8, 8, 8], "fc": [16, 16, 8, 12]},
    "unet": {"num_feat": 4},
    "vgg128": {"num_feat": 4},
}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A small texture library: 8-bit gray, RGB, RGBA, 16-bit, odd sizes, nested folders, a bad file."""
    root = tmp_path_factory.mktemp("library")
    (root / "stone" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(real_image("gravel.png")[:97, :131, 0]).save(root / "gravel.png")
    Image.fromarray(real_image("brick.png")[40:150, 10:121, 0]).save(root / "stone" / "brick.png")
    rgba = np.concatenate([real_image("coffee.png")[100:190, 200:303], np.full((90, 103, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(root / "stone" / "deep" / "coffee.png")
    Image.fromarray(real_image("grass.png")[:80, :80, 0]).save(root / "grass.jpg", quality=95)
    from texup.imageio import write_image

    sixteen = real_image("astronaut.png")[:96, :96].astype(np.uint16) * 256 + 77  # not on the 8-bit grid
    write_image(root / "astronaut16.png", sixteen)
    Image.fromarray(real_image("chelsea.png")[:70, :90]).save(root / "chelsea.tga")
    linear = (real_image("brick.png")[200:264, 300:370].astype(np.float32) / 255) ** 2.2
    write_image(root / "stone" / "brick_linear.exr", linear.astype(np.float16))
    Image.fromarray(real_image("gravel.png")[200:360, 100:276, 0]).save(root / "stone" / "gravel_big.png")
    write_image(root / "stone" / "grass16.tif", real_image("grass.png")[:72, :75].astype(np.uint16) * 250)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(real_image("gravel.png")[:64, :64, 0]).save(root / ".hidden" / "skip.png")
    return root


def tiny_config(root: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        data=DataConfig(root=str(root), hr_crop=32, batch_size=4, val_fraction=0.25, val_crop=48, val_max_images=2),
        out_dir=str(out),
        stage="psnr",
        steps=4,
        precision="fp32",
        device="cpu",
        seed=3,
        generator=GeneratorConfig(pretrained=None, arch="RRDBNet", hparams=TINY_G),
        discriminator=DiscriminatorConfig(kind="vgg19", hparams=TINY_D["vgg19"]),
        eval_every=0,
        checkpoint_every=0,
        log_every=1,
        tensorboard=False,
    )
    base.update(changes)
    return TrainConfig(**base)


# -- data ---------------------------------------------------------------------------------------
def test_scan_finds_every_readable_format_recursively(library: Path) -> None:
    names = [p.relative_to(library).as_posix() for p in scan_textures(library)]
    assert names == sorted(names)
    assert {
        "gravel.png",
        "stone/brick.png",
        "stone/deep/coffee.png",
        "grass.jpg",
        "astronaut16.png",
        "chelsea.tga",
        "broken.png",
        "stone/brick_linear.exr",
        "stone/grass16.tif",
        "stone/gravel_big.png",
    } == set(names)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_textures(library / "nowhere")


def test_split_is_stable_and_disjoint(library: Path) -> None:
    files = scan_textures(library)
    train_a, val_a = split_files(files, library, 0.3, seed=1)
    train_b, val_b = split_files(list(reversed(files)), library, 0.3, seed=1)
    assert sorted(val_a) == sorted(val_b) and val_a
    assert not set(train_a) & set(val_a) and set(train_a) | set(val_a) == set(files)
    assert split_files(files, library, 0.0)[1] == []


def test_bad_and_small_files_reported_once_and_skipped(library: Path) -> None:
    problems: list[tuple[Path, str]] = []
    textures = load_textures(
        scan_textures(library), min_size=66, tileable="off", on_problem=lambda p, r: problems.append((p, r))
    )
    reported = {p.name: r for p, r in problems}
    assert len(problems) == len(reported) == 2
    assert "broken.png" in reported and "66x66" in reported["brick_linear.exr"]
    kinds = {t.path.name: t.pixels for t in textures}
    assert all(px.shape[2] == 3 for px in kinds.values())  # gray expanded, alpha dropped
    assert kinds["astronaut16.png"].dtype == np.uint16 and kinds["gravel.png"].dtype == np.uint8
    assert kinds["grass16.tif"].dtype == np.uint16


def test_linear_float_textures_are_encoded_to_srgb(library: Path) -> None:
    (tex,) = load_textures([library / "stone" / "brick_linear.exr"], min_size=32, tileable="off")
    assert tex.linear and tex.pixels.dtype == np.float16
    hr = CropDataset([tex], crop=64, scale=2, flips=False, rot90=False)[0][1]
    srgb = real_image("brick.png")[200:264, 300:370].astype(np.float32) / 255
    # The crop is one of the 64x64 windows of the 64x70 source; sRGB encoding undoes the 2.2 power closely.
    best = min(np.abs(hr[0].numpy() - srgb[:, x : x + 64, 0]).mean() for x in range(7))
    assert best < 0.02


def test_tileable_small_texture_is_kept_and_wraps(tmp_path: Path) -> None:
    tile = real_image("gravel.png")[:24, :24, 0]
    seamless = np.tile(tile, (2, 2))[12:36, 12:36]  # a 24x24 crop of a periodic image is seamless
    Image.fromarray(np.ascontiguousarray(seamless)).save(tmp_path / "tile.png")
    textures = load_textures([tmp_path / "tile.png"], min_size=32, tileable="on")
    assert len(textures) == 1 and textures[0].tileable
    ds = CropDataset(textures, crop=32, scale=2, flips=False, rot90=False)
    lr, hr = ds[5]
    assert hr.shape == (3, 32, 32) and lr.shape == (3, 16, 16)
    # Wrap-around: the 32-px crop repeats the 24-px tile, so rows 24 apart are equal.
    assert torch.equal(hr[:, :8], hr[:, 24:32])


def test_crops_are_deterministic_per_index_and_in_range(library: Path) -> None:
    textures = load_textures(scan_textures(library), min_size=32, tileable="off")
    ds = CropDataset(textures, crop=32, scale=2, degradation="realesrgan", seed=7)
    lr1, hr1 = ds[12]
    lr2, hr2 = ds[12]
    assert torch.equal(lr1, lr2) and torch.equal(hr1, hr2)
    lr3, hr3 = ds[13]
    assert not torch.equal(hr1, hr3)
    for t in (lr1, hr1, lr3, hr3):
        assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    assert lr1.shape == (3, 16, 16) and hr1.shape == (3, 32, 32)
    # 16-bit sources keep their precision (not quantised to 8 bits).
    six = [t for t in textures if t.path.name == "astronaut16.png"]
    hr16 = CropDataset(six, crop=32, scale=2, flips=False, rot90=False)[0][1]
    assert not torch.allclose(hr16 * 255, (hr16 * 255).round(), atol=1e-3)


def test_step_sampler_splits_the_global_batch_and_resumes() -> None:
    full = list(StepSampler(batch_size=4, total_steps=3))
    assert full == list(range(12))
    r0 = list(StepSampler(batch_size=4, total_steps=3, rank=0, world_size=2))
    r1 = list(StepSampler(batch_size=4, total_steps=3, rank=1, world_size=2))
    assert r0 == [0, 1, 4, 5, 8, 9] and r1 == [2, 3, 6, 7, 10, 11]
    assert list(StepSampler(batch_size=4, total_steps=3, start_step=2)) == [8, 9, 10, 11]
    with pytest.raises(ValueError, match="multiple"):
        StepSampler(batch_size=3, total_steps=1, world_size=2)


def test_degradations() -> None:
    hr = torch.from_numpy(real_image("coffee.png")[:64, :48].astype(np.float32) / 255).permute(2, 0, 1).contiguous()
    lr = bicubic_downscale(hr, 4)
    assert lr.shape == (3, 16, 12)
    assert abs(lr.mean().item() - hr.mean().item()) < 0.01
    a = realesrgan_degrade(hr, 4, np.random.default_rng(5))
    b = realesrgan_degrade(hr, 4, np.random.default_rng(5))
    c = realesrgan_degrade(hr, 4, np.random.default_rng(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (3, 16, 12)
    assert torch.equal(a, (a * 255).round() / 255)  # 8-bit levels, like a decoded JPEG
    assert (a - lr).abs().mean() > 0.005  # it does degrade beyond plain bicubic
    with pytest.raises(ValueError, match="multiples"):
        bicubic_downscale(hr[:, :63], 4)


# -- config -------------------------------------------------------------------------------------
def test_config_files_and_stage_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('stage = "gan"\nsteps = 800\n[data]\nroot = "tex"\nhr_crop = 128\n[optim]\nbetas = [0.9, 0.99]\n')
    cfg = load_config(toml)
    assert cfg.stage == "gan" and cfg.data.root == "tex" and cfg.optim.betas == (0.9, 0.99)
    assert (cfg.pixel_weight, cfg.perceptual_weight, cfg.adversarial_weight, cfg.lr_g) == (1e-2, 1.0, 5e-3, 1e-4)
    assert cfg.milestones == (100, 200, 400, 600)
    psnr = dataclasses.replace(cfg, stage="psnr")
    assert (psnr.pixel_weight, psnr.adversarial_weight, psnr.lr_g) == (1.0, 0.0, 2e-4)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": {"root": "x", "hr_crops": 64}}))
    with pytest.raises(Exception, match="hr_crops") as info:
        load_config(bad)
    assert "bad.json" in str(info.value)
    with pytest.raises(ValueError, match="stage"):
        config_from_dict({"stage": "wgan"})
    with pytest.raises(ValueError, match="integer"):
        config_from_dict({"steps": "ten"})


def test_gan_loss_setting_defaults_to_per_node_for_vgg19_fc4() -> None:
    assert TrainConfig().gan_loss == "ragan"
    fc4 = config_from_dict({"stage": "gan", "discriminator": {"kind": "vgg19-fc4"}})
    assert fc4.loss.gan == "auto" and fc4.gan_loss == "ragan-per-node"
    assert config_from_dict({"discriminator": {"kind": "vgg19-fc4"}, "loss": {"gan": "ragan"}}).gan_loss == "ragan"
    unet = config_from_dict({"discriminator": {"kind": "unet"}, "loss": {"gan": "ragan-per-node"}})
    assert unet.gan_loss == "ragan-per-node"
    with pytest.raises(ValueError, match="loss.gan"):
        config_from_dict({"loss": {"gan": "wgan"}})


# -- training -----------------------------------------------------------------------------------
def _fixed_batch(library: Path, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    textures = load_textures(scan_textures(library), min_size=32, tileable="off")
    ds = CropDataset(textures, crop=32, scale=2, seed=99)
    return torch.stack([ds[i][0] for i in range(n)]), torch.stack([ds[i][1] for i in range(n)])


def _fixed_batch_l1(model: torch.nn.Module, library: Path) -> float:
    lr, hr = _fixed_batch(library)
    with torch.no_grad():
        return torch.nn.functional.l1_loss(model.eval()(lr), hr).item()


def _initial_generator(cfg: TrainConfig) -> torch.nn.Module:
    from texup.archs import build

    torch.manual_seed(cfg.seed)
    return build("RRDBNet", TINY_G)


def test_psnr_stage_learns_and_exports_a_loadable_model(library: Path, tmp_path: Path) -> None:
    from texup.weights import load_model

    cfg = tiny_config(
        library,
        tmp_path / "run",
        steps=25,
        eval_every=25,
        checkpoint_every=25,
        optim=OptimConfig(lr_g=2e-3, ema_decay=0.0),
    )
    events: list[TrainEvent] = []
    result = train(cfg, progress=events.append)
    before = _fixed_batch_l1(_initial_generator(cfg), library)
    model = load_model(result.model_path)
    after = _fixed_batch_l1(model.module, library)
    assert after < 0.8 * before, (before, after)
    assert model.arch == "RRDBNet" and model.scale == 2 and model.metadata["provenance"]["stage"] == "psnr"
    assert result.final_metrics["psnr"] > result.initial_metrics["psnr"]
    kinds = [e.kind for e in events]
    assert kinds.count("step") == 25 and kinds[-1] == "done" and "eval" in kinds and "checkpoint" in kinds
    assert any("broken.png" in e.message for e in events if e.kind == "message")
    assert sum("broken.png" in e.message for e in events) == 1
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) >= 27
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_000000.png", "step_000025.png"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 25


@pytest.mark.parametrize("kind", ["vgg19", "vgg19-fc4", "unet", "vgg128"])
def test_gan_stage_learns(library: Path, tmp_path: Path, kind: str) -> None:
    data = DataConfig(
        root=str(library),
        hr_crop=128 if kind == "vgg128" else 32,
        batch_size=4,
        val_fraction=0.25,
        val_crop=48,
        val_max_images=2,
    )
    cfg = tiny_config(
        library,
        tmp_path / kind,
        stage="gan",
        steps=16,
        data=data,
        discriminator=DiscriminatorConfig(kind=kind, hparams=TINY_D[kind]),
        optim=OptimConfig(lr_g=2e-3, lr_d=1e-3, ema_decay=0.0),
    )
    steps: list[dict[str, float]] = []
    messages: list[str] = []
    result = train(cfg, progress=lambda e: steps.append(e.values) if e.kind == "step" else messages.append(e.message))
    assert any("feature matching" in m for m in messages)  # no VGG19 weights in the test environment
    from texup.weights import load_model

    before = _fixed_batch_l1(_initial_generator(cfg), library)
    after = _fixed_batch_l1(load_model(result.model_path).module, library)
    assert after < before, (before, after)
    assert all(np.isfinite(list(s.values())).all() for s in steps)
    assert {"loss_g", "loss_d", "pixel", "content", "adversarial"} <= set(steps[0])
    # The discriminator learns to tell real from fake: its loss drops below chance (log 2).
    assert np.mean([s["loss_d"] for s in steps[-4:]]) < np.log(2)


def test_vgg19_fc4_run_fools_a_fixed_discriminator_and_reloads(library: Path, tmp_path: Path) -> None:
    """20 GAN steps against a frozen vgg19-fc4 lower the generator's per-node adversarial loss.

    The discriminator is first taught to tell real crops from the untrained generator's output (a
    random one barely reacts to its input), saved, and loaded by the run as
    ``discriminator.pretrained`` with ``lr_d = 0``, so it stays fixed while the generator learns.
    """
    from safetensors.torch import save_file

    from texup.archs.discriminator import build_discriminator
    from texup.training.losses import RelativisticNodeGANLoss
    from texup.weights import load_model

    # Adversarial loss alone (no pixel or content term), so what lowers it is the adversarial gradient.
    only_adv = dataclasses.replace(TrainConfig().loss, pixel_weight=0.0, perceptual_weight=0.0, adversarial_weight=1.0)
    cfg = tiny_config(
        library,
        tmp_path / "run",
        stage="gan",
        steps=20,
        checkpoint_every=20,
        loss=only_adv,
        discriminator=DiscriminatorConfig(
            kind="vgg19-fc4", hparams=TINY_D["vgg19-fc4"], pretrained=str(tmp_path / "d.safetensors")
        ),
        optim=OptimConfig(lr_g=2e-3, lr_d=0.0, ema_decay=0.0),
    )
    lr, hr = _fixed_batch(library)
    gan = RelativisticNodeGANLoss()
    start = _initial_generator(cfg).eval()
    with torch.no_grad():
        fake = start(lr)
    torch.manual_seed(0)
    disc = build_discriminator("vgg19-fc4", TINY_D["vgg19-fc4"])
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3)
    for _ in range(30):
        opt.zero_grad()
        gan.discriminator(disc(hr), disc(fake)).backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in disc.state_dict().items()}, cfg.discriminator.pretrained)

    messages: list[str] = []
    steps: list[dict[str, float]] = []
    result = train(cfg, progress=lambda e: steps.append(e.values) if e.kind == "step" else messages.append(e.message))
    assert len(steps) == 20 and all(np.isfinite(s["adversarial"]) for s in steps)
    assert any("adversarial loss: ragan-per-node" in m for m in messages)
    assert any(f"vgg19-fc4 from {cfg.discriminator.pretrained}" in m for m in messages)

    # The discriminator reloads from the checkpoint's kind + hparams, unchanged by the run.
    saved = load_checkpoint(result.checkpoint_path)["discriminator"]
    assert saved["kind"] == "vgg19-fc4" and saved["hparams"]["fc"] == [16, 16, 8, 12]
    fixed = build_discriminator(saved["kind"], saved["hparams"])
    fixed.load_state_dict(saved["state_dict"])
    for key, value in disc.state_dict().items():
        torch.testing.assert_close(fixed.state_dict()[key], value, rtol=0, atol=0, msg=key)

    @torch.no_grad()
    def adversarial(generator: torch.nn.Module) -> float:
        real, fake = fixed(hr), fixed(generator.eval()(lr).float())
        assert real.shape == fake.shape == (8, 12)
        return gan.generator(real, fake).item()

    exported = load_model(result.model_path)
    before, after = adversarial(start), adversarial(exported.module)
    assert after < 0.8 * before, (before, after)
    assert exported.arch == "RRDBNet" and exported.metadata["provenance"]["stage"] == "gan"


def test_gan_stage_uses_vgg19_perceptual_loss_from_a_file(library: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from texup.archs.vgg import VGG19Features

    torch.manual_seed(0)
    vgg_file = tmp_path / "vgg19.safetensors"
    save_file({k: torch.randn_like(v) * 0.05 for k, v in VGG19Features("conv2_2").state_dict().items()}, str(vgg_file))
    cfg = tiny_config(
        library,
        tmp_path / "run",
        stage="gan",
        steps=2,
        loss=dataclasses.replace(TrainConfig().loss, vgg19=str(vgg_file), perceptual_layer="conv2_2"),
    )
    messages: list[str] = []
    train(cfg, progress=lambda e: messages.append(e.message))
    assert any("VGG19 conv2_2" in m for m in messages) and not any("feature matching" in m for m in messages)


def test_pretrained_discriminator_is_loaded_or_refused(library: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from texup.archs.discriminator import build_discriminator
    from texup.errors import ModelLoadError

    torch.manual_seed(5)
    disc = build_discriminator("unet", TINY_D["unet"])
    good = tmp_path / "d.pth"
    torch.save({"params": {f"module.{k}": v for k, v in disc.state_dict().items()}}, good)
    cfg = tiny_config(
        library,
        tmp_path / "run",
        stage="gan",
        steps=1,
        checkpoint_every=1,
        optim=OptimConfig(lr_d=0.0, ema_decay=0.0),
        discriminator=DiscriminatorConfig(kind="unet", hparams=TINY_D["unet"], pretrained=str(good)),
    )
    messages: list[str] = []
    train(cfg, progress=lambda e: messages.append(e.message))
    assert any(str(good) in m for m in messages)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["discriminator"]["state_dict"]
    torch.testing.assert_close(saved["conv0.weight"], disc.state_dict()["conv0.weight"])  # lr_d = 0: unchanged
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {k: v.contiguous() for k, v in build_discriminator("vgg19", TINY_D["vgg19"]).state_dict().items()}, str(wrong)
    )
    bad = dataclasses.replace(
        cfg,
        out_dir=str(tmp_path / "bad"),
        discriminator=DiscriminatorConfig(kind="unet", hparams=TINY_D["unet"], pretrained=str(wrong)),
    )
    with pytest.raises(ModelLoadError, match="wrong.safetensors"):
        train(bad)


def test_vgg19_download_uses_the_published_url_and_hash(monkeypatch, tmp_path: Path) -> None:
    import texup.weights.download as download_module
    from texup.weights import registry as vgg

    calls = []

    def fake_download(url, dest, *, sha256, progress=None, timeout=60, max_bytes=None):
        calls.append((url, sha256))
        Path(dest).write_bytes(b"x")
        return Path(dest)

    monkeypatch.setenv("TEXUP_HOME", str(tmp_path))
    monkeypatch.setattr(download_module, "download", fake_download)
    path = vgg.fetch_vgg19()
    assert calls == [
        (
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
        )
    ]
    assert path.name == "vgg19-dcbb9e9d.pth" and path.is_relative_to(tmp_path)
    assert vgg.fetch_vgg19() == path and len(calls) == 1  # cached: no second download


class _Crash(Exception):
    pass


def _weights(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"g.{k}": v for k, v in ckpt["generator"]["state_dict"].items()}
    out.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    if ckpt["discriminator"] is not None:
        out.update({f"d.{k}": v for k, v in ckpt["discriminator"]["state_dict"].items()})
    for name in ("optim_g", "optim_d"):
        if ckpt[name] is not None:
            for pid, st in ckpt[name]["state"].items():
                out.update({f"{name}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize(("stage", "kind"), [("gan", "unet"), ("psnr", None)])
def test_killed_and_resumed_run_ends_with_the_same_weights(library: Path, tmp_path: Path, stage: str, kind) -> None:
    common = dict(
        stage=stage,
        steps=6,
        checkpoint_every=2,
        deterministic=True,
        data=DataConfig(
            root=str(library),
            hr_crop=32,
            batch_size=4,
            val_fraction=0.25,
            val_crop=32,
            val_max_images=1,
            degradation="realesrgan",
        ),
        optim=OptimConfig(lr_g=1e-3, lr_d=1e-3, ema_decay=0.9, milestones=(3,)),
    )
    if kind:
        common["discriminator"] = DiscriminatorConfig(kind=kind, hparams=TINY_D[kind])
    whole = train(tiny_config(library, tmp_path / "whole", **common))

    def crash_after_step_5(event: TrainEvent) -> None:
        if event.kind == "step" and event.step == 5:
            raise _Crash  # like a kill: step 5 is lost, the checkpoint of step 4 survives

    with pytest.raises(_Crash):
        train(tiny_config(library, tmp_path / "split", **common), progress=crash_after_step_5)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 4
    resumed_events: list[TrainEvent] = []
    resumed = train(tiny_config(library, tmp_path / "split", resume=True, **common), progress=resumed_events.append)
    assert resumed.steps == whole.steps == 6
    assert [e.step for e in resumed_events if e.kind == "step"] == [5, 6]

    a = _weights(load_checkpoint(tmp_path / "whole" / "checkpoint.pt"))
    b = _weights(load_checkpoint(tmp_path / "split" / "checkpoint.pt"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    log_steps = [int(r.split(",")[0]) for r in (tmp_path / "split" / "log.csv").read_text().splitlines()[1:]]
    assert log_steps == sorted(log_steps) and log_steps.count(5) == 1  # the lost step-5 row was dropped


def test_cancel_stops_with_checkpoint_and_model(library: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    result = train(tiny_config(library, tmp_path / "run", steps=50), cancel=cancel)
    assert result.cancelled and result.steps == 2 and result.model_path.is_file()
    assert load_checkpoint(result.checkpoint_path)["step"] == 2


def test_events_and_log_rows_follow_the_step_schedule(library: Path, tmp_path: Path) -> None:
    """Set-up messages first, then per step: step, eval, checkpoint at their intervals and on the last step; a cancel
    checkpoints once, says so, and ends with ``done``. log.csv: a loss row every ``log_every`` steps, an eval row per
    evaluation."""
    events: list[TrainEvent] = []
    cfg = tiny_config(library, tmp_path / "run", steps=5, log_every=2, eval_every=2, checkpoint_every=3)
    result = train(cfg, progress=events.append)
    messages = [e.message for e in events if e.kind == "message"]
    assert messages[0] == "device cpu, precision fp32" and messages[1].startswith("generator: new RRDBNet")
    assert messages[-1].startswith("data: 7 training and 2 held-out images")
    assert all(e.kind == "message" for e in events[: len(messages)])
    schedule = [(e.kind, e.step) for e in events[len(messages) :]]
    assert schedule == [
        ("eval", 0), ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("checkpoint", 3), ("step", 4),
        ("eval", 4), ("step", 5), ("eval", 5), ("checkpoint", 5), ("done", 5),
    ]  # fmt: skip
    assert all(e.total == 5 for e in events) and events[-1].values == result.final_metrics
    assert events[-1].path == str(result.model_path) and result.checkpoint_path == tmp_path / "run" / "checkpoint.pt"
    rows = [r.split(",") for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert [(int(r[0]), bool(r[3]), bool(r[8])) for r in rows] == [
        (0, False, True), (2, True, False), (2, False, True), (4, True, False), (4, False, True),
        (5, True, False), (5, False, True),
    ]  # fmt: skip

    cancelled: list[TrainEvent] = []
    polls = iter([False, True])
    result = train(
        tiny_config(library, tmp_path / "cancel", steps=50, checkpoint_every=2),
        progress=cancelled.append,
        cancel=lambda: next(polls),
    )
    tail = [(e.kind, e.step, e.message) for e in cancelled[-5:]]
    assert tail == [
        ("step", 1, ""), ("step", 2, ""), ("checkpoint", 2, ""),
        ("message", 0, "cancelled at step 2; resume with --resume"), ("done", 2, ""),
    ]  # fmt: skip
    assert result.cancelled and result.steps == 2 and load_checkpoint(result.checkpoint_path)["step"] == 2


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch) -> None:
    from texup.training import checkpoint

    path = checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1, "w": torch.ones(3)})

    def torn_write(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = checkpoint.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(checkpoint.CheckpointError, match="junk.pt"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt")


def test_invalid_setups_fail_clearly(library: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs data.hr_crop = 128"):
        train(tiny_config(library, tmp_path / "a", stage="gan", discriminator=DiscriminatorConfig(kind="vgg128")))
    with pytest.raises(ValueError, match="multiple"):
        train(tiny_config(library, tmp_path / "b", data=DataConfig(root=str(library), hr_crop=33)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no usable training images"):
        train(tiny_config(empty, tmp_path / "c"))
    with pytest.raises(ValueError, match="fp16"):
        train(tiny_config(library, tmp_path / "d", precision="fp16"))


def test_bf16_autocast_on_cpu_runs(library: Path, tmp_path: Path) -> None:
    result = train(tiny_config(library, tmp_path / "run", stage="gan", steps=2, precision="bf16"))
    from texup.weights import load_model

    module = load_model(result.model_path).module
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.parameters())


# -- CLI ----------------------------------------------------------------------------------------
def _cli_config(tmp_path: Path, **extra: Any) -> Path:
    """A tiny CPU training config file for ``texup train --config`` (``extra``: more top-level sections)."""
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(
        json.dumps(
            {
                "generator": {"pretrained": None, "arch": "RRDBNet", "hparams": TINY_G},
                **extra,
                "data": {"hr_crop": 32, "batch_size": 2, "val_fraction": 0.25, "val_crop": 32},
                "precision": "fp32",
                "device": "cpu",
                "tensorboard": False,
                "eval_every": 0,
                "checkpoint_every": 0,
            }
        )
    )
    return cfg_file


def _cli_train(library: Path, out: Path, cfg_file: Path, steps: int, *options: str) -> int:
    """``texup train --data LIBRARY --out OUT --config CFG_FILE --steps STEPS OPTIONS...``; its exit code."""
    from texup.cli.main import main

    return main(
        ["train", "--data", str(library), "--out", str(out), "--config", str(cfg_file), "--steps", str(steps), *options]
    )


def test_cli_train_with_config_file_and_resume(library: Path, tmp_path: Path, capsys) -> None:
    from texup.cli.main import main

    cfg_file = _cli_config(tmp_path)
    out = tmp_path / "out"
    code = _cli_train(library, out, cfg_file, 2)
    assert code == 0
    printed = capsys.readouterr()
    assert printed.out.strip().endswith("model.safetensors") and "broken.png" in printed.err
    code = _cli_train(library, out, cfg_file, 3, "--resume")
    assert code == 0 and "resumed" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    # --pretrained PATH starts from any loadable generator file.
    code = _cli_train(library, tmp_path / "out2", cfg_file, 1, "--pretrained", str(out / "model.safetensors"))
    assert code == 0 and "from " + str(out / "model.safetensors") in capsys.readouterr().err
    # The exported model upscales through the normal CLI.
    Image.fromarray(real_image("coffee.png")[:21, :17]).save(tmp_path / "small.png")
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "small.png"),
                "-o",
                str(tmp_path / "up"),
                "--model",
                str(out / "model.safetensors"),
            ]
        )
        == 0
    )
    (up,) = list((tmp_path / "up").glob("*.png"))
    assert Image.open(up).size == (34, 42)
    # Errors are one line naming the problem.
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "missing" in capsys.readouterr().err


def test_cli_train_gan_with_vgg19_fc4(library: Path, tmp_path: Path, capsys) -> None:
    cfg_file = _cli_config(tmp_path, discriminator={"hparams": TINY_D["vgg19-fc4"]})
    out = tmp_path / "out"
    code = _cli_train(library, out, cfg_file, 2, "--stage", "gan", "--discriminator", "vgg19-fc4")
    assert code == 0
    assert "adversarial loss: ragan-per-node" in capsys.readouterr().err
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["discriminator"]["kind"] == "vgg19-fc4" and saved["config"]["loss"]["gan"] == "auto"
    assert saved["discriminator"]["state_dict"]["head.weight"].shape == (12, 8)
    code = _cli_train(
        library, tmp_path / "out2", cfg_file, 1, "--stage", "gan", "--discriminator", "vgg19-fc4", "--gan-loss", "ragan"
    )
    assert code == 0 and "adversarial loss: ragan\n" in capsys.readouterr().err


def test_cli_train_help_names_each_discriminator_on_one_line(capsys) -> None:
    from texup.archs.discriminator import DISCRIMINATORS
    from texup.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index("discriminators (--discriminator):") + 1 :]
    named = [line.split()[0] for line in table[: len(DISCRIMINATORS)]]
    assert named == list(DISCRIMINATORS)
    assert all(len(line.split()) > 3 for line in table[: len(DISCRIMINATORS)])
    assert any(line.split()[:1] == ["ragan-per-node"] for line in lines)


def test_a_decoder_crash_skips_that_file_and_training_data_goes_on(library: Path, monkeypatch) -> None:
    # A fuzzed TIFF made tifffile raise TypeError, which aborted `texup train`; now it is that file's problem.
    from texup.imageio import _tiff

    def crash(*_args, **_kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(_tiff, "decode", crash)
    problems: list[tuple[Path, str]] = []
    textures = load_textures(
        scan_textures(library), min_size=32, tileable="off", on_problem=lambda p, r: problems.append((p, r))
    )
    reported = {p.name: r for p, r in problems}
    assert "TypeError" in reported["grass16.tif"] and "broken.png" in reported
    assert "grass16.tif" not in {t.path.name for t in textures} and len(textures) >= 5
