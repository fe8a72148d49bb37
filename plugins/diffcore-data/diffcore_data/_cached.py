"""A dataset whose arrays are computed once per instance (its params are frozen, so they never
change); callers get copies, so mutating them cannot corrupt later splits."""

from __future__ import annotations

import abc

import torch
from pydantic import Field
from torch import Tensor

from diffcore.data import DataParams, Dataset


class CachedDataset(Dataset, abc.ABC):
    """Implementers write :meth:`load`; :meth:`arrays` returns copies of its (cached) result."""

    _arrays: tuple[Tensor, Tensor | None] | None = None

    @abc.abstractmethod
    def load(self) -> tuple[Tensor, Tensor | None]:
        """All raw data ``(N, *event)`` float32 and labels ``(N,)`` int64 or ``None``."""

    def arrays(self) -> tuple[Tensor, Tensor | None]:
        if self._arrays is None:
            self._arrays = self.load()
        x, y = self._arrays
        return x.clone(), (y.clone() if y is not None else None)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (every dataset draws from its own)."""
    return torch.Generator().manual_seed(seed)


class SyntheticParams(DataParams):
    """What every generated (synthetic) dataset takes: how many points and the seed of the draw."""

    num: int = Field(10000, ge=1, description="Number of points.")
    seed: int = Field(0, ge=0, description="Seed of the draw.")
