"""Standard forward processes: ``ve``, ``vp``, ``subvp`` (Song et al. 2021, score_sde)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_processes.subvp import SubVPSDE
from diffcore_processes.ve import VESDE
from diffcore_processes.vp import VPSDE

__all__ = ["VESDE", "VPSDE", "SubVPSDE"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    for cls in (VESDE, VPSDE, SubVPSDE):
        register(cls)
