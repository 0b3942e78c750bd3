"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one ``torch.save`` file (``out_dir/checkpoint.pt``) holding plain containers and
tensors only, so it is read back with ``torch.load(weights_only=True)``:

==================  ============================================================================
``format``          :data:`CHECKPOINT_FORMAT`
``step``            optimisation steps completed (the data sampler's position: the next step's
                    batch is a pure function of it, see :mod:`texup.training.data`)
``config``          the full :class:`~texup.training.config.TrainConfig` as a dict
``generator``       ``{"arch", "hparams", "state_dict"}``
``ema``             the EMA generator's state dict, or ``None``
``discriminator``   ``{"kind", "hparams", "state_dict"}`` or ``None`` (psnr stage)
``optim_g/optim_d`` optimiser state dicts (``optim_d`` ``None`` in the psnr stage)
``sched_g/sched_d`` learning-rate scheduler state dicts
``scaler_g/d``      gradient-scaler state dicts (fp16) or ``None``
``rng``             Python, NumPy and torch (CPU and CUDA) generator states
``sampler``         ``{"step", "batch_size", "seed"}``: what positions the data stream
``metrics``         last validation metrics and those of the starting model
==================  ============================================================================

Writes are atomic: the file is written under a temporary name in the same folder, flushed to disk
and renamed over the old checkpoint, so a run killed while saving leaves the previous one intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from texup._atomic import atomic_path
from texup.errors import FileError

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(FileError):
    """A checkpoint could not be read, or does not fit the run resuming from it."""


def capture_rng() -> dict[str, Any]:
    """The state of every random generator the trainer touches (NumPy's as plain lists)."""
    np_state = np.random.get_state()
    if isinstance(np_state, dict):  # only a non-MT19937 generator gives a dict; NumPy's global state is MT19937
        raise TypeError(f"NumPy's global random state is {np_state.get('bit_generator')}, expected MT19937")
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back generator states captured by :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (see the module docstring); return the path.

    Raises ``OSError`` when the folder is not writable; no partial file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain containers only).

    Raises:
        CheckpointError: missing, unreadable or not a texup checkpoint (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in the unpickler in many ways; re-raised, chained
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"cannot read checkpoint ({first})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"not a texup training checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]
