"""Training: the optimisation loop and atomic safetensors checkpoints.

:class:`TrainConfig` (the ``train`` section of a spec) is imported eagerly; the loop (torch,
DistributedDataParallel) only when :class:`Trainer`, :class:`TrainResult` or :func:`fit` is first used,
so the spec model can name :class:`TrainConfig` without importing the loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diffcore.training.config import TrainConfig

if TYPE_CHECKING:
    from diffcore.training.loop import Trainer, TrainResult, fit

_LOOP = ("Trainer", "TrainResult", "fit")


def __getattr__(name: str) -> Any:
    if name not in _LOOP:
        raise AttributeError(f"module 'diffcore.training' has no attribute {name!r}")
    value = getattr(importlib.import_module("diffcore.training.loop"), name)
    globals()[name] = value
    return value


__all__ = ["TrainConfig", "TrainResult", "Trainer", "fit"]
