"""The ESRGAN training loop: ``train(config, progress=..., cancel=...)``.

:func:`train`'s loop (``_train``, one screen) builds the run from small named steps — the process
(determinism, seeds before any network, precision), the networks, the data, :class:`TrainState`
(optimisers, schedules, EMA, scalers, the checkpoint layout), resume, the data stream — then runs
the steps, each a PSNR step (L1 only) or a GAN step (:func:`gan_step`), with logging, evaluation
and checkpoints at fixed intervals, and finally exports the generator (the EMA weights when EMA is
on) as a texup ``.safetensors`` file that ``texup upscale --model`` and the Blender add-on load.

Files written to ``out_dir`` (rank 0 only): ``checkpoint.pt``, ``model.safetensors``, ``log.csv``,
``samples/step_NNNNNN.png`` (rows of bicubic | model | ground truth for held-out images),
``config.json``, and TensorBoard events under ``tb/`` when ``tensorboard`` is importable.

Adversarial losses (``loss.gan``: ``ragan``, ``ragan-per-node``) and which discriminator each suits:
:class:`~texup.training.config.LossConfig` and :mod:`texup.training.losses`. Device and precision:
:mod:`texup.devices` (training's own ``auto`` precision policy, :func:`~texup.devices.pick_training_precision`).

The library never prints: everything it has to say goes to ``progress(event)`` as a
:class:`TrainEvent`. ``cancel()`` is polled once per step; when it returns true the run saves a
checkpoint, exports the model and returns with ``cancelled=True``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from texup._atomic import atomic_path
from texup.archs.spec import ArchModule, get_spec
from texup.devices import pick_training_precision
from texup.training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from texup.training.config import TrainConfig, config_from_dict
from texup.training.data import load_training_data
from texup.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    check_same_on_ranks,
    global_batch_mean,
    global_node_mean,
    setup,
    teardown,
)
from texup.training.evaluation import RunLog, evaluate
from texup.training.losses import (
    FeatureMatchingLoss,
    PerceptualLoss,
    PixelLoss,
    RelativisticGANLoss,
    RelativisticNodeGANLoss,
)
from texup.weights.cache import remove_stale_temp_files


@dataclass(frozen=True)
class TrainEvent:
    """One thing the trainer reports.

    ``kind``: ``"message"`` (``message`` holds one line for the user), ``"step"`` (after every
    step: ``values`` holds this step's losses and learning rate), ``"eval"`` (``values``: ``psnr``,
    ``ssim``, ``psnr_bicubic``; ``path`` the sample grid), ``"checkpoint"`` (``path``), ``"done"``.
    ``step`` counts completed steps out of ``total``.
    """

    kind: str
    step: int
    total: int
    values: dict[str, float] = field(default_factory=dict)
    message: str = ""
    path: str | None = None


ProgressCallback = Callable[[TrainEvent], None]
CancelCallback = Callable[[], bool]


@dataclass
class TrainResult:
    """What a run produced: ``model_path`` (exported generator), ``checkpoint_path``, steps completed,
    whether it was cancelled, the first and last validation metrics, and the files skipped as unusable."""

    out_dir: Path
    model_path: Path | None
    checkpoint_path: Path | None
    steps: int
    cancelled: bool
    initial_metrics: dict[str, float]
    final_metrics: dict[str, float]
    skipped_files: list[tuple[str, str]]


# ----------------------------------------------------------------------------------------------
# small pieces the loop uses
# ----------------------------------------------------------------------------------------------
def _hparams(module: nn.Module) -> dict[str, Any]:
    """A texup network's constructor kwargs: every texup architecture and discriminator keeps them as ``hparams``
    (torch's stubs type module attributes as ``Tensor | Module``)."""
    return dict(cast(dict[str, Any], module.hparams))


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied as they are)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), module.buffers()):
            ema_b.copy_(b)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def optimizer_step(
    loss: torch.Tensor,
    module: nn.Module,
    optim: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip: float | None,
) -> None:
    """Backward, optional unscale + clip, step (through the scaler when fp16)."""
    optim.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optim)
    else:
        loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(module.parameters(), clip)
    if scaler is not None:
        scaler.step(optim)
        scaler.update()
    else:
        optim.step()


