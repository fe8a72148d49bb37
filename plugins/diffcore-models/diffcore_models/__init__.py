"""Standard score models: ``gmm``, the analytic Gaussian mixture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_models.gmm import GaussianMixture

__all__ = ["GaussianMixture"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(GaussianMixture)
