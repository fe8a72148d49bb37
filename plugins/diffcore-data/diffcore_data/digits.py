"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)."""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from diffcore.data import DataParams
from diffcore.errors import UsageError
from diffcore_data._cached import CachedDataset


class DigitsParams(DataParams):
    pass



class Digits(CachedDataset):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, grey levels 0 to 16, labels 0 to 9): a small image
    data set, discrete, so likelihoods come in bits per dimension.

    Data ``(1797, 1, 8, 8)`` float32 with the raw integer grey levels ``0..16``; labels ``0..9``.
    Discrete: ``bin_width = 1`` (in raw units), so ``dequantize: true`` works."""

    name = "digits"
    Params = DigitsParams
    params: DigitsParams
    bin_width = 1.0
    num_classes = 10

    def load(self) -> tuple[Tensor, Tensor]:
        try:
            datasets = importlib.import_module("sklearn.datasets")  # untyped: imported by name
        except ImportError as exc:
            raise UsageError("dataset 'digits' needs scikit-learn, which is not installed "
                             f"({exc}); install it with `pip install scikit-learn`") from None
        bunch = datasets.load_digits()
        x = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8)
        y = torch.as_tensor(bunch.target, dtype=torch.int64)
        return x, y
