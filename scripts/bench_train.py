"""Training speed: steps per second for fp32 and for the automatic precision, in one run.

    python scripts/bench_train.py                       # x4plus-sized RRDBNet, GAN stage, CPU or GPU
    python scripts/bench_train.py --size tiny --stage psnr --steps 20
    python scripts/bench_train.py --device cuda --batch 16 --crop 128 --also bf16 fp16

Each precision runs the trainer's own step functions (``psnr_step`` / ``gan_step`` on a ``TrainState``: forward,
losses, backward, clipping, Adam, EMA not included) on fixed random batches, after warm-up steps,
so the figures measure compute only (no data loading). ``auto`` is resolved the way ``texup train``
resolves it (bf16 on GPUs and on CPUs with native bf16, fp16 on older GPUs, else fp32) and printed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from texup.archs import build
from texup.archs.discriminator import build_discriminator
from texup.devices import pick_device, pick_training_precision
from texup.training.config import OptimConfig, TrainConfig
from texup.training.distributed import DistInfo
from texup.training.losses import FeatureMatchingLoss, RelativisticGANLoss
from texup.training.state import RunContext, TrainState
from texup.training.steps import gan_step, psnr_step

SIZES = {
    "x4plus": {"scale": 4, "num_feat": 64, "num_block": 23, "num_grow_ch": 32},
    "small": {"scale": 4, "num_feat": 32, "num_block": 6, "num_grow_ch": 16},
    "tiny": {"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
}


def bench(precision: str, args: argparse.Namespace, device: torch.device) -> tuple[str, float]:
    amp_dtype, needs_scaler = pick_training_precision(device, precision)
    name = "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")
    torch.manual_seed(0)
    g = build("RRDBNet", SIZES[args.size]).to(device).train()
    d = (
        build_discriminator(args.discriminator, {"num_feat": 64} if args.discriminator != "vgg19" else {})
        .to(device)
        .train()
    )
    if args.discriminator in ("vgg128", "vgg256") and args.crop != d.input_size:
        raise SystemExit(f"--crop must be {d.input_size} for the {args.discriminator} discriminator")

    # the stage's default loss weights, Adam at 1e-4 for both networks, gradient clipping at 10, no EMA
    cfg = TrainConfig(stage=args.stage, optim=OptimConfig(lr_g=1e-4, lr_d=1e-4, ema_decay=0.0))
    run = RunContext(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device), None, amp_dtype, needs_scaler)
    ts = TrainState.build(
        run,
        g,
        d,
        arch="RRDBNet",
        provenance={},
        content=FeatureMatchingLoss(d),
        w_content=cfg.loss.feature_matching_weight,
        gan=RelativisticGANLoss(),
    )
    step = gan_step if args.stage == "gan" else psnr_step
    lr = torch.rand(args.batch, 3, args.crop // 4, args.crop // 4, device=device)
    hr = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    for _ in range(args.warmup):
        step(ts, lr, hr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(ts, lr, hr)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return name, args.steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="x4plus", help="generator size (default x4plus)")
    parser.add_argument("--stage", choices=("psnr", "gan"), default="gan")
    parser.add_argument("--discriminator", choices=("vgg128", "vgg19", "unet"), default="vgg128")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128, help="HR crop (the LR input is crop / 4)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--also", nargs="*", default=[], choices=("bf16", "fp16"), help="extra precisions to time")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; RRDBNet {args.size}, "
        f"{args.stage} stage, {args.discriminator} discriminator, batch {args.batch}, HR crop {args.crop}"
    )
    rows = []
    for precision in ["fp32", "auto", *args.also]:
        name, rate = bench(precision, args, device)
        label = f"auto ({name})" if precision == "auto" else name
        rows.append((label, rate))
        print(f"  {label:<12} {rate:8.3f} steps/s   {rate * args.batch:8.2f} crops/s", flush=True)
    base = rows[0][1]
    for label, rate in rows[1:]:
        print(f"  {label} vs fp32: x{rate / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
