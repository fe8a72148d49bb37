"""Standard backbones: ``mlp`` and ``resmlp`` for vector data and small flattened images, ``unet`` for images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_backbones.mlp import MLP
from diffcore_backbones.resmlp import ResMLP
from diffcore_backbones.unet import UNet

__all__ = ["MLP", "ResMLP", "UNet"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(MLP)
    register(ResMLP)
    register(UNet)
