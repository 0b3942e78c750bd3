"""The ESRGAN training loop: ``train(config, progress=..., cancel=...)``.

:func:`train`'s loop (``_train``, one screen) builds the run from small named steps — the process
(:meth:`RunContext.start <texup.training.state.RunContext.start>`: determinism, seeds before any network,
precision), the networks, the data, the :class:`~texup.training.state.TrainState` (optimisers, schedules, EMA,
scalers, losses, the checkpoint layout), resume, the data stream — then runs the steps, each a
:func:`~texup.training.steps.psnr_step` (L1 only) or a :func:`~texup.training.steps.gan_step`, with logging,
evaluation (:mod:`texup.training.evaluation`) and checkpoints at fixed intervals, and finally exports the
generator (the EMA weights when EMA is on) as a texup ``.safetensors`` file that ``texup upscale --model`` and
the Blender add-on load.

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

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from texup._atomic import atomic_path
from texup.archs.spec import ArchModule, get_spec
from texup.training.config import TrainConfig
from texup.training.data import CropDataset, StepSampler, load_training_data
from texup.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    check_same_on_ranks,
    global_node_mean,
    setup,
    teardown,
)
from texup.training.evaluation import RunLog, evaluate, evaluate_run
from texup.training.state import (
    EMA,
    CancelCallback,
    ProgressCallback,
    RunContext,
    TrainEvent,
    TrainingDiverged,
    TrainState,
)
from texup.training.steps import build_content_loss, build_gan_loss, gan_step, psnr_step


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
    # build: the process (seeds before any network), networks, data, the state, resume, the data stream
    run = RunContext.start(cfg, info, progress)
    g, arch, provenance = build_generator(cfg, run.say)
    scale, multiple = _check_crop(cfg, arch, g)
    d = build_disc(cfg, run.say) if cfg.stage == "gan" else None
    dataset, val_items, skipped = load_training_data(cfg, scale, multiple, run.out_dir, run.say)
    ts = _build_state(run, g, d, arch, provenance)
    start = _resume_or_record(ts)
    ts.distribute()  # DDP wrappers on several ranks
    batches = _data_stream(run, dataset, start)
    step_fn = gan_step if cfg.stage == "gan" else psnr_step

    # the steps: generator (and discriminator), schedules and EMA, log, evaluate, checkpoint, cancel
    log = RunLog(run.out_dir, start if start > 0 else None, cfg.tensorboard, run.say) if info.is_main else None
    step, cancelled = start, False
    try:
        if start == 0 and val_items:
            ts.metrics["initial"] = evaluate_run(ts, val_items, 0)
            if log is not None:
                log.write(0, {"time_s": 0.0, **ts.metrics["initial"]})
        t0 = time.perf_counter()
        while step < cfg.steps:
            lr_img, hr_img = next(batches)
            values = step_fn(ts, lr_img, hr_img).values()  # the generator, then (GAN stage) the discriminator
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
                ts.metrics["last"] = evaluate_run(ts, val_items, step)
                if log is not None and ts.metrics["last"]:
                    log.write(step, {"time_s": time.perf_counter() - t0, **ts.metrics["last"]})
            checkpointed = _due(cfg.checkpoint_every, step) or last
            if checkpointed:
                ts.checkpoint(step)
            if broadcast_flag(cancel() if (cancel is not None and info.is_main) else False, run.device):
                cancelled = True
                if not checkpointed:
                    ts.checkpoint(step)
                run.say(f"cancelled at step {step}; resume with --resume")
                break
    finally:
        if log is not None:
            log.close()  # also when a step raises: the TensorBoard writer's files are complete

    # export the generator (EMA weights when EMA is on); the files and events are rank 0's
    model_path = _export(ts, step)
    barrier()
    last_metrics, initial_metrics = ts.metrics.get("last") or {}, ts.metrics.get("initial") or {}
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


def _due(every: int, step: int) -> bool:
    """Whether an every-``every``-steps action (``0``: never) falls on ``step``."""
    return every > 0 and step % every == 0


# ----------------------------------------------------------------------------------------------
# the loop's set-up, in the order _train runs it (RunContext.start: texup.training.state)
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


def _check_crop(cfg: TrainConfig, arch: str, g: nn.Module) -> tuple[int, int]:
    """The generator's scale and input multiple; ValueError unless ``data.hr_crop`` suits them and the discriminator."""
    from texup.archs.discriminator import crop_requirement

    spec, hparams = get_spec(arch), cast(ArchModule, g).hparams
    scale, multiple = spec.scale(hparams), spec.input_multiple(hparams)
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
    return scale, multiple


def _build_state(
    run: RunContext, g: nn.Module, d: nn.Module | None, arch: str, provenance: dict[str, Any]
) -> TrainState:
    """Networks on the device, the content loss and its weight, the adversarial loss, and the state around them."""
    cfg, device = run.cfg, run.device
    g.to(device)
    if d is not None:
        d.to(device)
    content, w_content = build_content_loss(cfg, d, run.say) if d is not None else (None, 0.0)
    if content is not None:
        content.to(device)
    if d is not None:
        run.say(f"adversarial loss: {cfg.gan_loss}")
    gan = build_gan_loss(cfg) if d is not None else None
    return TrainState.build(run, g, d, arch=arch, provenance=provenance, content=content, w_content=w_content, gan=gan)


def _resume_or_record(ts: TrainState) -> int:
    """Resume from ``checkpoint.pt`` when asked (the metrics so far into ``ts.metrics``), else write
    ``config.json``: the step to start from."""
    run = ts.run
    start = 0
    if run.cfg.resume and run.ckpt_path.is_file():
        start = ts.resume(run.ckpt_path)
    elif run.info.is_main:
        with atomic_path(run.out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(run.cfg.to_dict(), indent=2), encoding="utf-8")

    # Every rank read OUT/checkpoint.pt itself: a node that cannot see it would start at step 0 while the others
    # resume, and the ranks would then wait on each other's collectives until the process group's timeout.
    check_same_on_ranks(start, f"the step to start from (resuming needs {run.ckpt_path} on every node)", run.device)
    return start


def _data_stream(run: RunContext, dataset: CropDataset, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches on the device from step ``start`` on."""
    from torch.utils.data import DataLoader

    cfg, info, device = run.cfg, run.info, run.device
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
    return _batches(loader, device)


def _batches(loader: Any, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for lr, hr in loader:
        yield lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# the result: the exported generator and its PSNR partner
# ----------------------------------------------------------------------------------------------
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


def _keep_partner(run: RunContext, provenance: dict[str, Any]) -> dict[str, Any] | None:
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


def _export(ts: TrainState, step: int) -> Path | None:
    """Rank 0 writes ``model.safetensors``: the evaluated generator (EMA weights when EMA is on) and its provenance.

    Never a model whose weights are not finite (:meth:`TrainState.check_finite`, on every rank)."""
    ts.check_finite(step)
    run = ts.run
    if not run.info.is_main:
        return None
    from texup.weights import save_model

    cfg = run.cfg
    partner = _keep_partner(run, ts.provenance)
    return save_model(
        ts.eval_model,
        run.out_dir / "model.safetensors",
        provenance={
            **ts.provenance,
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
    "PARTNER_FILE",
    "CancelCallback",
    "ProgressCallback",
    "TrainEvent",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "build_gan_loss",
    "evaluate",
    "gan_step",
    "global_node_mean",
    "psnr_step",
    "train",
]
