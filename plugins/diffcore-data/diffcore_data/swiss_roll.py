"""The 2-D swiss roll (the ``x`` and ``z`` coordinates of scikit-learn's ``make_swiss_roll``)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from diffcore_data._cached import CachedDataset, SyntheticParams, generator


class SwissRollParams(SyntheticParams):
    noise: float = Field(0.5, ge=0.0, description="Standard deviation of the Gaussian noise added to each coordinate.")



class SwissRoll(CachedDataset):
    """2-D toy data: the swiss-roll spiral (no labels).

    ``(t cos t, t sin t)`` with ``t ~ U(1.5 pi, 4.5 pi)`` plus isotropic noise (raw scale: points
    lie within radius ``4.5 pi ~ 14.1``; use ``scale`` for the model's range). No labels."""

    name = "swiss_roll"
    Params = SwissRollParams
    params: SwissRollParams

    def load(self) -> tuple[Tensor, None]:
        p, g = self.params, generator(self.params.seed)
        t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(p.num, generator=g, dtype=torch.float64))
        x = torch.stack([t * t.cos(), t * t.sin()], dim=1)
        x = x + p.noise * torch.randn(p.num, 2, generator=g, dtype=torch.float64)
        return x.float(), None
