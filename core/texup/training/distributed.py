"""Data-parallel set-up: one process per device, started by ``torchrun`` (or alone).

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m texup train ...`` sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them,
joins the process group (NCCL when the process drives a CUDA device, Gloo on CPUs) and picks the
device. Without those variables it is a single process and no process group is created.

Only rank 0 writes logs, checkpoints, images and the exported model; every rank runs the same
steps on its share of the global batch, and DistributedDataParallel averages gradients.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from texup.devices import pick_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment (if any) and choose the device.

    Idempotent: when the default process group already exists it is reused (tests spawn ranks and
    initialise the group themselves).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    dev = pick_device(device, local_rank=local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def teardown(info: DistInfo, *, owned: bool) -> None:
    """Leave the process group if :func:`setup` created it (``owned``)."""
    if owned and info.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is also a sum over ranks.

    Each rank's loss depends on the global sum, so the gradient of the *total* loss with respect to
    one rank's contribution is the sum of every rank's upstream gradient.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def global_batch_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean of ``logits`` over the global batch (all ranks; every rank holds the same number of elements).

    Differentiable: used for the "average" in the relativistic average GAN loss so that a run split
    over N ranks computes the same loss and gradients as one process over the whole batch (with
    DistributedDataParallel averaging parameter gradients, it is the gradient of the ranks' mean loss).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return logits.mean()
    world = dist.get_world_size()
    total = _AllReduceSum.apply(logits.float().sum().reshape(1))
    return total[0] / (logits.numel() * world)


def global_node_mean(outputs: torch.Tensor) -> torch.Tensor:
    """Per-output mean over the global batch, (N, ...) -> (1, ...), differentiable (as :func:`global_batch_mean`),
    for the per-node relativistic loss of many-output discriminators."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return outputs.mean(dim=0, keepdim=True)
    total = _AllReduceSum.apply(outputs.float().sum(dim=0, keepdim=True))
    return total / (outputs.shape[0] * dist.get_world_size())


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Average a Python number over ranks (for logging); identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def check_same_on_ranks(value: int, what: str, device: torch.device) -> None:
    """Raise ``ValueError`` on every rank unless all ranks hold the same ``value``.

    For facts each rank works out from its own node's files, such as the step a resumed run starts
    at (``OUT/checkpoint.pt`` read on every node): ranks that disagree would otherwise run different
    numbers of steps and wait on each other's collectives until the process-group timeout.
    No-op when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = torch.tensor([int(value)], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    values = [int(t.item()) for t in gathered]
    if len(set(values)) > 1:
        per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise ValueError(f"the ranks disagree on {what} ({per_rank})")


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (so that cancelling stops all ranks at the same step)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "broadcast_flag",
    "check_same_on_ranks",
    "global_batch_mean",
    "setup",
    "teardown",
]
