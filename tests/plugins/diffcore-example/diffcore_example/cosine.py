"""An example third-party component plugin: the cosine schedule of Nichol & Dhariwal (2021) as a process.

It gives only ``alpha(t)`` and ``sigma(t)``; diffcore derives the SDE coefficients ``f`` and ``g``
and the inverse of the log-SNR, so every sampler works with it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from diffcore import LinearGaussianProcess, hookimpl
from diffcore.process import ProcessParams


class CosineVP(LinearGaussianProcess):
    """Variance-preserving process with ``alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s))``."""

    name = "cosine"

    class Params(ProcessParams):
        s: float = Field(0.008, ge=0, description="Offset that keeps beta(t) small near t = 0.")
        T: float = Field(0.9946, gt=0, lt=1, description="Terminal time (alpha(1) = 0 is singular).")

    params: Params

    def alpha(self, t: Tensor) -> Tensor:
        s = self.params.s
        return torch.cos(0.5 * math.pi * (t + s) / (1 + s)) / math.cos(0.5 * math.pi * s / (1 + s))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - self.alpha(t) ** 2)


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(CosineVP)
