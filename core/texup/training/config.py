"""Training configuration: frozen dataclasses, read from JSON / TOML files or built in code.

Every setting has one home and a documented default; a file may set any subset, and an unknown
key is an error (a typo must not silently fall back to a default). The stage (``"psnr"`` or
``"gan"``) chooses ESRGAN's defaults for the settings left at ``None``:

=================  ======================  =========================================
setting            psnr stage              gan stage
=================  ======================  =========================================
pixel weight       1.0                     1e-2 (eta)
perceptual weight  0                       1.0
adversarial        0                       5e-3 (lambda)
generator lr       2e-4                    1e-4
decay milestones   0.2, 0.4, 0.6, 0.8      0.125, 0.25, 0.5, 0.75 (of the steps)
=================  ======================  =========================================

Adam uses beta1 = 0.9, beta2 = 0.999 (ESRGAN); learning rates halve at each milestone.

A file looks like (TOML; JSON has the same structure)::

    stage = "gan"
    steps = 400
    [data]
    root = "textures/"
    hr_crop = 128
    [discriminator]
    kind = "vgg128"
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from texup.options import PRECISIONS

STAGES = ("psnr", "gan")

DEGRADATIONS = ("bicubic", "realesrgan")
TILEABLE = ("auto", "on", "off")
GAN_LOSSES = ("auto", "ragan", "ragan-per-node")


@dataclass(frozen=True)
class DataConfig:
    """Where the textures are and how training pairs are made.

    Attributes:
        root: folder searched recursively for images of every format texup reads.
        hr_crop: side of the square high-resolution crops (a multiple of the generator's scale; the
            ``vgg128``/``vgg256`` discriminators need exactly 128 / 256).
        batch_size: crops per step over all ranks (each of N ranks takes batch_size / N).
        val_fraction: share of the files held out for validation (chosen by a hash of their path).
        val_max_images: at most this many held-out files are evaluated.
        val_crop: side of the centred HR crop evaluated per held-out file (smaller images: whole image).
        tileable: ``"auto"`` detects seamless textures and crops them with wrap-around; ``"on"``/``"off"`` force it.
        degradation: ``"bicubic"`` downscaling, or ``"realesrgan"`` (blur, resize, noise, JPEG; seeded).
        flips: random horizontal/vertical flips; rot90: random 90-degree rotations.
        num_workers: DataLoader worker processes (0: load in the training process).
        cache_images: keep decoded images in memory.
    """

    root: str = ""
    hr_crop: int = 128
    batch_size: int = 4
    val_fraction: float = 0.1
    val_max_images: int = 8
    val_crop: int = 256
    tileable: str = "auto"
    degradation: str = "bicubic"
    flips: bool = True
    rot90: bool = True
    num_workers: int = 0
    cache_images: bool = True


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator to train.

    Attributes:
        pretrained: a registry name or a weights file to start from (default x4plus), or ``None`` to
            start from random weights of ``arch(**hparams)``.
        arch / hparams: used only when ``pretrained`` is ``None``.
    """

    pretrained: str | None = "realesrgan-x4plus"
    arch: str = "RRDBNet"
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The discriminator (gan stage only): ``kind`` in ``vgg128``, ``vgg256``, ``vgg19``, ``vgg19-fc4``, ``unet``.

    ``hparams`` override the kind's constructor defaults; ``pretrained`` is an optional
    ``.safetensors``/``.pth`` state dict to start from (keys as texup's discriminator, or wrapped
    in ``params``/``state_dict``).
    """

    kind: str = "vgg128"
    hparams: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (``None``: the stage's ESRGAN default) and where VGG19 comes from.

    ``vgg19``: a torchvision-format VGG19 weights file, ``"download"`` to fetch torchvision's file
    (verified by SHA-256) into the cache, or ``None`` to use the cached file when present. When no
    VGG19 weights are available the gan stage says so once and uses discriminator feature matching
    (weighted ``feature_matching_weight``) instead of the perceptual loss.

    ``gan``: the adversarial loss. ``"ragan"`` is ESRGAN's relativistic average GAN on the
    discriminator's logits (one batch mean over everything); ``"ragan-per-node"`` makes the same
    comparison separately for each output node (the loss on the difference of ``vgg19-fc4``'s 1,000
    outputs); ``"auto"`` picks ``ragan-per-node`` for ``vgg19-fc4`` and ``ragan`` for the other kinds.
    """

    pixel_weight: float | None = None
    perceptual_weight: float | None = None
    adversarial_weight: float | None = None
    feature_matching_weight: float = 1.0
    perceptual_layer: str = "conv5_4"
    vgg19: str | None = None
    gan: str = "auto"


