"""``texup train --data DIR --out DIR [--pretrained NAME|PATH] [--stage psnr|gan] [--steps N] [--resume] [--config FILE]``.

Settings come from, in increasing priority: the defaults of :class:`texup.training.TrainConfig`, the
``--config`` file (JSON or TOML), then the options given on the command line. Several GPUs or
machines: ``torchrun --nproc-per-node N [--nnodes M ...] -m texup train ...`` (rank 0 draws the
progress bar and writes the files).

Exit codes: 0 finished, 1 failed (one line on stderr: ``texup: error: <reason>``), 2 usage error,
130 interrupted (a checkpoint is written; ``--resume`` continues).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` on the ``texup`` parser's ``subparsers``."""
    p = sub.add_parser(
        "train",
        help="fine-tune or train an ESRGAN generator on a folder of textures",
        description="Train an ESRGAN generator on a texture library: stage 'psnr' (L1) or 'gan' (pixel + "
        "perceptual + relativistic GAN, ESRGAN's weights). Writes checkpoint.pt, log.csv, sample grids and "
        "model.safetensors (loadable by `texup upscale --model`) to --out. Multi-GPU / multi-node: "
        "torchrun --nproc-per-node N -m texup train ...",
    )
    p.add_argument("--data", metavar="DIR", help="folder of textures (searched recursively)")
    p.add_argument("--out", metavar="DIR", help="output folder (checkpoints, logs, samples, model)")
    p.add_argument("--config", metavar="FILE", help="settings file (.json or .toml); options given here override it")
    p.add_argument("--pretrained", metavar="NAME|PATH",
                   help="generator to start from: a known model name or a weights file (default realesrgan-x4plus)")
    p.add_argument("--stage", choices=("psnr", "gan"), help="training stage (default psnr)")
    p.add_argument("--steps", type=int, metavar="N", help="total optimisation steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--batch-size", type=int, metavar="N", help="crops per step, over all ranks")
    p.add_argument("--crop", type=int, metavar="PX", help="high-resolution crop size")
    p.add_argument("--discriminator", choices=("vgg128", "vgg256", "vgg19", "unet"), help="discriminator (gan stage)")
    p.add_argument("--degradation", choices=("bicubic", "realesrgan"), help="how LR inputs are made")
    p.add_argument("--vgg19", metavar="PATH|download",
                   help="torchvision VGG19 weights for the perceptual loss, or 'download' to fetch them (verified)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="mixed precision (default auto)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--workers", type=int, metavar="N", help="data loading worker processes")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--eval-every", type=int, metavar="N", help="validate every N steps")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="write a checkpoint every N steps")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` for ``args`` (file settings overridden by command-line options)."""
    from texup.training.config import TrainConfig, load_config, with_overrides

    cfg = load_config(args.config) if args.config else TrainConfig()
    changes: dict[str, Any] = {}
    mapping = {
        "data": "data.root", "out": "out_dir", "stage": "stage", "steps": "steps", "batch_size": "data.batch_size",
        "crop": "data.hr_crop", "discriminator": "discriminator.kind", "degradation": "data.degradation",
        "vgg19": "loss.vgg19", "precision": "precision", "device": "device", "workers": "data.num_workers",
        "seed": "seed", "eval_every": "eval_every", "checkpoint_every": "checkpoint_every", "pretrained": "generator.pretrained",
    }
    for attr, key in mapping.items():
        value = getattr(args, attr)
        if value is not None:
            changes[key] = value
    if args.resume:
        changes["resume"] = True
    if changes:
        cfg = with_overrides(cfg, **changes)
    if not cfg.data.root:
        raise ValueError("no data folder: give --data DIR (or data.root in the config file)")
    return cfg


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from texup.errors import TexupError

    try:
        cfg = build_config(args)
    except (ValueError, TypeError, TexupError) as exc:
        print(f"texup train: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, TexupError) else 1

    from texup.training import train

    is_main = os.environ.get("RANK", "0") == "0"
    bar = tqdm(total=cfg.steps, unit="step", desc=f"training ({cfg.stage})", disable=None if is_main else True,
               file=sys.stderr, dynamic_ncols=True)
    interrupted = {"flag": False}

    def on_event(event: Any) -> None:
        if event.kind == "message":
            tqdm.write(f"texup: {event.message}", file=sys.stderr)
        elif event.kind == "step":
            bar.n = event.step
            shown = {k: f"{v:.4g}" for k, v in event.values.items() if k in ("loss_g", "loss_d", "lr_g")}
            bar.set_postfix(shown, refresh=False)
            bar.refresh()
        elif event.kind == "eval":
            v = event.values
            tqdm.write(f"texup: step {event.step}: validation PSNR {v.get('psnr', float('nan')):.2f} dB "
                       f"(bicubic {v.get('psnr_bicubic', float('nan')):.2f}), SSIM {v.get('ssim', float('nan')):.4f}"
                       f" -> {event.path}", file=sys.stderr)
        elif event.kind == "done" and event.path:
            bar.close()
            print(event.path)

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: stop after the current step with a checkpoint; second: stop at once.
        if interrupted["flag"]:
            raise KeyboardInterrupt
        interrupted["flag"] = True
        tqdm.write("texup: stopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = train(cfg, progress=on_event, cancel=lambda: interrupted["flag"])
    except KeyboardInterrupt:
        bar.close()
        print("texup: interrupted; the last checkpoint is kept (run again with --resume)", file=sys.stderr)
        return 130
    except (TexupError, ValueError, FileNotFoundError, NotADirectoryError, OSError) as exc:
        bar.close()
        print(f"texup: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    if result.cancelled:
        print(f"texup: stopped at step {result.steps}; continue with --resume", file=sys.stderr)
        return 130
    if result.skipped_files:
        print(f"texup: {len(result.skipped_files)} file(s) skipped (see messages above)", file=sys.stderr)
    return 0
