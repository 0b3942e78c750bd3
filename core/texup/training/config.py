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
import math
import os
import re
import stat
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


#: The discriminator kinds (texup.archs.discriminator.DISCRIMINATORS; a test compares) and VGG19's layer names
#: (texup.archs.vgg.layer_indices), here so a configuration is checked without importing torch.
DISCRIMINATOR_KINDS = ("vgg128", "vgg256", "vgg19", "vgg19-fc4", "unet")
VGG19_LAYERS = frozenset(
    [f"{kind}{block}_{conv}" for block, convs in enumerate((2, 2, 4, 4, 4), 1) for conv in range(1, convs + 1)
     for kind in ("conv", "relu")]
    + [f"pool{block}" for block in range(1, 6)]
)  # fmt: skip
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")
#: Bounds a setting must be within, beyond which a run is a mistake (a learning rate above 1 diverges at the
#: first step; a loss weight of 1e300 overflows float32) or asks for memory no machine has.
MAX_LR = 1.0
MAX_LOSS_WEIGHT = 1e6
MAX_STEPS = 10**9
MAX_CROP = 4096
MAX_BATCH = 4096
MAX_WORKERS = 256
MAX_HPARAM_INT = 1 << 16
#: A configuration file is a few hundred bytes; a larger one than this is not one.
MAX_CONFIG_BYTES = 1 << 20


def _r(value: Any) -> str:
    """``repr(value)`` for a message, at most 60 characters (a setting can hold a megabyte of text)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"


def _number(value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> bool:
    """Whether ``value`` is a real number (not a bool) within the bounds (finite ones: NaN and inf are never)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    value = float(value)
    if not math.isfinite(value):
        return False
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    return above and below


