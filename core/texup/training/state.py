"""One training run's state: :class:`RunContext` (the process) and :class:`TrainState` (what it trains).

:class:`RunContext` is set up first (determinism, seeds before any network, precision) and carries the config,
the ranks and device, the precision and the event sink. :class:`TrainState` is everything the steps, the
evaluation and the checkpoints touch: the networks (bare, and as the steps call them: DDP wrappers on several
ranks), EMA, optimisers, schedules, loss scalers, the loss modules and the metrics so far. Its
:meth:`~TrainState.state_dict` / :meth:`~TrainState.load_state_dict` are the checkpoint layout, written and read
in this one place.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

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
from texup.training.distributed import DistInfo, barrier
from texup.training.losses import PixelLoss, RelativisticGANLoss
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


@dataclass(frozen=True)
class RunContext:
    """A run's process context: config, ranks and device, precision, and the event sink (``progress``, rank 0)."""

    cfg: TrainConfig
    info: DistInfo
    progress: ProgressCallback | None
    amp_dtype: torch.dtype | None
    needs_scaler: bool

    @classmethod
    def start(cls, cfg: TrainConfig, info: DistInfo, progress: ProgressCallback | None) -> RunContext:
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


class TrainingDiverged(ValueError):
    """The networks' weights are no longer finite: nothing more is written (the CLI's one line, exit 1)."""


@dataclass
class TrainState:
    """One run's state: its context, the networks, EMA, optimisers, schedules, loss scalers, losses and metrics.

    ``g`` / ``d`` are the bare generator and (GAN stage) discriminator; ``g_train`` / ``d_train`` are what the
    steps call: the same modules, or their DDP wrappers once :meth:`distribute` ran on several ranks. ``content``
    is the perceptual or feature-matching loss (weight ``w_content``), ``gan`` the adversarial loss (GAN stage).
    ``metrics`` holds the first and the last evaluation (``"initial"``, ``"last"``) and travels in the checkpoint.
    """

    run: RunContext
    arch: str
    provenance: dict[str, Any]
    g: nn.Module
    d: nn.Module | None
    ema: EMA | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: Any
    sched_d: Any
    scaler_g: torch.amp.GradScaler | None
    scaler_d: torch.amp.GradScaler | None
    pixel: nn.Module
    content: nn.Module | None
    w_content: float
    gan: RelativisticGANLoss | None
    g_train: nn.Module
    d_train: nn.Module | None
    metrics: dict[str, Any] = field(default_factory=lambda: {"initial": {}, "last": {}})

    @classmethod
    def build(
        cls,
        run: RunContext,
        g: nn.Module,
        d: nn.Module | None,
        *,
        arch: str,
        provenance: dict[str, Any],
        content: nn.Module | None,
        w_content: float,
        gan: RelativisticGANLoss | None,
    ) -> TrainState:
        """Optimisers, schedules, EMA and scalers for ``g`` and ``d`` (already on the run's device)."""
        cfg, device, optim = run.cfg, run.device, run.cfg.optim
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
            run=run,
            arch=arch,
            provenance=provenance,
            g=g,
            d=d,
            ema=EMA(g, optim.ema_decay) if optim.ema_decay > 0 else None,
            opt_g=opt_g,
            opt_d=opt_d,
            sched_g=schedule(opt_g),
            sched_d=schedule(opt_d),
            scaler_g=torch.amp.GradScaler(device.type) if run.needs_scaler else None,
            scaler_d=torch.amp.GradScaler(device.type) if run.needs_scaler and d is not None else None,
            pixel=PixelLoss(),
            content=content,
            w_content=w_content,
            gan=gan,
            g_train=g,
            d_train=d,
        )

    def distribute(self) -> None:
        """On several ranks, the steps call the networks through DDP wrappers (after resuming: the wrappers
        broadcast rank 0's weights)."""
        if self.run.info.distributed:
            device = self.run.device
            ids = [device.index] if device.type == "cuda" else None
            self.g_train = nn.parallel.DistributedDataParallel(self.g, device_ids=ids)
            if self.d is not None:
                self.d_train = nn.parallel.DistributedDataParallel(self.d, device_ids=ids)

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

    # -- the checkpoint layout ------------------------------------------------------------------
    def state_dict(self, step: int) -> dict[str, Any]:
        """The checkpoint: everything below, the step, the config, the random-number state, the sampler position
        and the metrics so far; a resumed run continues bit-identically."""
        cfg = self.run.cfg
        return {
            "step": step,
            "config": cfg.to_dict(),
            "generator": {"arch": self.arch, "hparams": _hparams(self.g), "state_dict": self.g.state_dict()},
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
            "metrics": self.metrics,
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

    def resume(self, ckpt_path: Path) -> int:
        """Load the checkpoint ``ckpt_path`` (written by a run of the same stage) with the metrics so far; return
        the step to continue from."""
        cfg, say = self.run.cfg, self.run.say
        state = load_checkpoint(ckpt_path)
        saved_cfg = config_from_dict(state["config"])
        if saved_cfg.stage != cfg.stage:
            raise CheckpointError(ckpt_path, f"was written by a {saved_cfg.stage} stage run, this run is {cfg.stage}")
        self.load_state_dict(state, ckpt_path)
        start = int(state["step"])
        sampler_state = state.get("sampler") or {}
        if (sampler_state.get("batch_size"), sampler_state.get("seed")) != (cfg.data.batch_size, cfg.seed):
            say(
                f"note: batch size / seed differ from the interrupted run ({sampler_state.get('batch_size')}, "
                f"{sampler_state.get('seed')}); the data from step {start} on differs from an uninterrupted run"
            )
        say(f"resumed from {ckpt_path} at step {start}")
        self.metrics = state.get("metrics") or {"initial": {}, "last": {}}
        return start

    def checkpoint(self, step: int) -> None:
        """Write ``checkpoint.pt`` (rank 0; every rank calls and waits); a ``"checkpoint"`` event.

        Weights that are no longer finite stop the run here (every rank: their weights are the same), before the
        last good checkpoint is replaced, so the run can go on from it with a smaller learning rate."""
        run = self.run
        self.check_finite(step)
        if run.info.is_main:
            save_checkpoint(run.ckpt_path, self.state_dict(step))
            run.emit("checkpoint", step, path=str(run.ckpt_path))
        barrier()

    def check_finite(self, step: int) -> None:
        """TrainingDiverged unless every weight of the generator, its EMA and the discriminator is finite.

        A learning rate too large for the data (or a loss that overflows) turns the weights into NaN within a
        step; a model of NaN used to be exported with exit 0. The gradient scaler skips steps whose gradients
        overflow, so a finite run never gets here.
        """
        nets = [
            ("generator", self.g),
            ("EMA generator", self.ema.module if self.ema is not None else None),
            ("discriminator", self.d),
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


__all__ = ["EMA", "CancelCallback", "ProgressCallback", "RunContext", "TrainEvent", "TrainState", "TrainingDiverged"]
