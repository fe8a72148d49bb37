"""Standard samplers: ``euler_maruyama`` (reverse SDE) and ``probability_flow`` (ODE, torchdiffeq)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_samplers.euler_maruyama import EulerMaruyama
from diffcore_samplers.probability_flow import ProbabilityFlow

__all__ = ["EulerMaruyama", "ProbabilityFlow"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(EulerMaruyama)
    register(ProbabilityFlow)
