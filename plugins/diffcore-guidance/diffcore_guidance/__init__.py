"""Standard guidance: ``cfg`` (classifier-free), ``classifier``, ``inpaint`` (replacement) and
``dps`` (diffusion posterior sampling for a linear measurement)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_guidance.cfg import ClassifierFree
from diffcore_guidance.classifier import ClassifierGuidance
from diffcore_guidance.dps import PosteriorSampling
from diffcore_guidance.inpaint import Inpainting

__all__ = ["ClassifierFree", "ClassifierGuidance", "Inpainting", "PosteriorSampling"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    for cls in (ClassifierFree, ClassifierGuidance, Inpainting, PosteriorSampling):
        register(cls)
