"""A dataset whose arrays are computed once per instance (its params are frozen, so they never
change); callers get copies, so mutating them cannot corrupt later splits."""

from __future__ import annotations

import abc

import torch
from pydantic import Field
from torch import Tensor

from diffcore.data import DataParams, Dataset
from diffcore.errors import UsageError
from diffcore.limits import MAX_DATASET_VALUES, Seed


class CachedDataset(Dataset, abc.ABC):
    """Implementers write :meth:`load`; :meth:`arrays` returns copies of its (cached) result."""

    _arrays: tuple[Tensor, Tensor | None] | None = None

    @abc.abstractmethod
    def load(self) -> tuple[Tensor, Tensor | None]:
        """All raw data ``(N, *event)`` float32 and labels ``(N,)`` int64 or ``None``."""

    def arrays(self) -> tuple[Tensor, Tensor | None]:
        if self._arrays is None:
            self._arrays = self.load()
            if not bool(torch.isfinite(self._arrays[0]).all()):
                self._arrays = None
                raise UsageError(f"dataset {self.name!r}: the data holds values beyond float32 (Inf or NaN); "
                                 "lower the parameters that scale it (noise, means, variances)")
        x, y = self._arrays
        return x.clone(), (y.clone() if y is not None else None)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (every dataset draws from its own)."""
    return torch.Generator().manual_seed(seed)


MAX_POINTS_2D = MAX_DATASET_VALUES // 2
"""Most points of a generated 2-D dataset (:data:`~diffcore.limits.MAX_DATASET_VALUES` values)."""


class SyntheticParams(DataParams):
    """What every generated (synthetic, 2-D) dataset takes: how many points and the seed of the draw."""

    num: int = Field(10000, ge=1, le=MAX_POINTS_2D, description="Number of points.")
    seed: Seed = Field(0, description="Seed of the draw.")
