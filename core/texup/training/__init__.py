"""ESRGAN training: fine-tune a generator on a texture library (``texup train``).

``train(config, progress=cb, cancel=cb)`` runs one training stage as described by a
:class:`TrainConfig` (see :mod:`texup.training.config`); it is what the CLI and the Blender worker
call. Heavy modules (torch, data loading) are imported on first use of these names. Everything in this package
uses torch (install the ``torch`` extra); nothing outside it imports it except the torch engine, ``texup.devices``
(device and precision choice, shared with inference), the archs' modules and the torch weight readers
(tests/test_boundaries.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from texup.training.config import (
        DataConfig,
        DiscriminatorConfig,
        GeneratorConfig,
        LossConfig,
        OptimConfig,
        TrainConfig,
        config_from_dict,
        load_config,
        with_overrides,
    )
    from texup.training.trainer import TrainEvent, TrainResult, train

_EXPORTS = {
    "DataConfig": "config",
    "DiscriminatorConfig": "config",
    "GeneratorConfig": "config",
    "LossConfig": "config",
    "OptimConfig": "config",
    "TrainConfig": "config",
    "config_from_dict": "config",
    "load_config": "config",
    "with_overrides": "config",
    "TrainEvent": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"texup.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'texup.training' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
