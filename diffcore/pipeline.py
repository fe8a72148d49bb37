"""A pipeline: a process, a score model, guidance and a sampler, assembled and checked once.

::

    pipe = Pipeline.from_spec("examples/gmm2d.yaml")
    x = pipe.sample(1000, seed=0).x                      # (1000, 2)
    x = pipe.with_sampler("probability_flow").sample(1000, seed=0).x   # swap the sampler in one line

Compatibility (a sampler or model needing a linear-Gaussian process, say) is checked here, when the
pipeline is assembled, never inside a sampling step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcore.component import check_compatible, component_errors
from diffcore.errors import PluginError, UsageError
from diffcore.guidance import Guidance
from diffcore.model import ConditionalScoreFn, ScoreModel, score_function
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.registry import Registry, get_registry
from diffcore.sampler import Callback, Sampler, SampleResult, check_result
from diffcore.spec import PipelineSpecBase, load_spec


@dataclass
class Pipeline:
    """Assembled components. Build with :meth:`from_spec` or directly from component objects."""

    process: ForwardProcess
    model: ScoreModel
    sampler: Sampler
    guidance: Sequence[Guidance] = ()
    shape: tuple[int, ...] = ()
    spec: PipelineSpecBase | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for component in (self.sampler, self.model, *self.guidance):
            check_compatible(component, self.process)
        self.model.bind(self.process)
        model_shape = tuple(self.model.event_shape or ())
        self.shape = tuple(self.shape) or model_shape
        if not self.shape:
            raise UsageError(f"model {self.model.name!r} does not know its data shape; "
                             "set `shape` in the spec, e.g. shape: [2]")
        if model_shape and math.prod(self.shape) != math.prod(model_shape):
            raise UsageError(f"`shape` {list(self.shape)} holds {math.prod(self.shape)} values per sample but "
                             f"model {self.model.name!r} has {math.prod(model_shape)} ({list(model_shape)}); "
                             "fix `shape` or drop it to use the model's")

    @classmethod
    def from_spec(cls, source: str | Path | Mapping[str, Any] | PipelineSpecBase,
                  overrides: Sequence[str] = (), *, registry: Registry | None = None) -> Pipeline:
        """Assemble from a spec file, a mapping or a validated spec, with ``--set``-style overrides."""
        registry = registry or get_registry()
        spec = source if isinstance(source, PipelineSpecBase) else load_spec(source, overrides, registry=registry)

        def build(kind: str, item: Any) -> Any:
            params = dict(item.model_dump())
            return registry.build(kind, params.pop("type"), **params)

        return cls(
            process=build("process", spec.process),  # type: ignore[attr-defined]
            model=build("model", spec.model),  # type: ignore[attr-defined]
            sampler=build("sampler", spec.sampler),  # type: ignore[attr-defined]
            guidance=[build("guidance", g) for g in spec.guidance],  # type: ignore[attr-defined]
            shape=tuple(spec.shape),  # type: ignore[attr-defined]
            spec=spec,
        )

    def with_sampler(self, sampler: Sampler | str, *, registry: Registry | None = None, **params: Any) -> Pipeline:
        """The same pipeline with another sampler (an object, or a registered name and params)."""
        if isinstance(sampler, str):
            built = (registry or get_registry()).build("sampler", sampler, **params)
            assert isinstance(built, Sampler)
            sampler = built
        return Pipeline(self.process, self.model, sampler, self.guidance, self.shape)

    def conditional_score_fn(self) -> ConditionalScoreFn:
        """``(x, t, cond) -> score`` of the model, with every guidance applied in order."""
        fn = score_function(self.model, self.process)
        for g in self.guidance:
            with component_errors(g, "wrapping the score"):
                fn = _reported(g, g.guide(fn, self.process))
        return fn

    def score_fn(self, cond: Tensor | None = None) -> ScoreFn:
        """The guided score ``(x, t) -> (B, *event)`` with the condition bound."""
        fn = self.conditional_score_fn()
        return lambda x, t: fn(x, t, cond)

    def to(self, device: torch.device | str) -> Pipeline:
        """Move the model (and anything it holds) to ``device``."""
        self.model.to(device)
        return self

    def iter_samples(self, num: int, *, seed: int, batch_size: int | None = None, start: int = 0,
                     latents: Tensor | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32, cond: Tensor | None = None,
                     callback: Callback | None = None) -> Iterator[tuple[int, SampleResult]]:
        """Yield ``(first index, result)`` for chunks of at most ``batch_size`` samples.

        Samples ``start, ..., start + num - 1`` are drawn; sample ``i`` depends only on ``seed`` and
        ``i`` (the noise is counter-based), so the chunking never changes the result of a fixed-step
        sampler. ``latents`` ``(num, *shape)`` replaces the prior draw at ``T``; ``cond``
        ``(num, ...)`` is sliced along with the chunks.
        """
        if num < 1:
            raise UsageError(f"the number of samples must be positive, got {num}")
        if latents is not None and tuple(latents.shape) != (num, *self.shape):
            raise UsageError(f"latents have shape {tuple(latents.shape)} but {num} samples of shape "
                             f"{self.shape} need {(num, *self.shape)}")
        device = torch.device(device) if device is not None else _model_device(self.model)
        self.model.to(device)
        batch_size = batch_size or num
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        for lo in range(0, num, batch_size):
            hi = min(num, lo + batch_size)
            noise = NoiseSource.range(seed, start + lo, start + hi, device)
            if latents is not None:
                x_T = latents[lo:hi].to(device=device, dtype=dtype)
            else:
                x_T = self.process.prior_sample(noise, self.shape, dtype=dtype)
            chunk_cond = cond[lo:hi].to(device) if cond is not None else None
            with torch.no_grad(), component_errors(self.sampler, "sampling"):
                result = self.sampler.sample(self.score_fn(chunk_cond), self.process, x_T, noise,
                                             callback=callback)
            result = check_result(result, x_T, self.sampler)
            # Sampler.sample checks finiteness (with the step and time); a sampler overriding it is checked here
            overrides_sample = type(self.sampler).sample is not Sampler.sample
            if overrides_sample and not bool(torch.isfinite(result.x).all()):
                raise PluginError(f"sampler {self.sampler.name!r} returned NaN or Inf samples without raising "
                                  "NonFiniteError; check the sampler")
            yield lo, result

    def sample(self, num: int, *, seed: int, **kwargs: Any) -> SampleResult:
        """All ``num`` samples at once (see :meth:`iter_samples` for the arguments); ``nfe`` is the
        largest per-chunk count."""
        parts = list(self.iter_samples(num, seed=seed, **kwargs))
        x = torch.cat([r.x for _, r in parts])
        steps = [r.steps for _, r in parts if r.steps is not None]
        return SampleResult(x=x, nfe=max(r.nfe for _, r in parts), steps=max(steps) if steps else None)


def _reported(guidance: Guidance, fn: ConditionalScoreFn) -> ConditionalScoreFn:
    """``fn`` with its failures reported as the guidance's (see :func:`component_errors`)."""
    def guided(x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        with component_errors(guidance, "guiding the score"):
            return fn(x, t, cond)
    return guided


def _model_device(model: ScoreModel) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

