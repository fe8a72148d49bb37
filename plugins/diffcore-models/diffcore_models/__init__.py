"""Standard analytic models: the Gaussian mixture ``gmm`` (a score model) and its exact class
posterior ``gmm`` (a noise-conditional classifier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_models.gmm import GaussianMixture, GaussianMixtureClassifier

__all__ = ["GaussianMixture", "GaussianMixtureClassifier"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(GaussianMixture)
    register(GaussianMixtureClassifier)
