"""Uniform on the black squares of a 4x4 checkerboard over ``[-2, 2]^2`` (FFJORD's ``checkerboard``)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffcore_data._cached import CachedDataset, SyntheticParams, generator


class CheckerboardParams(SyntheticParams):
    """Only the number of points and the seed."""


def black_squares() -> Tensor:
    """``(8, 2)`` int64 cell indices ``(i, j)`` of the black squares: cell ``(i, j)`` is
    ``[i - 2, i - 1) x [j - 2, j - 1)``, black when ``i + j`` is even."""
    return torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.int64)


class Checkerboard(CachedDataset):
    """2-D toy data: points uniform on the black squares of a 4x4 checkerboard (FFJORD, Grathwohl et al. 2019).

    A black square chosen uniformly, then a uniform point in it. No labels."""

    name = "checkerboard"
    Params = CheckerboardParams
    params: CheckerboardParams

    def load(self) -> tuple[Tensor, None]:
        p, g = self.params, generator(self.params.seed)
        cells = black_squares()[torch.randint(0, 8, (p.num,), generator=g)]
        x = cells.double() - 2.0 + torch.rand(p.num, 2, generator=g, dtype=torch.float64)
        return x.float(), None
