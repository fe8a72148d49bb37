"""Measuring samples of scikit-learn's 8x8 digits, for the digits tests and benchmarks.

:class:`DigitsReference` holds the train and held-out splits of a spec's ``digits`` data (in the
model's range), and a logistic regression trained only on the real training digits; with them it
scores samples ``(n, 1, 8, 8)`` in the model's range:

- :meth:`~DigitsReference.accuracy`: the share the logistic regression assigns to the requested
  labels (class-conditional sampling, guidance, inpainting);
- :meth:`~DigitsReference.confident`: the share it classifies with probability at least 0.9 (any
  class; unconditional sampling);
- :meth:`~DigitsReference.frechet`: :func:`diffcore.metrics.frechet_distance` in pixel space to the
  held-out digits, and :meth:`~DigitsReference.floor`, the same for real training digits (about 0.357
  for 1000 of them against the 539 held-out ones).

Needs scikit-learn (a development dependency), imported when the reference is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffcore.metrics import frechet_distance

DIGITS_DATA: dict[str, Any] = {"type": "digits", "holdout": 0.3, "scale": "minus_one_one", "dequantize": True}
"""The data section of ``examples/train_digits.yaml`` and ``examples/train_digits_cfg.yaml``."""

CONFIDENCE = 0.9
"""The probability above which :meth:`DigitsReference.confident` counts a sample."""


@dataclass
class DigitsReference:
    """The real digits of one data spec and a logistic regression fitted to its training split."""

    x_train: Tensor
    """``(n_train, 1, 8, 8)`` float32 in the model's range."""
    y_train: Tensor
    """``(n_train,)`` int64 labels."""
    x_test: Tensor
    """``(n_test, 1, 8, 8)``: the held-out digits."""
    y_test: Tensor
    """``(n_test,)``."""
    classifier: Any
    """``sklearn.linear_model.LogisticRegression`` on the flattened training digits."""

    @classmethod
    def load(cls, data: Mapping[str, Any] | None = None) -> DigitsReference:
        """The splits of the data section ``data`` (``{type: digits, ...}``; default
        :data:`DIGITS_DATA`) and the logistic regression (``max_iter=2000``) fitted to the training split."""
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

        from diffcore import get_registry
        from diffcore.data import Dataset

        params = dict(data if data is not None else DIGITS_DATA)
        dataset = get_registry().build("dataset", params.pop("type"), **params)
        assert isinstance(dataset, Dataset)
        x_train, y_train = dataset.split("train")
        x_test, y_test = dataset.split("test")
        if y_train is None or y_test is None:
            raise ValueError("the digits reference needs a labelled data set")
        classifier = LogisticRegression(max_iter=2000).fit(x_train.flatten(1).numpy(), y_train.numpy())
        return cls(x_train, y_train, x_test, y_test, classifier)

    def predict(self, x: Tensor) -> Tensor:
        """The logistic regression's labels ``(n,)`` of samples ``x`` ``(n, 1, 8, 8)`` (model range)."""
        return torch.from_numpy(self.classifier.predict(_flat(x))).to(torch.int64)

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """The share of samples ``x`` ``(n, ...)`` classified as their ``labels`` ``(n,)``."""
        return float((self.predict(x) == labels.cpu().to(torch.int64)).double().mean())

    def class_accuracies(self, x: Tensor, labels: Tensor) -> Tensor:
        """``(10,)``: :meth:`accuracy` per requested label (NaN for a label not requested)."""
        hit = (self.predict(x) == labels.cpu().to(torch.int64)).double()
        labels = labels.cpu()
        return torch.stack([hit[labels == k].mean() if bool((labels == k).any()) else torch.tensor(float("nan"))
                            for k in range(10)])

    def confident(self, x: Tensor, threshold: float = CONFIDENCE) -> float:
        """The share of samples classified (as any class) with probability at least ``threshold``."""
        return float((self.classifier.predict_proba(_flat(x)).max(1) >= threshold).mean())

    def frechet(self, x: Tensor) -> float:
        """Frechet distance in pixel space of samples ``x`` to the held-out digits."""
        return frechet_distance(x.cpu(), self.x_test)

    def floor(self, num: int = 1000) -> float:
        """:meth:`frechet` of the first ``num`` real training digits: what a perfect sampler scores."""
        return self.frechet(self.x_train[:num])


def top_rows_mask(num: int, rows: int = 4, size: int = 8) -> Tensor:
    """``(num, 1, size, size)`` bool, True on the top ``rows`` rows (the observed part for inpainting)."""
    mask = torch.zeros(num, 1, size, size, dtype=torch.bool)
    mask[:, :, :rows] = True
    return mask


def _flat(x: Tensor) -> Any:
    return x.detach().cpu().flatten(1).to(torch.float32).numpy()
