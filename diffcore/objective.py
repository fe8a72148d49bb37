"""Training objectives (score matching in its forms; seeds 001, 002, 004)."""

from __future__ import annotations

import abc

from torch import Tensor

from diffcore.component import Component
from diffcore.model import ScoreModel
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess


class Objective(Component, abc.ABC):
    """A training loss for a score model under a process.

    ``loss(model, process, x0, noise, cond=None)`` takes a data batch ``x0`` ``(B, *event)``, draws
    times and noise from ``noise`` (so training is reproducible per sample index) and returns a
    scalar tensor to minimise. Its minimiser over all functions is the true score (or the matching
    eps / x0 / v) of the data under the process.
    """

    @abc.abstractmethod
    def loss(self, model: ScoreModel, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        """Scalar loss for the batch ``x0``."""
