"""``texup train --data DIR --out DIR [--pretrained NAME|PATH] [--stage psnr|gan] [--discriminator KIND]
[--steps N] [--resume] [--config FILE]``.

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
import textwrap
from typing import Any

from texup.options import PRECISIONS

#: ``--discriminator`` kinds, one line each (shown by ``texup train --help``).
DISCRIMINATOR_HELP = {
    "vgg128": "ESRGAN's VGG-style discriminator with BatchNorm, one logit; crops of exactly 128 px",
    "vgg256": "the same for crops of exactly 256 px",
    "vgg19": "VGG19 convolutions, FC 4096/4096/1000, one logit; any crop >= 32 px",
    "vgg19-fc4": "the design's VGG19: FC 25088/4096/4096/1000/1000, loss per output node; any crop >= 32 px",
    "unet": "Real-ESRGAN's U-Net with spectral norm, one logit per pixel; crops a multiple of 8 px",
}

#: ``--gan-loss`` choices, one line each.
GAN_LOSS_HELP = {
    "auto": "ragan-per-node for vgg19-fc4, ragan for the other kinds (default)",
    "ragan": "relativistic average GAN on the logits (ESRGAN)",
    "ragan-per-node": "the same, node by node, on the difference of the discriminator's outputs",
}


def _epilog() -> str:
    def table(title: str, rows: dict[str, str]) -> str:
        width = max(map(len, rows))
        return "\n".join([title, *(f"  {name:<{width}}  {text}" for name, text in rows.items())])

    return (
        table("discriminators (--discriminator):", DISCRIMINATOR_HELP)
        + "\n\n"
        + table("adversarial losses (--gan-loss):", GAN_LOSS_HELP)
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` on the ``texup`` parser's ``subparsers``."""
    p = sub.add_parser(
        "train",
        help="fine-tune or train an ESRGAN generator on a folder of textures",
        # Raw formatting keeps the epilog's one-line-per-kind tables; the description is wrapped here.
        description=textwrap.fill(
            "Train an ESRGAN generator on a texture library: stage 'psnr' (L1) or 'gan' (pixel + perceptual + "
            "relativistic GAN, ESRGAN's weights). Writes checkpoint.pt, log.csv, sample grids and "
            "model.safetensors (loadable by `texup upscale --model`) to --out. Multi-GPU / multi-node: "
            "torchrun --nproc-per-node N -m texup train ...",
            width=78,
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", metavar="DIR", help="folder of textures (searched recursively)")
    p.add_argument("--out", metavar="DIR", help="output folder (checkpoints, logs, samples, model)")
    p.add_argument("--config", metavar="FILE", help="settings file (.json or .toml); options given here override it")
    p.add_argument(
        "--pretrained",
        metavar="NAME|PATH",
        help="generator to start from: a known model name or a weights file (default realesrgan-x4plus)",
    )
    p.add_argument("--stage", choices=("psnr", "gan"), help="training stage (default psnr)")
    p.add_argument("--steps", type=int, metavar="N", help="total optimisation steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--batch-size", type=int, metavar="N", help="crops per step, over all ranks")
    p.add_argument("--crop", type=int, metavar="PX", help="high-resolution crop size")
    p.add_argument(
        "--discriminator",
        choices=tuple(DISCRIMINATOR_HELP),
        help="discriminator (gan stage; default vgg128; the kinds are listed below)",
    )
    p.add_argument("--gan-loss", choices=tuple(GAN_LOSS_HELP), help="adversarial loss (gan stage; default auto)")
    p.add_argument("--degradation", choices=("bicubic", "realesrgan"), help="how LR inputs are made")
    p.add_argument(
        "--vgg19",
        metavar="PATH|download",
        help="torchvision VGG19 weights for the perceptual loss, or 'download' to fetch them (verified)",
    )
    p.add_argument("--precision", choices=PRECISIONS, help="mixed precision (default auto)")
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
        "data": "data.root",
        "out": "out_dir",
        "stage": "stage",
        "steps": "steps",
        "batch_size": "data.batch_size",
        "crop": "data.hr_crop",
        "discriminator": "discriminator.kind",
        "degradation": "data.degradation",
        "vgg19": "loss.vgg19",
        "precision": "precision",
        "device": "device",
        "workers": "data.num_workers",
        "seed": "seed",
        "eval_every": "eval_every",
        "checkpoint_every": "checkpoint_every",
        "pretrained": "generator.pretrained",
        "gan_loss": "loss.gan",
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
    bar = tqdm(
        total=cfg.steps,
        unit="step",
        desc=f"training ({cfg.stage})",
        disable=None if is_main else True,
        file=sys.stderr,
        dynamic_ncols=True,
    )
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
            tqdm.write(
                f"texup: step {event.step}: validation PSNR {v.get('psnr', float('nan')):.2f} dB "
                f"(bicubic {v.get('psnr_bicubic', float('nan')):.2f}), SSIM {v.get('ssim', float('nan')):.4f}"
                f" -> {event.path}",
                file=sys.stderr,
            )
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
