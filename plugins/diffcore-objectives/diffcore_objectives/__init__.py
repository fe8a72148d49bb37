"""Standard objectives: ``dsm``, ``prediction``, ``ncsn``, ``ssm``, ``exact_sm``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_objectives.dsm import DenoisingScoreMatching
from diffcore_objectives.exact import ExactScoreMatching
from diffcore_objectives.ncsn import NCSNScoreMatching
from diffcore_objectives.prediction import PredictionLoss
from diffcore_objectives.sliced import SlicedScoreMatching

__all__ = ["DenoisingScoreMatching", "ExactScoreMatching", "NCSNScoreMatching", "PredictionLoss",
           "SlicedScoreMatching"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    for cls in (DenoisingScoreMatching, PredictionLoss, NCSNScoreMatching, SlicedScoreMatching, ExactScoreMatching):
        register(cls)
