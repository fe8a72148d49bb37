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
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcore.component import check_compatible, component_errors
from diffcore.condition import FIELDS, Condition
from diffcore.encoding import EncodeResult, check_data, encode, encode_interval
from diffcore.errors import PluginError, UsageError
from diffcore.guidance import Guidance
from diffcore.model import ConditionalScoreFn, ScoreModel, score_function
from diffcore.noise import NoiseSource
from diffcore.ode import SolverParams
from diffcore.partial import starting_at
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.registry import Registry, get_registry
from diffcore.sampler import Callback, Sampler, SampleResult, check_result
from diffcore.spec import PipelineSpecBase, is_classifier_spec, load_spec
from diffcore.threads import Threads, cpu_threads


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
        self.guidance = list(self.guidance)
        model_shape = tuple(self.model.event_shape or ())
        self.shape = tuple(self.shape) or model_shape
        if not self.shape:
            raise UsageError(f"model {self.model.name!r} does not know its data shape; "
                             "set `shape` in the spec, e.g. shape: [2]")
        if model_shape and math.prod(self.shape) != math.prod(model_shape):
            raise UsageError(f"`shape` {list(self.shape)} holds {math.prod(self.shape)} values per sample but "
                             f"model {self.model.name!r} has {math.prod(model_shape)} ({list(model_shape)}); "
                             "fix `shape` or drop it to use the model's")
        for g in self.guidance:
            with component_errors(g, "checking the pipeline"):
                g.check(self.model, self.process, self.shape)

    @classmethod
    def from_spec(cls, source: str | Path | Mapping[str, Any] | PipelineSpecBase,
                  overrides: Sequence[str] = (), *, registry: Registry | None = None) -> Pipeline:
        """Assemble from a spec file, a mapping or a validated spec, with ``--set``-style overrides."""
        registry = registry or get_registry()
        spec = source if isinstance(source, PipelineSpecBase) else load_spec(source, overrides, registry=registry)
        if is_classifier_spec(spec):
            raise UsageError("this spec trains a noise-conditional classifier (it has `classifier`, no model or "
                             "sampler): train it with `diffcore train`, then guide a score model's sampling with it: "
                             "guidance: [{type: classifier, run: RUN}]")

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

    def networks(self) -> list[torch.nn.Module]:
        """The score model and the networks the guidance evaluates (a classifier, say)."""
        return [self.model, *(net for g in self.guidance for net in g.networks())]

    def conditional_score_fn(self) -> ConditionalScoreFn:
        """``(x, t, cond) -> score`` of the model, with every guidance applied in order (the first
        wraps the model's score)."""
        fn = score_function(self.model, self.process)
        for g in self.guidance:
            with component_errors(g, "wrapping the score"):
                fn = _reported(g, g.guide(fn, self.process))
        return fn

    def score_fn(self, cond: Condition | Tensor | None = None) -> ScoreFn:
        """The guided score ``(x, t) -> (B, *event)`` with the condition (or labels ``(B,)``) bound."""
        fn, bound = self.conditional_score_fn(), Condition.of(cond)
        return lambda x, t: fn(x, t, bound)

    def to(self, device: torch.device | str) -> Pipeline:
        """Move the model and the guidance's networks (and anything they hold) to ``device``."""
        for net in self.networks():
            net.to(device)
        return self

    def check_condition(self, cond: Condition, num: int) -> None:
        """Refuse, before sampling, a condition without one row per sample, or without a field a
        guidance component reads, or with values one refuses; and labels outside a conditional
        model's range."""
        cond.check(num, self.shape)
        for g in self.guidance:
            missing = sorted(g.needs - cond.given())
            if missing:
                how = _HOW_TO_GIVE.get(missing[0], f"diffcore.Condition has the fields {', '.join(FIELDS)}")
                raise UsageError(f"guidance {g.name!r} needs {' and '.join(missing)}: {how}")
            with component_errors(g, "checking the condition"):
                g.check_condition(cond)
        unread = sorted(cond.given() - self.condition_reads())
        if unread:
            them = "it" if len(unread) == 1 else "them"
            state = "" if self.model.conditional else " is unconditional"
            raise UsageError(
                f"the condition has {' and '.join(unread)}, but nothing in this pipeline reads {them} (model "
                f"{self.model.name!r}{state}; guidance: {', '.join(g.name for g in self.guidance) or 'none'}): use "
                f"{'; '.join(_USED_BY[f] for f in unread if f in _USED_BY) or 'a guidance that reads ' + them}, "
                f"or leave {them} out")
        self._check_labels(cond)

    def condition_reads(self) -> frozenset[str]:
        """The condition fields this pipeline reads: labels for a class-conditional model, and what
        each guidance reads (:attr:`~diffcore.guidance.Guidance.reads`)."""
        read = {"labels"} if self.model.conditional else set()
        for g in self.guidance:
            read |= g.needs if g.reads is None else g.reads
        return frozenset(read)

    def _check_labels(self, cond: Condition) -> None:
        null = self.model.null_label
        if cond.labels is not None and null is not None:
            bad = (cond.labels < 0) | (cond.labels > null)
            if bool(bad.any()):
                raise UsageError(f"model {self.model.name!r} has classes 0 to {null - 1} (and {null}, its null label), "
                                 f"but labels such as {int(cond.labels[bad][0])} were given")

    def iter_samples(self, num: int, *, seed: int, batch_size: int | None = None, start: int = 0,
                     latents: Tensor | None = None, x_start: Tensor | None = None, t_start: float | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                     cond: Condition | Tensor | None = None, callback: Callback | None = None,
                     threads: Threads = None) -> Iterator[tuple[int, SampleResult]]:
        """Yield ``(first index, result)`` for chunks of at most ``batch_size`` samples.

        Samples ``start, ..., start + num - 1`` are drawn; sample ``i`` depends only on ``seed`` and
        ``i`` (the noise is counter-based), so the chunking never changes the result of a fixed-step
        sampler. ``x_start`` ``(num, *shape)`` replaces the prior draw at ``T``: states at ``t_start``
        (default ``T``; ``t_min < t_start <= T``), from which the sampler runs instead of from ``T``
        (partial-range sampling, e.g. SDEdit's noised data of :func:`diffcore.partial.noise_to`, or the
        latents of :meth:`encode`; any sampler, through :func:`diffcore.partial.starting_at`); the
        sampler's own noise is still drawn per sample from ``seed``. ``latents`` is the older name of
        ``x_start`` (give one of them). ``cond``, a
        :class:`~diffcore.condition.Condition` or class labels ``(num,)``, is checked before the first
        chunk and sliced along with the chunks. Each result counts the network forward passes per
        sample (``forward_passes``): a pass over ``k B`` rows of a chunk of ``B`` counts ``k``.
        ``threads``: torch's CPU threads for each chunk, a count or ``"auto"`` (default: the cores other
        processes leave idle; see :mod:`diffcore.threads`).
        """
        if num < 1:
            raise UsageError(f"the number of samples must be positive, got {num}")
        if latents is not None and x_start is not None:
            raise UsageError("give the start states once: x_start (latents is its older name), not both")
        what = "latents" if latents is not None else "x_start"
        x_start = latents if latents is not None else x_start
        if t_start is not None and x_start is None:
            raise UsageError(f"t_start = {t_start!r} needs x_start, the states (num, *shape) at t_start that the "
                             "sampler starts from (e.g. data noised to t_start by diffcore.partial.noise_to, as "
                             "in SDEdit, or the latents of Pipeline.encode)")
        process = starting_at(self.process, t_start) if t_start is not None else self.process
        if x_start is not None:
            if not isinstance(x_start, Tensor) or tuple(x_start.shape) != (num, *self.shape):
                got = f"shape {tuple(x_start.shape)}" if isinstance(x_start, Tensor) else f"a {type(x_start).__name__}"
                raise UsageError(f"{what} have {got} but {num} samples of shape {self.shape} need "
                                 f"{(num, *self.shape)}")
            check_data(x_start, what)
        condition = Condition.of(cond)
        self.check_condition(condition, num)
        device = torch.device(device) if device is not None else _model_device(self.model)
        self.to(device)
        batch_size = batch_size or num
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        for lo in range(0, num, batch_size):
            hi = min(num, lo + batch_size)
            noise = NoiseSource.range(seed, start + lo, start + hi, device)
            if x_start is not None:
                x_T = x_start[lo:hi].to(device=device, dtype=dtype)
            else:
                x_T = self.process.prior_sample(noise, self.shape, dtype=dtype)
            chunk_cond = condition.rows(lo, hi).to(device, dtype)
            with cpu_threads(threads):
                with torch.no_grad(), count_rows(self.networks()) as rows, component_errors(self.sampler, "sampling"):
                    result = self.sampler.sample(self.score_fn(chunk_cond), process, x_T, noise, callback=callback)
                result = check_result(result, x_T, self.sampler)
                x = result.x
                with torch.no_grad():
                    for g in self.guidance:
                        with component_errors(g, "finishing the samples"):
                            x = g.finalize(x, chunk_cond, self.process)
            result = check_result(replace(result, x=x, forward_passes=rows[0] // (hi - lo)), x_T, self.sampler)
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
        passes = [r.forward_passes for _, r in parts if r.forward_passes is not None]
        return SampleResult(x=x, nfe=max(r.nfe for _, r in parts), steps=max(steps) if steps else None,
                            forward_passes=max(passes) if passes else None)

    def encode(self, x: Tensor, *, cond: Condition | Tensor | None = None, t_start: float | None = None,
               t_end: float | None = None, options: SolverParams | None = None, batch_size: int | None = None,
               device: torch.device | str | None = None) -> EncodeResult:
        """Encode data ``x`` ``(n, *shape)`` at ``t_start`` (default ``t_min``) into latents at ``t_end``
        (default ``T``) by the probability-flow ODE (:func:`diffcore.encoding.encode`; Song et al. 2021,
        Sec. 4.3), with the model's score: the condition's labels go to a conditional model, the
        guidance is not applied (the flow of the model itself, which the ``probability_flow`` sampler
        without guidance inverts). Decode with
        ``pipe.with_sampler("probability_flow").sample(n, seed=0, x_start=result.latent, t_start=t_end)``.

        ``batch_size`` rows per solve (default all; an adaptive solve couples the rows of a chunk within
        its tolerance); the result's latents are in ``x``'s dtype on ``device`` (default the model's),
        its ``nfe`` and ``steps`` the largest over chunks, ``seconds`` their sum.
        """
        check_data(x)
        if tuple(x.shape[1:]) != self.shape:
            raise UsageError(f"the data have shape {tuple(x.shape)} but samples of this pipeline have shape "
                             f"{self.shape}: give (n, {', '.join(map(str, self.shape))})")
        num = x.shape[0]
        t0, t1 = encode_interval(self.process, t_start, t_end)
        condition = Condition.of(cond)
        condition.check(num, self.shape)
        self._check_labels(condition)
        device = torch.device(device) if device is not None else _model_device(self.model)
        self.to(device)
        batch_size = batch_size or num
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        fn = score_function(self.model, self.process)
        parts = []
        for lo in range(0, num, batch_size):
            hi = min(num, lo + batch_size)
            chunk_cond = condition.rows(lo, hi).to(device, x.dtype)
            parts.append(encode(lambda xs, ts, c=chunk_cond: fn(xs, ts, c), self.process,
                                x[lo:hi].to(device), t_start=t0, t_end=t1, options=options))
        return EncodeResult(latent=torch.cat([p.latent for p in parts]), t_start=t0, t_end=t1,
                            nfe=max(p.nfe for p in parts), steps=max(p.steps for p in parts),
                            seconds=sum(p.seconds for p in parts))


_USED_BY = {
    "labels": "a class-conditional model, or guidance cfg or classifier, for labels",
    "mask": "guidance inpaint or dps for a mask",
    "observed": "guidance inpaint or dps for observed values",
}
_HOW_TO_GIVE = {
    "labels": "pass --label Y or --labels LABELS.npy to `diffcore sample` (Python: cond=Condition(labels=...))",
    "mask": "pass --mask MASK.npy (True where observed) to `diffcore sample` (Python: Condition(mask=...))",
    "observed": "pass --observed VALUES.npy to `diffcore sample` (Python: Condition(observed=...))",
}


@contextmanager
def count_rows(networks: Sequence[torch.nn.Module]) -> Iterator[list[int]]:
    """Count the rows (batch entries) of every forward pass of ``networks`` while the block runs:
    yields a one-element list holding the running total."""
    total = [0]

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        total[0] += int(first.shape[0]) if isinstance(first, Tensor) and first.ndim else 1

    handles = [net.register_forward_pre_hook(hook) for net in networks]
    try:
        yield total
    finally:
        for handle in handles:
            handle.remove()


def _reported(guidance: Guidance, fn: ConditionalScoreFn) -> ConditionalScoreFn:
    """``fn`` with its failures reported as the guidance's (see :func:`component_errors`)."""
    def guided(x: Tensor, t: Tensor, cond: Condition) -> Tensor:
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