@dataclass(frozen=True)
class OptimConfig:
    """Optimisers and schedule.

    Attributes:
        lr_g: generator learning rate (``None``: stage default); lr_d: discriminator's.
        betas: Adam's (beta1, beta2); weight_decay: Adam's L2 term.
        milestones: steps at which learning rates are multiplied by ``gamma``; ``None``: the stage's
            default fractions of ``steps``.
        grad_clip: maximum total gradient norm per network (``None``: no clipping).
        ema_decay: decay of the exponential moving average of generator weights (``0``: no EMA).
    """

    lr_g: float | None = None
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.5
    grad_clip: float | None = 10.0
    ema_decay: float = 0.999


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``out_dir`` receives checkpoints, logs, sample grids and the exported model.

    Attributes:
        stage: ``"psnr"`` (L1 only) or ``"gan"`` (pixel + perceptual + relativistic adversarial).
        steps: total optimisation steps (a resumed run continues up to this number).
        seed: seeds weights of new networks, crops, augmentations and degradations.
        precision: ``"auto"`` (bf16 on GPUs and on CPUs with native bf16, fp16 with a gradient scaler
            on CUDA GPUs without native bf16, else fp32), or forced ``"fp32"``/``"bf16"``/``"fp16"``
            (:func:`texup.devices.pick_training_precision`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (this rank's GPU), ``"cuda:N"``, ``"mps"``; one this machine
            lacks is an error (:func:`texup.devices.pick_device`).
        eval_every / checkpoint_every / log_every: intervals in steps (``0``: only at the end).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        tensorboard: also write TensorBoard events when the ``tensorboard`` package is importable.
        deterministic: ask torch for deterministic kernels (slower; used by the exact-resume tests).
    """

    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "texup-train"
    stage: str = "psnr"
    steps: int = 1000
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    resume: bool = False
    tensorboard: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        validate(self)

    # -- stage defaults -------------------------------------------------------------------------
    @property
    def pixel_weight(self) -> float:
        w = self.loss.pixel_weight
        return float(w) if w is not None else (1.0 if self.stage == "psnr" else 1e-2)

    @property
    def perceptual_weight(self) -> float:
        w = self.loss.perceptual_weight
        return float(w) if w is not None else (0.0 if self.stage == "psnr" else 1.0)

    @property
    def adversarial_weight(self) -> float:
        w = self.loss.adversarial_weight
        return float(w) if w is not None else (0.0 if self.stage == "psnr" else 5e-3)

    @property
    def gan_loss(self) -> str:
        """``loss.gan`` with ``"auto"`` resolved: ``ragan-per-node`` for ``vgg19-fc4``, else ``ragan``."""
        if self.loss.gan != "auto":
            return self.loss.gan
        return "ragan-per-node" if self.discriminator.kind == "vgg19-fc4" else "ragan"

    @property
    def lr_g(self) -> float:
        lr = self.optim.lr_g
        return float(lr) if lr is not None else (2e-4 if self.stage == "psnr" else 1e-4)

    @property
    def milestones(self) -> tuple[int, ...]:
        if self.optim.milestones is not None:
            return tuple(int(m) for m in self.optim.milestones)
        fractions = (0.2, 0.4, 0.6, 0.8) if self.stage == "psnr" else (0.125, 0.25, 0.5, 0.75)
        return tuple(max(1, round(f * self.steps)) for f in fractions)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists); :func:`config_from_dict` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first setting that is out of range."""
    checks: list[tuple[bool, str]] = [
        (cfg.stage in STAGES, f"stage must be one of {STAGES}, got {cfg.stage!r}"),
        (cfg.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {cfg.precision!r}"),
        (cfg.steps >= 0, f"steps must be >= 0, got {cfg.steps}"),
        (cfg.data.hr_crop >= 8, f"data.hr_crop must be >= 8, got {cfg.data.hr_crop}"),
        (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
        (0.0 <= cfg.data.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}"),
        (
            cfg.data.degradation in DEGRADATIONS,
            f"data.degradation must be one of {DEGRADATIONS}, got {cfg.data.degradation!r}",
        ),
        (cfg.data.tileable in TILEABLE, f"data.tileable must be one of {TILEABLE}, got {cfg.data.tileable!r}"),
        (cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}"),
        (cfg.loss.gan in GAN_LOSSES, f"loss.gan must be one of {GAN_LOSSES}, got {cfg.loss.gan!r}"),
        (0.0 <= cfg.optim.ema_decay < 1.0, f"optim.ema_decay must be in [0, 1), got {cfg.optim.ema_decay}"),
        (
            cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0,
            f"optim.grad_clip must be > 0 or null, got {cfg.optim.grad_clip}",
        ),
        (
            min(cfg.eval_every, cfg.checkpoint_every, cfg.log_every) >= 0,
            "eval_every, checkpoint_every and log_every must be >= 0",
        ),
        (
            cfg.generator.pretrained is not None or bool(cfg.generator.arch),
            "generator.arch is needed when generator.pretrained is null",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


# -- reading ------------------------------------------------------------------------------------
def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table/object, got {type(value).__name__}")
        return _from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, where) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table/object, got {type(value).__name__}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested dicts; unknown keys and wrong types raise ``ValueError``."""
    return _from_dict(TrainConfig, data, "")


def load_config(path: str | Path) -> TrainConfig:
    """Read a ``.json`` or ``.toml`` file into a :class:`TrainConfig`.

    Raises:
        FileError: missing/unreadable file, bad syntax, or an invalid setting (the message names it).
    """
    from texup.errors import FileError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileError(path, f"cannot read ({exc.strerror or exc})") from exc
    if path.suffix.lower() == ".toml":
        try:
            import tomllib  # Python 3.11+
        except ImportError:  # Python 3.10: the same parser, as the `tomli` dependency
            import tomli as tomllib
        loads = tomllib.loads
    elif path.suffix.lower() == ".json":
        loads = json.loads
    else:
        raise FileError(path, "configuration files must end in .json or .toml")
    try:
        data = loads(text)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise FileError(path, f"invalid {path.suffix[1:].upper()} ({exc})") from exc
    try:
        return config_from_dict(data)
    except (ValueError, TypeError) as exc:
        raise FileError(path, str(exc)) from exc


def with_overrides(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with top-level fields or dotted nested fields (``"data.root"``) replaced."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            top[key] = value
    for section, values in nested.items():
        top[section] = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **top)


__all__ = [
    "DataConfig",
    "DiscriminatorConfig",
    "GeneratorConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "validate",
    "with_overrides",
]
