"""What a run measures and records: held-out PSNR/SSIM with a sample grid, and ``log.csv`` (+ TensorBoard).

:func:`evaluate` scores a generator (and bicubic upscaling) on held-out items; :func:`evaluate_run` is the
loop's evaluation (rank 0 scores and sends an ``"eval"`` event, every rank waits); :class:`RunLog` writes the
log rows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from texup._atomic import atomic_path
from texup.training.distributed import barrier
from texup.training.state import TrainState


@torch.no_grad()
def evaluate(
    generator: nn.Module,
    items: list[Any],
    device: torch.device,
    autocast: Callable[[], Any],
    grid_path: Path | None,
    max_rows: int = 4,
) -> dict[str, float]:
    """Mean PSNR/SSIM of ``generator`` (and of bicubic upscaling) on the held-out items; write the grid."""
    import torch.nn.functional as F

    from texup.training.metrics import psnr, sample_grid, ssim

    was_training = generator.training
    generator.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_bicubic": []}
    rows: list[tuple[torch.Tensor, ...]] = []
    for item in items:
        lr, hr = item.lr.to(device), item.hr.to(device)
        with autocast():
            sr = generator(lr).float().clamp(0, 1)
        bicubic = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        scores["psnr"].append(psnr(sr, hr))
        scores["ssim"].append(ssim(sr, hr) if min(hr.shape[-2:]) >= 11 else float("nan"))
        scores["psnr_bicubic"].append(psnr(bicubic, hr))
        if len(rows) < max_rows:
            rows.append((bicubic[0], sr[0], hr[0]))
    generator.train(was_training)
    if grid_path is not None and rows:
        from texup.imageio import write_image

        grid_path.parent.mkdir(parents=True, exist_ok=True)
        write_image(grid_path, sample_grid(rows))
    return {k: float(np.mean(v)) for k, v in scores.items() if v}


def evaluate_run(ts: TrainState, val_items: list[Any], step: int) -> dict[str, float]:
    """Held-out metrics of the evaluated model and a sample grid (an ``"eval"`` event); ``{}`` off rank 0."""
    run = ts.run
    result: dict[str, float] = {}
    if run.info.is_main and val_items:
        grid = run.out_dir / "samples" / f"step_{step:06d}.png"
        result = evaluate(ts.eval_model, val_items, run.device, run.autocast, grid)
        run.emit("eval", step, values=result, path=str(grid))
    barrier()
    return result


LOG_COLUMNS = (
    "step",
    "time_s",
    "lr_g",
    "loss_g",
    "pixel",
    "content",
    "adversarial",
    "loss_d",
    "psnr",
    "ssim",
    "psnr_bicubic",
)


class RunLog:
    """CSV log (``log.csv``) plus TensorBoard events when available; rank 0 only."""

    def __init__(
        self, out_dir: Path, resume_step: int | None, use_tensorboard: bool, say: Callable[[str], None]
    ) -> None:
        self.path = out_dir / "log.csv"
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            # Rows written after the checkpoint we resume from belong to the lost part of the run.
            with self.path.open(newline="", encoding="utf-8") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= resume_step]
        # Atomically: a crash while rewriting must not lose the history a resumed run keeps.
        with atomic_path(self.path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        self.tb = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                say("TensorBoard logging off: the 'tensorboard' package is not installed (log.csv is written)")
            else:
                self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {k: (f"{values[k]:.6g}" if isinstance(values.get(k), float) else values.get(k, "")) for k in LOG_COLUMNS}
        row["step"] = step
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=LOG_COLUMNS).writerow(row)
        if self.tb is not None:
            for key, value in values.items():
                if key not in ("step", "time_s") and isinstance(value, float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


__all__ = ["LOG_COLUMNS", "RunLog", "evaluate", "evaluate_run"]
