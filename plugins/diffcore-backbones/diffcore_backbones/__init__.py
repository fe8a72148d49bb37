"""Standard backbones: ``mlp`` and ``resmlp`` for vector data and small flattened images, ``unet`` for images;
and the noise-conditional classifiers ``mlp`` and ``unet`` (component kind ``classifier``) built from them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_backbones.mlp import MLP, MLPClassifier
from diffcore_backbones.resmlp import ResMLP
from diffcore_backbones.unet import UNet, UNetClassifier

__all__ = ["MLP", "MLPClassifier", "ResMLP", "UNet", "UNetClassifier"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(MLP)
    register(ResMLP)
    register(UNet)
    register(MLPClassifier)
    register(UNetClassifier)
