"""Standard datasets: ``moons``, ``swiss_roll``, ``checkerboard``, ``rings`` (2-D toys),
``gmm_samples`` (draws from a diagonal Gaussian mixture), ``digits`` (scikit-learn's 8x8 digits) and
``array`` (user arrays from ``.npy``, ``.npz`` or ``.safetensors`` files, never unpickled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_data.array import ArrayDataset
from diffcore_data.checkerboard import Checkerboard
from diffcore_data.digits import Digits
from diffcore_data.gmm_samples import GMMSamples
from diffcore_data.moons import Moons
from diffcore_data.rings import Rings
from diffcore_data.swiss_roll import SwissRoll

__all__ = ["ArrayDataset", "Checkerboard", "Digits", "GMMSamples", "Moons", "Rings", "SwissRoll"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    for cls in (Moons, SwissRoll, Checkerboard, Rings, GMMSamples, Digits, ArrayDataset):
        register(cls)
