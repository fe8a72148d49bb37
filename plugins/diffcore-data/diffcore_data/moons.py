"""Two interleaved half circles (as scikit-learn's ``make_moons``, drawn with torch)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from diffcore_data._cached import MAX_POINTS_2D, CachedDataset, SyntheticParams, generator


class MoonsParams(SyntheticParams):
    num: int = Field(10000, ge=1, le=MAX_POINTS_2D, description="Number of points (half on each moon, the first "
                     "gets the odd one).")
    noise: float = Field(0.05, ge=0.0, description="Standard deviation of the Gaussian noise added to each coordinate.")



class Moons(CachedDataset):
    """2-D toy data: two interleaving half circles, labelled by moon.

    Moon 0 (label 0): ``(cos t, sin t)``, centre ``(0, 0)``; moon 1 (label 1): ``(1 - cos t,
    0.5 - sin t)``, centre ``(1, 0.5)``; ``t ~ U(0, pi)``, both of radius 1, plus isotropic noise.
    Rows come in a random (seeded) order."""

    name = "moons"
    Params = MoonsParams
    params: MoonsParams
    num_classes = 2

    def load(self) -> tuple[Tensor, Tensor]:
        p, g = self.params, generator(self.params.seed)
        n = p.num
        labels = (torch.arange(n) >= (n + 1) // 2).to(torch.int64)
        t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
        outer = torch.stack([t.cos(), t.sin()], dim=1)
        inner = torch.stack([1.0 - t.cos(), 0.5 - t.sin()], dim=1)
        x = torch.where(labels[:, None] == 0, outer, inner)
        x = x + p.noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
        perm = torch.randperm(n, generator=g)
        return x[perm].float(), labels[perm]