def build_gan_loss(cfg: TrainConfig) -> RelativisticGANLoss:
    """The adversarial loss ``cfg.gan_loss`` names, with its batch means taken over all ranks."""
    if cfg.gan_loss == "ragan-per-node":
        return RelativisticNodeGANLoss(global_node_mean)
    return RelativisticGANLoss(global_batch_mean)


# ----------------------------------------------------------------------------------------------
# what a run trains, and its checkpoint layout (written and read in one place)
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """The bare networks, EMA, optimisers, schedules and loss scalers of a run.

    :meth:`state_dict` / :meth:`load_state_dict` are the checkpoint layout (with the step, the config, the
    random-number state, the sampler position and the metrics so far): a resumed run continues bit-identically.
    """

    g: nn.Module
    d: nn.Module | None
    ema: EMA | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: Any
    sched_d: Any
    scaler_g: torch.amp.GradScaler | None
    scaler_d: torch.amp.GradScaler | None

    @classmethod
    def build(
        cls, cfg: TrainConfig, g: nn.Module, d: nn.Module | None, device: torch.device, needs_scaler: bool
    ) -> TrainState:
        optim = cfg.optim
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=optim.betas, weight_decay=optim.weight_decay)
        opt_d = (
            torch.optim.Adam(d.parameters(), lr=optim.lr_d, betas=optim.betas, weight_decay=optim.weight_decay)
            if d is not None
            else None
        )

        def schedule(opt: torch.optim.Optimizer | None) -> Any:
            return (
                None
                if opt is None
                else torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=optim.gamma)
            )

        return cls(
            g=g,
            d=d,
            ema=EMA(g, optim.ema_decay) if optim.ema_decay > 0 else None,
            opt_g=opt_g,
            opt_d=opt_d,
            sched_g=schedule(opt_g),
            sched_d=schedule(opt_d),
            scaler_g=torch.amp.GradScaler(device.type) if needs_scaler else None,
            scaler_d=torch.amp.GradScaler(device.type) if needs_scaler and d is not None else None,
        )

    def after_step(self) -> None:
        """Advance the learning-rate schedules and the EMA once per training step."""
        self.sched_g.step()
        if self.sched_d is not None:
            self.sched_d.step()
        if self.ema is not None:
            self.ema.update(self.g)

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and exported: the EMA generator when EMA is on."""
        return self.ema.module if self.ema is not None else self.g

    def state_dict(self, *, step: int, cfg: TrainConfig, arch: str, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": step,
            "config": cfg.to_dict(),
            "generator": {"arch": arch, "hparams": _hparams(self.g), "state_dict": self.g.state_dict()},
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "discriminator": (
                {"kind": cfg.discriminator.kind, "hparams": _hparams(self.d), "state_dict": self.d.state_dict()}
                if self.d is not None
                else None
            ),
            "optim_g": self.opt_g.state_dict(),
            "optim_d": self.opt_d.state_dict() if self.opt_d else None,
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict() if self.sched_d else None,
            "scaler_g": self.scaler_g.state_dict() if self.scaler_g else None,
            "scaler_d": self.scaler_d.state_dict() if self.scaler_d else None,
            "rng": capture_rng(),
            "sampler": {"step": step, "batch_size": cfg.data.batch_size, "seed": cfg.seed},
            "metrics": metrics,
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Restore everything :meth:`state_dict` wrote (not the step, config, sampler or metrics: the caller's).
        Raises :class:`CheckpointError` naming ``path`` when the checkpoint does not fit these networks."""
        try:
            self.g.load_state_dict(state["generator"]["state_dict"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.module.load_state_dict(state["ema"])
            if self.d is not None:
                assert self.opt_d is not None and self.sched_d is not None
                self.d.load_state_dict(state["discriminator"]["state_dict"])
                self.opt_d.load_state_dict(state["optim_d"])
                self.sched_d.load_state_dict(state["sched_d"])
            self.opt_g.load_state_dict(state["optim_g"])
            self.sched_g.load_state_dict(state["sched_g"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(path, f"does not fit this run's networks ({str(exc).splitlines()[0]})") from exc
        if self.scaler_g is not None and state.get("scaler_g"):
            self.scaler_g.load_state_dict(state["scaler_g"])
        if self.scaler_d is not None and state.get("scaler_d"):
            self.scaler_d.load_state_dict(state["scaler_d"])
        restore_rng(state["rng"])


# ----------------------------------------------------------------------------------------------
# the two kinds of step
# ----------------------------------------------------------------------------------------------
@dataclass
class Nets:
    """Everything a step touches. ``g``/``d`` may be DDP wrappers; ``d_raw`` is the bare discriminator."""

    g: nn.Module
    d: nn.Module | None
    d_raw: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    scaler_g: torch.amp.GradScaler | None
    scaler_d: torch.amp.GradScaler | None
    pixel: nn.Module
    content: nn.Module | None  # perceptual or feature-matching loss
    gan: RelativisticGANLoss | None
    w_pixel: float
    w_content: float
    w_adv: float
    clip: float | None
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]


def psnr_step(n: Nets, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Stage 1: the generator learns from the L1 pixel loss alone."""
    with n.autocast():
        sr = n.g(lr)
        loss = n.w_pixel * n.pixel(sr.float(), hr)
    optimizer_step(loss, n.g, n.opt_g, n.scaler_g, n.clip)
    return {"loss_g": loss.item(), "pixel": loss.item()}


def gan_step(n: Nets, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Stage 2: one generator update, then one discriminator update (ESRGAN, relativistic average GAN).

    The discriminator runs once on the real crop and once on the generated one; ``n.gan`` compares
    the two outputs (one logit each, or ``vgg19-fc4``'s 1,000 nodes each with ``ragan-per-node``).
    Generator update: the discriminator's weights are frozen (``requires_grad`` off) and it is called
    unwrapped, as its weights learn nothing here. Real logits are detached: the generator cannot
    change them. Discriminator update: the fake image is detached, so no gradient reaches the
    generator, and the generator's graph from the first half is not kept alive.
    """
    assert n.d is not None and n.d_raw is not None and n.gan is not None and n.opt_d is not None
    set_requires_grad(n.d_raw, False)
    with n.autocast():
        sr = n.g(lr).float()
        l_pixel = n.w_pixel * n.pixel(sr, hr)
        l_content = n.w_content * n.content(sr, hr) if n.content is not None and n.w_content else sr.new_zeros(())
        real_logits = n.d_raw(hr).detach()
        fake_logits = n.d_raw(sr)
        l_adv = n.w_adv * n.gan.generator(real_logits, fake_logits)
        loss_g = l_pixel + l_content + l_adv
    optimizer_step(loss_g, n.g, n.opt_g, n.scaler_g, n.clip)

    set_requires_grad(n.d_raw, True)
    with n.autocast():
        loss_d = n.gan.discriminator(n.d(hr), n.d(sr.detach()))
    optimizer_step(loss_d, n.d, n.opt_d, n.scaler_d, n.clip)
    return {
        "loss_g": loss_g.item(),
        "pixel": l_pixel.item(),
        "content": l_content.item(),
        "adversarial": l_adv.item(),
        "loss_d": loss_d.item(),
    }


# ----------------------------------------------------------------------------------------------
# set-up helpers
# ----------------------------------------------------------------------------------------------
def build_generator(cfg: TrainConfig, say: Callable[[str], None]) -> tuple[nn.Module, str, dict[str, Any]]:
    """(module in train mode with gradients on, arch, provenance) from the config."""
    if cfg.generator.pretrained is not None:
        from texup.weights.registry import load_pretrained

        loaded = load_pretrained(cfg.generator.pretrained, progress=lambda *a: None)
        say(f"generator: {loaded.arch} x{loaded.scale} from {cfg.generator.pretrained}")
        module, arch = loaded.module, loaded.arch
        provenance: dict[str, Any] = {"base_model": str(cfg.generator.pretrained), **_base_identity(cfg, loaded)}
    else:
        from texup.archs import build

        torch.manual_seed(cfg.seed)
        module, arch = build(cfg.generator.arch, dict(cfg.generator.hparams)), cfg.generator.arch
        say(f"generator: new {arch}({cfg.generator.hparams}) from random weights")
        provenance = {"base_model": None}
    module = module.float().train()
    module.requires_grad_(True)
    return module, arch, provenance


def build_disc(cfg: TrainConfig, say: Callable[[str], None]) -> nn.Module:
    from texup.archs.discriminator import build_discriminator
    from texup.weights.state_dict import read_state_dict, unwrap_state_dict

    torch.manual_seed(cfg.seed + 1)
    disc = build_discriminator(cfg.discriminator.kind, dict(cfg.discriminator.hparams))
    if cfg.discriminator.pretrained:
        from texup.errors import ModelLoadError

        path = Path(cfg.discriminator.pretrained)
        sd = unwrap_state_dict(read_state_dict(path), source=path)
        result = disc.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelLoadError(
                path,
                f"does not fit the {cfg.discriminator.kind} discriminator: missing "
                f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}",
            )
        say(f"discriminator: {cfg.discriminator.kind} from {path}")
    else:
        say(f"discriminator: new {cfg.discriminator.kind}")
    return disc.train()


def build_content_loss(cfg: TrainConfig, disc: nn.Module, say: Callable[[str], None]) -> tuple[nn.Module | None, float]:
    """The perceptual loss on VGG19 conv5_4 when weights are available, else feature matching."""
    from texup.weights.model import load_vgg19_features
    from texup.weights.registry import fetch_vgg19, vgg19_cache_path

    if cfg.perceptual_weight == 0:
        return None, 0.0
    source = cfg.loss.vgg19
    if source == "download":
        path: Path | None = fetch_vgg19()
    elif source is not None:
        path = Path(source)
    else:
        path = vgg19_cache_path() if vgg19_cache_path().is_file() else None
    if path is not None:
        say(f"perceptual loss: VGG19 {cfg.loss.perceptual_layer} from {path}")
        return PerceptualLoss(load_vgg19_features(path, cfg.loss.perceptual_layer)), cfg.perceptual_weight
    say(
        'no VGG19 weights (set loss.vgg19 to a file or to "download"): using discriminator feature '
        "matching instead of the perceptual loss"
    )
    return FeatureMatchingLoss(disc), cfg.loss.feature_matching_weight


def _check_crop(cfg: TrainConfig, scale: int, multiple: int) -> None:
    from texup.archs.discriminator import crop_requirement

    crop = cfg.data.hr_crop
    if crop % (scale * multiple):
        raise ValueError(f"data.hr_crop ({crop}) must be a multiple of scale x input multiple ({scale} x {multiple})")
    if cfg.stage == "gan":
        exact, mult = crop_requirement(cfg.discriminator.kind, dict(cfg.discriminator.hparams))
        if exact is not None and crop != exact:
            raise ValueError(f"the {cfg.discriminator.kind} discriminator needs data.hr_crop = {exact}, got {crop}")
        if crop % mult:
            raise ValueError(
                f"the {cfg.discriminator.kind} discriminator needs data.hr_crop to be a multiple of {mult}"
            )


def _batches(loader: Any, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for lr, hr in loader:
        yield lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train(
    config: TrainConfig, progress: ProgressCallback | None = None, cancel: CancelCallback | None = None
) -> TrainResult:
    """Train (or fine-tune) a generator as ``config`` says; see the module docstring.

    In a ``torchrun`` launch every rank calls this; rank 0 writes the files and receives events.
    Raises ``ValueError`` for settings that cannot work (crop sizes, batch split, no usable images),
    ``FileNotFoundError`` for a missing data folder, ``CheckpointError`` for a checkpoint that
    cannot be resumed, and the loading errors of :mod:`texup.weights`.
    """
    import torch.distributed as dist

    # A process group that exists already (created by the caller) is left alone at the end.
    group_existed = dist.is_available() and dist.is_initialized()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    info = setup(config.device)
    try:
        return _train(config, info, progress, cancel)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        teardown(info, owned=not group_existed)


def _train(
    cfg: TrainConfig, info: DistInfo, progress: ProgressCallback | None, cancel: CancelCallback | None
) -> TrainResult:
    """One rank's run: build, the steps, export (:func:`train` owns the process group around it)."""
    # build: the process (seeds before any network), networks, data, optimisers, resume, the data stream
    run = _Run.start(cfg, info, progress)
    model = _build_networks(run)
    dataset, val_items, skipped = load_training_data(cfg, model.scale, model.multiple, run.out_dir, run.say)
    ts, content, w_content = _build_state(run, model)
    start, metrics = _resume_or_record(run, ts)
    batches, nets = _data_stream(run, ts, content, w_content, dataset, start)
    step_fn = gan_step if cfg.stage == "gan" else psnr_step
    out = _Outputs(run, ts, model.arch, val_items, metrics)

    # the steps: generator (and discriminator), schedules and EMA, log, evaluate, checkpoint, cancel
    log = RunLog(run.out_dir, start if start > 0 else None, cfg.tensorboard, run.say) if info.is_main else None
    step, cancelled = start, False
    try:
        if start == 0 and val_items:
            out.metrics["initial"] = out.evaluate(0)
            if log is not None:
                log.write(0, {"time_s": 0.0, **out.metrics["initial"]})
        t0 = time.perf_counter()
        while step < cfg.steps:
            lr_img, hr_img = next(batches)
            values = step_fn(nets, lr_img, hr_img)  # the generator, then (GAN stage) the discriminator
            ts.after_step()  # learning-rate schedules, EMA
            step += 1

            values["lr_g"] = ts.opt_g.param_groups[0]["lr"]
            run.emit("step", step, values=values)
            last = step == cfg.steps
            if _due(cfg.log_every, step) or last:
                averaged = {k: all_reduce_mean(v, run.device) for k, v in values.items()}
                if log is not None:
                    log.write(step, {"time_s": time.perf_counter() - t0, **averaged})
            if _due(cfg.eval_every, step) or last:
                out.metrics["last"] = out.evaluate(step)
                if log is not None and out.metrics["last"]:
                    log.write(step, {"time_s": time.perf_counter() - t0, **out.metrics["last"]})
            checkpointed = _due(cfg.checkpoint_every, step) or last
            if checkpointed:
                out.checkpoint(step)
            if broadcast_flag(cancel() if (cancel is not None and info.is_main) else False, run.device):
                cancelled = True
                if not checkpointed:
                    out.checkpoint(step)
                run.say(f"cancelled at step {step}; resume with --resume")
                break
    finally:
        if log is not None:
            log.close()  # also when a step raises: the TensorBoard writer's files are complete

    # export the generator (EMA weights when EMA is on); the files and events are rank 0's
    model_path = _export(run, ts, model.provenance, step)
    barrier()
    last_metrics, initial_metrics = out.metrics.get("last") or {}, out.metrics.get("initial") or {}
    run.emit("done", step, values=last_metrics, path=str(model_path) if model_path else None)
    return TrainResult(
        out_dir=run.out_dir,
        model_path=model_path,
        checkpoint_path=run.ckpt_path if run.ckpt_path.exists() else None,
        steps=step,
        cancelled=cancelled,
        initial_metrics=dict(initial_metrics),
        final_metrics=dict(last_metrics),
        skipped_files=skipped,
    )


# ----------------------------------------------------------------------------------------------
# the loop's set-up, in the order _train runs it
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """A run's process context: config, ranks and device, precision, and the event sink (``progress``, rank 0)."""

    cfg: TrainConfig
    info: DistInfo
    progress: ProgressCallback | None
    amp_dtype: torch.dtype | None
    needs_scaler: bool

    @classmethod
    def start(cls, cfg: TrainConfig, info: DistInfo, progress: ProgressCallback | None) -> _Run:
        """Determinism, seeds (before any network is built), precision, and ``out_dir`` cleaned of stale temp files."""
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        amp_dtype, needs_scaler = pick_training_precision(info.device, cfg.precision)
        run = cls(cfg, info, progress, amp_dtype, needs_scaler)
        run.say(
            f"device {info.device}, precision {'fp32' if amp_dtype is None else str(amp_dtype).removeprefix('torch.')}"
            f"{f', {info.world_size} ranks' if info.distributed else ''}"
        )
        if info.is_main:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            for folder in (run.out_dir, *(p for p in run.out_dir.iterdir() if p.is_dir())):
                remove_stale_temp_files(folder)  # left by a run killed mid-write (an hour old or more)
        return run

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def emit(self, kind: str, step: int, **kw: Any) -> None:
        """Send one :class:`TrainEvent` to ``progress`` (on rank 0 only)."""
        if self.info.is_main and self.progress is not None:
            self.progress(TrainEvent(kind=kind, step=step, total=self.cfg.steps, **kw))

    def say(self, message: str) -> None:
        """One line for the user: a ``"message"`` event."""
        self.emit("message", 0, message=message)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision's autocast context (none for fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


@dataclass(frozen=True)
class _Networks:
    """The bare generator and (GAN stage) discriminator, with the generator's arch, provenance, scale and multiple."""

    g: nn.Module
    d: nn.Module | None
    arch: str
    provenance: dict[str, Any]
    scale: int
    multiple: int


def _build_networks(run: _Run) -> _Networks:
    """The generator (new or pretrained) and the GAN stage's discriminator; the crop size checked against both."""
    cfg = run.cfg
    g, arch, provenance = build_generator(cfg, run.say)
    spec, hparams = get_spec(arch), cast(ArchModule, g).hparams
    scale, multiple = spec.scale(hparams), spec.input_multiple(hparams)
    _check_crop(cfg, scale, multiple)
    d = build_disc(cfg, run.say) if cfg.stage == "gan" else None
    return _Networks(g=g, d=d, arch=arch, provenance=provenance, scale=scale, multiple=multiple)


def _build_state(run: _Run, model: _Networks) -> tuple[TrainState, nn.Module | None, float]:
    """Networks on the device, the content loss and its weight, and the optimisers, schedules, EMA and scalers."""
    cfg, device = run.cfg, run.device
    model.g.to(device)
    if model.d is not None:
        model.d.to(device)
    content, w_content = build_content_loss(cfg, model.d, run.say) if model.d is not None else (None, 0.0)
    if content is not None:
        content.to(device)
    if model.d is not None:
        run.say(f"adversarial loss: {cfg.gan_loss}")
    return TrainState.build(cfg, model.g, model.d, device, run.needs_scaler), content, w_content


def _resume_or_record(run: _Run, ts: TrainState) -> tuple[int, dict[str, Any]]:
    """Resume from ``checkpoint.pt`` when asked, else write ``config.json``: the step to start from, metrics so far."""
    start = 0
    metrics: dict[str, Any] = {"initial": {}, "last": {}}
    if run.cfg.resume and run.ckpt_path.is_file():
        start, metrics = _resume(run.cfg, ts, run.ckpt_path, run.say)
    elif run.info.is_main:
        with atomic_path(run.out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(run.cfg.to_dict(), indent=2), encoding="utf-8")

    # Every rank read OUT/checkpoint.pt itself: a node that cannot see it would start at step 0 while the others
    # resume, and the ranks would then wait on each other's collectives until the process group's timeout.
    check_same_on_ranks(start, f"the step to start from (resuming needs {run.ckpt_path} on every node)", run.device)
    return start, metrics


def _resume(
    cfg: TrainConfig, ts: TrainState, ckpt_path: Path, say: Callable[[str], None]
) -> tuple[int, dict[str, Any]]:
    """Load ``ckpt_path`` into ``ts``; return the step to continue from and the metrics so far."""
    state = load_checkpoint(ckpt_path)
    saved_cfg = config_from_dict(state["config"])
    if saved_cfg.stage != cfg.stage:
        raise CheckpointError(ckpt_path, f"was written by a {saved_cfg.stage} stage run, this run is {cfg.stage}")
    ts.load_state_dict(state, ckpt_path)
    start = int(state["step"])
    sampler_state = state.get("sampler") or {}
    if (sampler_state.get("batch_size"), sampler_state.get("seed")) != (cfg.data.batch_size, cfg.seed):
        say(
            f"note: batch size / seed differ from the interrupted run ({sampler_state.get('batch_size')}, "
            f"{sampler_state.get('seed')}); the data from step {start} on differs from an uninterrupted run"
        )
    say(f"resumed from {ckpt_path} at step {start}")
    return start, state.get("metrics") or {"initial": {}, "last": {}}


def _data_stream(
    run: _Run, ts: TrainState, content: nn.Module | None, w_content: float, dataset: Any, start: int
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], Nets]:
    """Data-parallel wrappers, this rank's batches on the device from step ``start`` on, and the :class:`Nets`."""
    from torch.utils.data import DataLoader

    from texup.training.data import StepSampler

    cfg, info, device = run.cfg, run.info, run.device
    g, d = ts.g, ts.d
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        g = nn.parallel.DistributedDataParallel(ts.g, device_ids=ids)
        if ts.d is not None:
            d = nn.parallel.DistributedDataParallel(ts.d, device_ids=ids)
    sampler = StepSampler(
        batch_size=cfg.data.batch_size,
        total_steps=cfg.steps,
        start_step=start,
        rank=info.rank,
        world_size=info.world_size,
    )
    loader = DataLoader(
        dataset,
        batch_size=sampler.per_rank,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    batches = _batches(loader, device)
    nets = Nets(
        g=g,
        d=d,
        d_raw=ts.d,
        opt_g=ts.opt_g,
        opt_d=ts.opt_d,
        scaler_g=ts.scaler_g,
        scaler_d=ts.scaler_d,
        pixel=PixelLoss(),
        content=content,
        gan=build_gan_loss(cfg) if ts.d is not None else None,
        w_pixel=cfg.pixel_weight,
        w_content=w_content,
        w_adv=cfg.adversarial_weight,
        clip=cfg.optim.grad_clip,
        autocast=run.autocast,
    )
    return batches, nets


@dataclass
class _Outputs:
    """The loop's evaluations and checkpoints (rank 0 writes, every rank calls and waits) and the metrics so far."""

    run: _Run
    ts: TrainState
    arch: str
    val_items: list[Any]
    metrics: dict[str, Any]

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics of the evaluated model and a sample grid (an ``"eval"`` event); ``{}`` off rank 0."""
        result: dict[str, float] = {}
        if self.run.info.is_main and self.val_items:
            grid = self.run.out_dir / "samples" / f"step_{step:06d}.png"
            result = evaluate(self.ts.eval_model, self.val_items, self.run.device, self.run.autocast, grid)
            self.run.emit("eval", step, values=result, path=str(grid))
        barrier()
        return result

    def checkpoint(self, step: int) -> None:
        """Write ``checkpoint.pt`` (:meth:`TrainState.state_dict` with the metrics so far); a ``"checkpoint"`` event.

        Weights that are no longer finite stop the run here (every rank: their weights are the same), before the
        last good checkpoint is replaced, so the run can go on from it with a smaller learning rate."""
        run = self.run
        _check_finite(self.ts, step)
        if run.info.is_main:
            state = self.ts.state_dict(step=step, cfg=run.cfg, arch=self.arch, metrics=self.metrics)
            save_checkpoint(run.ckpt_path, state)
            run.emit("checkpoint", step, path=str(run.ckpt_path))
        barrier()


def _base_identity(cfg: TrainConfig, loaded: Any) -> dict[str, Any]:
    """The starting generator's file SHA-256 and stage ("psnr" for a ``--stage psnr`` result or a registry model
    that is another's PSNR partner), so a GAN-stage run can keep it as its result's partner (:func:`_keep_partner`)."""
    from texup.weights.cache import sha256_file
    from texup.weights.registry import KNOWN_MODELS, resolve_model

    ref = str(cfg.generator.pretrained)
    stage = (loaded.metadata.get("provenance") or {}).get("stage")
    if ref in KNOWN_MODELS and not Path(ref).expanduser().is_file():
        stage = "psnr" if any(info.partner == ref for info in KNOWN_MODELS.values()) else "gan"
    return {"base_sha256": sha256_file(resolve_model(ref)), "base_stage": stage if isinstance(stage, str) else None}


#: Where a GAN-stage run keeps its PSNR-stage starting generator, beside ``model.safetensors``.
PARTNER_FILE = "model.psnr.safetensors"


def _keep_partner(run: _Run, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """A GAN-stage run that started from a PSNR-stage generator saves that generator as ``model.psnr.safetensors``
    and returns the ``partner`` entry for the result's provenance (the Detail dial's smooth end,
    :func:`texup.weights.blend.partner_of`); None (with a note) when the starting file changed since the start."""
    cfg = run.cfg
    if cfg.stage != "gan" or provenance.get("base_stage") != "psnr" or cfg.generator.pretrained is None:
        return None
    from texup.weights import save_model
    from texup.weights.cache import sha256_file
    from texup.weights.registry import load_pretrained, resolve_model

    ref = str(cfg.generator.pretrained)
    if sha256_file(resolve_model(ref)) != provenance.get("base_sha256"):
        run.say(f"{ref} changed during training: the result gets no PSNR partner")
        return None
    base = load_pretrained(ref, progress=lambda *a: None)
    path = save_model(base, run.out_dir / PARTNER_FILE)
    return {"file": PARTNER_FILE, "sha256": sha256_file(path), "stage": "psnr", "source": ref}


def _due(every: int, step: int) -> bool:
    """Whether an every-``every``-steps action (``0``: never) falls on ``step``."""
    return every > 0 and step % every == 0


class TrainingDiverged(ValueError):
    """The networks' weights are no longer finite: nothing more is written (the CLI's one line, exit 1)."""


def _check_finite(ts: TrainState, step: int) -> None:
    """TrainingDiverged unless every weight of the generator, its EMA and the discriminator is finite.

    A learning rate too large for the data (or a loss that overflows) turns the weights into NaN within a step;
    a model of NaN used to be exported with exit 0. The gradient scaler skips steps whose gradients overflow, so
    a finite run never gets here.
    """
    nets = [
        ("generator", ts.g),
        ("EMA generator", ts.ema.module if ts.ema is not None else None),
        ("discriminator", ts.d),
    ]
    for what, module in nets:
        if module is None:
            continue
        with torch.no_grad():
            bad = [
                name
                for name, t in module.state_dict().items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())
            ]
        if bad:
            raise TrainingDiverged(
                f"training diverged: after step {step} the {what}'s weights are not finite ({len(bad)} tensors, "
                f"e.g. {bad[0]}); nothing was exported and the last checkpoint was kept (a smaller optim.lr_g "
                "or optim.lr_d, or grad_clip, may help)"
            )


def _export(run: _Run, ts: TrainState, provenance: dict[str, Any], step: int) -> Path | None:
    """Rank 0 writes ``model.safetensors``: the evaluated generator (EMA weights when EMA is on) and its provenance.

    Never a model whose weights are not finite (:func:`_check_finite`, on every rank)."""
    _check_finite(ts, step)
    if not run.info.is_main:
        return None
    from texup.weights import save_model

    cfg = run.cfg
    partner = _keep_partner(run, provenance)
    return save_model(
        ts.eval_model,
        run.out_dir / "model.safetensors",
        provenance={
            **provenance,
            **({"partner": partner} if partner is not None else {}),
            "trained_by": "texup train",
            "stage": cfg.stage,
            "steps": step,
            "ema": ts.ema is not None,
            "data": str(cfg.data.root),
        },
    )


__all__ = [
    "EMA",
    "TrainEvent",
    "TrainResult",
    "build_gan_loss",
    "evaluate",
    "gan_step",
    "global_node_mean",
    "psnr_step",
    "train",
]
