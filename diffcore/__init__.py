"""diffcore: score-based generative models with pluggable processes, models, objectives, samplers
and guidance, assembled from declarative specs.

The core holds the interfaces, the registry, specs and the pipeline; concrete components come from
plugins (entry-point group ``diffcore``), the standard ones included.
"""

from __future__ import annotations

from importlib import metadata

from diffcore.component import Component, Params
from diffcore.data import Dataset
from diffcore.errors import (
    CompatibilityError,
    DiffcoreError,
    NonFiniteError,
    PluginError,
    RegistryError,
    SamplingError,
    SpecError,
    UsageError,
)
from diffcore.guidance import Guidance
from diffcore.hookspecs import hookimpl
from diffcore.model import ScoreModel
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.pipeline import Pipeline
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, LinearGaussianProcess
from diffcore.registry import Registry, get_registry
from diffcore.sampler import Sampler, SampleResult

try:
    __version__ = metadata.version("diffcore")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "LINEAR_GAUSSIAN",
    "CompatibilityError",
    "Component",
    "Dataset",
    "DiffcoreError",
    "ForwardProcess",
    "Guidance",
    "LinearGaussianProcess",
    "NoiseSource",
    "NonFiniteError",
    "Objective",
    "Params",
    "Pipeline",
    "PluginError",
    "Registry",
    "RegistryError",
    "SampleResult",
    "Sampler",
    "SamplingError",
    "ScoreModel",
    "SpecError",
    "UsageError",
    "__version__",
    "get_registry",
    "hookimpl",
]