def _integer(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _hparams_problem(hparams: Any, where: str) -> str | None:
    """A network's hyperparameters: plain values or short lists of them, integers within 0..65536 (a num_feat
    of 10**9 would allocate terabytes), finite numbers; the constructor checks the rest when the network is
    built, before any data is read."""
    if not isinstance(hparams, dict):
        return f"{where} must be a table/object, got {type(hparams).__name__}"
    for key, value in hparams.items():
        if not isinstance(key, str):
            return f"{where}: keys must be names, got {_r(key)}"
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(items) > 64:
            return f"{where}.{key} must have at most 64 items, got {len(items)}"
        for item in items:
            if isinstance(item, bool) or item is None or isinstance(item, str):
                continue
            if isinstance(item, int):
                if not 0 <= item <= MAX_HPARAM_INT:
                    return f"{where}.{key} must be in 0..{MAX_HPARAM_INT}, got {_r(item)}"
            elif isinstance(item, float):
                if not math.isfinite(item):
                    return f"{where}.{key} must be a finite number, got {item}"
            else:
                return f"{where}.{key} must hold numbers, strings or true/false, got {type(item).__name__}"
    return None


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first setting that is out of range.

    Every setting is checked here, before anything is built or loaded: numbers must be finite and within
    bounds (a learning rate of inf or 1e308 used to train a model of NaN and export it with exit 0; NaN and
    -1 were refused by torch only after the data had loaded), names must be ones texup knows.
    """
    d, o, w = cfg.data, cfg.optim, cfg.loss
    weights = (
        ("loss.pixel_weight", w.pixel_weight),
        ("loss.perceptual_weight", w.perceptual_weight),
        ("loss.adversarial_weight", w.adversarial_weight),
        ("loss.feature_matching_weight", w.feature_matching_weight),
    )
    checks: list[tuple[bool, str]] = [
        (cfg.stage in STAGES, f"stage must be one of {STAGES}, got {_r(cfg.stage)}"),
        (cfg.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {_r(cfg.precision)}"),
        (
            isinstance(cfg.device, str) and bool(_DEVICE.fullmatch(cfg.device.strip().lower())),
            f"device must be auto, cpu, cuda, cuda:N or mps, got {_r(cfg.device)}",
        ),
        (_integer(cfg.steps, 0, MAX_STEPS), f"steps must be in 0..{MAX_STEPS}, got {_r(cfg.steps)}"),
        (_integer(cfg.seed, 0, 2**63 - 1), f"seed must be in 0..2**63-1, got {_r(cfg.seed)}"),
        (isinstance(cfg.out_dir, str) and bool(cfg.out_dir), f"out_dir must be a folder, got {_r(cfg.out_dir)}"),
        (isinstance(d.root, str), f"data.root must be a folder, got {_r(d.root)}"),
        (_integer(d.hr_crop, 8, MAX_CROP), f"data.hr_crop must be in 8..{MAX_CROP}, got {_r(d.hr_crop)}"),
        (_integer(d.batch_size, 1, MAX_BATCH), f"data.batch_size must be in 1..{MAX_BATCH}, got {_r(d.batch_size)}"),
        (
            _number(d.val_fraction, 0.0, 1.0, hi_open=True),
            f"data.val_fraction must be in [0, 1), got {_r(d.val_fraction)}",
        ),
        (
            _integer(d.val_max_images, 0, 10**6),
            f"data.val_max_images must be in 0..1000000, got {_r(d.val_max_images)}",
        ),
        (_integer(d.val_crop, 8, 4 * MAX_CROP), f"data.val_crop must be in 8..{4 * MAX_CROP}, got {_r(d.val_crop)}"),
        (d.degradation in DEGRADATIONS, f"data.degradation must be one of {DEGRADATIONS}, got {_r(d.degradation)}"),
        (d.tileable in TILEABLE, f"data.tileable must be one of {TILEABLE}, got {_r(d.tileable)}"),
        (
            _integer(d.num_workers, 0, MAX_WORKERS),
            f"data.num_workers must be in 0..{MAX_WORKERS}, got {_r(d.num_workers)}",
        ),
        (w.gan in GAN_LOSSES, f"loss.gan must be one of {GAN_LOSSES}, got {_r(w.gan)}"),
        (
            w.perceptual_layer in VGG19_LAYERS,
            f"loss.perceptual_layer must be a VGG19 layer (conv1_1 .. conv5_4, relu.., pool..), "
            f"got {_r(w.perceptual_layer)}",
        ),
        *[
            (
                value is None or _number(value, 0.0, MAX_LOSS_WEIGHT),
                f"{name} must be a number in [0, {MAX_LOSS_WEIGHT:g}] or null, got {_r(value)}",
            )
            for name, value in weights
        ],
        (
            o.lr_g is None or _number(o.lr_g, 0.0, MAX_LR),
            f"optim.lr_g must be in [0, {MAX_LR:g}] or null, got {_r(o.lr_g)}",
        ),
        (_number(o.lr_d, 0.0, MAX_LR), f"optim.lr_d must be in [0, {MAX_LR:g}], got {_r(o.lr_d)}"),
        (
            isinstance(o.betas, tuple)
            and len(o.betas) == 2
            and all(_number(b, 0.0, 1.0, hi_open=True) for b in o.betas),
            f"optim.betas must be two numbers in [0, 1), got {_r(o.betas)}",
        ),
        (_number(o.weight_decay, 0.0, 1.0), f"optim.weight_decay must be in [0, 1], got {_r(o.weight_decay)}"),
        (
            o.milestones is None
            or (isinstance(o.milestones, tuple) and all(_integer(m, 1, MAX_STEPS) for m in o.milestones)),
            f"optim.milestones must be steps in 1..{MAX_STEPS} or null, got {_r(o.milestones)}",
        ),
        (_number(o.gamma, 0.0, 1.0, lo_open=True), f"optim.gamma must be in (0, 1], got {_r(o.gamma)}"),
        (_number(o.ema_decay, 0.0, 1.0, hi_open=True), f"optim.ema_decay must be in [0, 1), got {_r(o.ema_decay)}"),
        (
            o.grad_clip is None or _number(o.grad_clip, 0.0, 1e30, lo_open=True),
            f"optim.grad_clip must be a number > 0 or null, got {_r(o.grad_clip)}",
        ),
        (
            all(_integer(v, 0, MAX_STEPS) for v in (cfg.eval_every, cfg.checkpoint_every, cfg.log_every)),
            f"eval_every, checkpoint_every and log_every must be in 0..{MAX_STEPS}",
        ),
        (
            cfg.generator.pretrained is not None or bool(cfg.generator.arch),
            "generator.arch is needed when generator.pretrained is null",
        ),
        (
            cfg.discriminator.kind in DISCRIMINATOR_KINDS,
            f"discriminator.kind must be one of {DISCRIMINATOR_KINDS}, got {_r(cfg.discriminator.kind)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for hparams, where in (
        (cfg.generator.hparams, "generator.hparams"),
        (cfg.discriminator.hparams, "discriminator.hparams"),
    ):
        problem = _hparams_problem(hparams, where)
        if problem:
            raise ValueError(problem)


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
            raise ValueError(f"{where}: expected a number, got {_r(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer of 400 digits
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{where}: expected a finite number, got {_r(value)}")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {_r(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {_r(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {_r(value)}")
        return value
    return value


def _from_dict(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        shown = ", ".join(str(u) if len(str(u)) <= 60 else _r(u) for u in unknown[:5])
        raise ValueError(f"{where}: unknown setting(s) {shown} (known: {', '.join(sorted(names))})")
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
        # O_NONBLOCK: a FIFO given as the file must not block the open; then only a regular file is read.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise FileError(path, "not a regular file")
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise FileError(path, f"cannot read ({exc.strerror or exc})") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise FileError(path, f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a texup training configuration")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(path, f"not UTF-8 text (byte {exc.start})") from None
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
        raise FileError(path, f"invalid {path.suffix[1:].upper()} ({str(exc)[:200]})") from exc
    except RecursionError:  # json's parser recurses once per level: 100,000 nested lists exhaust the stack
        raise FileError(path, f"invalid {path.suffix[1:].upper()} (nested too deeply)") from None
    if not isinstance(data, dict):
        raise FileError(path, f"expected a table/object of settings, got {type(data).__name__}")
    try:
        return config_from_dict(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise FileError(path, str(exc)[:500] if not isinstance(exc, RecursionError) else "nested too deeply") from exc


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
