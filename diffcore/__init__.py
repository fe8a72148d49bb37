"""diffcore: score-based generative models with pluggable processes, models, objectives, samplers
and guidance, assembled from declarative specs.

The core holds the interfaces, the registry, specs and the pipeline; concrete components come from
plugins (entry-point group ``diffcore``), the standard ones included.

The names below are imported on first use (PEP 562), so ``import diffcore`` and the command line's
``--help`` and ``--version`` do not import torch.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffcore.classifier import NoiseClassifier
    from diffcore.component import Component, Params
    from diffcore.condition import Condition
    from diffcore.data import Dataset
    from diffcore.encoding import EncodeResult, encode
    from diffcore.errors import (
        CompatibilityError,
        DiffcoreError,
        NonFiniteError,
        PluginError,
        RegistryError,
        SamplingError,
        SpecError,
        TrainingError,
        UsageError,
    )
    from diffcore.guidance import Guidance
    from diffcore.hookspecs import hookimpl
    from diffcore.likelihood import LikelihoodOptions, LikelihoodResult, log_likelihood
    from diffcore.model import ScoreModel
    from diffcore.noise import NoiseSource
    from diffcore.objective import Objective
    from diffcore.partial import noise_to, starting_at
    from diffcore.pipeline import Pipeline
    from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, LinearGaussianProcess
    from diffcore.registry import Registry, get_registry
    from diffcore.sampler import Sampler, SampleResult

try:
    __version__ = metadata.version("diffcore")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

_EXPORTS: dict[str, str] = {
    "Component": "diffcore.component",
    "Params": "diffcore.component",
    "Dataset": "diffcore.data",
    "EncodeResult": "diffcore.encoding",
    "encode": "diffcore.encoding",
    "CompatibilityError": "diffcore.errors",
    "DiffcoreError": "diffcore.errors",
    "NonFiniteError": "diffcore.errors",
    "PluginError": "diffcore.errors",
    "RegistryError": "diffcore.errors",
    "SamplingError": "diffcore.errors",
    "SpecError": "diffcore.errors",
    "TrainingError": "diffcore.errors",
    "UsageError": "diffcore.errors",
    "Guidance": "diffcore.guidance",
    "Condition": "diffcore.condition",
    "NoiseClassifier": "diffcore.classifier",
    "hookimpl": "diffcore.hookspecs",
    "LikelihoodOptions": "diffcore.likelihood",
    "LikelihoodResult": "diffcore.likelihood",
    "log_likelihood": "diffcore.likelihood",
    "ScoreModel": "diffcore.model",
    "NoiseSource": "diffcore.noise",
    "Objective": "diffcore.objective",
    "noise_to": "diffcore.partial",
    "starting_at": "diffcore.partial",
    "Pipeline": "diffcore.pipeline",
    "LINEAR_GAUSSIAN": "diffcore.process",
    "ForwardProcess": "diffcore.process",
    "LinearGaussianProcess": "diffcore.process",
    "Registry": "diffcore.registry",
    "get_registry": "diffcore.registry",
    "Sampler": "diffcore.sampler",
    "SampleResult": "diffcore.sampler",
}
"""Public name -> the module defining it."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "LINEAR_GAUSSIAN",
    "CompatibilityError",
    "Component",
    "Condition",
    "Dataset",
    "DiffcoreError",
    "EncodeResult",
    "ForwardProcess",
    "Guidance",
    "LikelihoodOptions",
    "LikelihoodResult",
    "LinearGaussianProcess",
    "NoiseClassifier",
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
    "TrainingError",
    "UsageError",
    "__version__",
    "encode",
    "get_registry",
    "hookimpl",
    "log_likelihood",
    "noise_to",
    "starting_at",
]
