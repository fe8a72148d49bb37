"""Datasets: finite data in memory, with optional labels, a deterministic held-out split, scaling
to the model's range and uniform dequantisation of discrete values.

Shapes: data ``(N, *event)`` float32, labels ``(N,)`` int64.
"""

from __future__ import annotations

import abc
import math
from functools import cached_property
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Component, Params
from diffcore.errors import UsageError
from diffcore.limits import Seed


class DataParams(Params):
    """What every dataset accepts, besides its own parameters."""

    holdout: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction held out as the test split.")
    split_seed: Seed = Field(0, description="Seed of the (deterministic) train/test permutation.")
    scale: Literal["none", "minus_one_one", "standardize"] = Field(
        "none", description="Affine map to the model's range: none; the data's [min, max] to [-1, 1]; "
        "zero mean and unit variance (per dataset, from the training split).")
    dequantize: bool = Field(False, description="Add uniform noise over one quantisation bin per draw "
                             "(discrete data only; the dataset states its bin width).")


class Dataset(Component, abc.ABC):
    """A dataset component.

    Implementers write :meth:`arrays` (all the raw data and labels, deterministic) and may set
    ``bin_width`` (the spacing of discrete values, for dequantisation) and ``num_classes``.
    The base class does the split, the scaling and the dequantisation the params ask for.
    """

    Params: ClassVar[type[Params]] = DataParams
    params: DataParams
    bin_width: float | None = None
    num_classes: int | None = None

    @abc.abstractmethod
    def arrays(self) -> tuple[Tensor, Tensor | None]:
        """All raw data ``(N, *event)`` and labels ``(N,)`` or ``None``, before split and scaling."""

    def split(self, part: Literal["train", "test"] = "train") -> tuple[Tensor, Tensor | None]:
        """The ``part`` split, scaled to the model's range: data ``(n, *event)``, labels or ``None``."""
        if part not in ("train", "test"):
            raise UsageError(f"split must be 'train' or 'test', got {part!r}")
        x, y = self.arrays()
        rows = self.split_rows[0] if part == "train" else self.split_rows[1]
        shift, mult = self.scaling
        return ((x[rows] - shift) * mult).float(), (y[rows] if y is not None else None)

    @cached_property
    def split_rows(self) -> tuple[Tensor, Tensor]:
        """Row indices of the train and test splits (a seeded permutation)."""
        x, y = self.arrays()
        n = x.shape[0]
        if y is not None and tuple(y.shape) != (n,):
            raise UsageError(f"dataset {self.name!r}: labels have shape {tuple(y.shape)}, expected ({n},)")
        n_test = round(self.params.holdout * n)
        if n - n_test < 2:
            raise UsageError(f"dataset {self.name!r}: holdout {self.params.holdout} of {n} samples leaves "
                             f"{n - n_test} for training; lower holdout")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.params.split_seed))
        return perm[n_test:], perm[:n_test]

    @cached_property
    def scaling(self) -> tuple[float, float]:
        """``(shift, mult)``: model value ``= (raw - shift) * mult``, from the raw training split.
        With dequantisation the range covers the half bins beyond the extreme values, so
        ``minus_one_one`` data stays within ``[-1, 1]`` after dequantising."""
        train = self.arrays()[0][self.split_rows[0]].double()
        if self.params.scale == "minus_one_one":
            half = 0.5 * (self.bin_width or 0.0) if self.params.dequantize else 0.0
            lo, hi = float(train.min()) - half, float(train.max()) + half
            return 0.5 * (lo + hi), 2.0 / max(hi - lo, 1e-12)
        if self.params.scale == "standardize":
            std = float(train.std())
            if not math.isfinite(std) or std <= 0:
                raise UsageError(f"dataset {self.name!r}: cannot standardize data with std {std}; use scale: none")
            return float(train.mean()), 1.0 / std
        return 0.0, 1.0

    def to_raw(self, x: Tensor) -> Tensor:
        """Map model-range values back to the raw data's range (for images and reports)."""
        shift, mult = self.scaling
        return x / mult + shift

    def dequantize(self, x: Tensor, u: Tensor) -> Tensor:
        """Uniform dequantisation of a model-range batch ``x`` with uniforms ``u`` in ``(0, 1)`` of the
        same shape: each value spreads over its bin; identity unless ``dequantize`` is set."""
        if not self.params.dequantize:
            return x
        if self.bin_width is None:
            raise UsageError(f"dataset {self.name!r} is not discrete (no bin_width); set dequantize: false")
        return x + (u - 0.5) * self.bin_width * self.scaling[1]
