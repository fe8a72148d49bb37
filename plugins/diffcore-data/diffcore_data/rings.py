"""Concentric circles (a generalisation of scikit-learn's ``make_circles``)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from diffcore.limits import Classes
from diffcore_data._cached import MAX_POINTS_2D, CachedDataset, SyntheticParams, generator


class RingsParams(SyntheticParams):
    num: int = Field(10000, ge=1, le=MAX_POINTS_2D, description="Number of points, split evenly over the rings "
                     "(the inner ones get the remainder).")
    num_rings: Classes = Field(3, description="Number of rings; ring k (label k) has radius (k + 1) / num_rings.")
    noise: float = Field(0.02, ge=0.0, description="Standard deviation of the Gaussian noise added to each coordinate.")



class Rings(CachedDataset):
    """2-D toy data: concentric noisy rings, labelled by ring.

    Ring ``k`` (label ``k``): radius ``(k + 1) / num_rings``, uniform angle, plus isotropic noise.
    Rows come in a random (seeded) order."""

    name = "rings"
    Params = RingsParams
    params: RingsParams

    def __init__(self, params: RingsParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.num_classes = self.params.num_rings

    def load(self) -> tuple[Tensor, Tensor]:
        p, g = self.params, generator(self.params.seed)
        counts = [p.num // p.num_rings + (k < p.num % p.num_rings) for k in range(p.num_rings)]
        labels = torch.repeat_interleave(torch.arange(p.num_rings), torch.tensor(counts))
        radius = (labels.double() + 1.0) / p.num_rings
        theta = torch.rand(p.num, generator=g, dtype=torch.float64) * (2.0 * math.pi)
        x = radius[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
        x = x + p.noise * torch.randn(p.num, 2, generator=g, dtype=torch.float64)
        perm = torch.randperm(p.num, generator=g)
        return x[perm].float(), labels[perm]
