"""Standard backbones: ``mlp`` for vector data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_backbones.mlp import MLP

__all__ = ["MLP"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(MLP)
