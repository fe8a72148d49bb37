"""Samplers: turn prior draws at ``T`` into data samples at ``t_min`` with a score function.

Samplers are stateless: :meth:`Sampler.sample` keeps everything it needs in local variables, so one
sampler object serves concurrent callers. Every sampler counts score evaluations (NFE) and stops
with :class:`~diffcore.errors.NonFiniteError` at the first NaN or Inf, naming the step and time.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcore.component import Component, check_compatible, component_errors, describe
from diffcore.errors import NonFiniteError, PluginError
from diffcore.messages import type_name
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn, require_linear_gaussian
from diffcore.utils import bcast


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports to a callback after each step: state ``x`` ``(B, *event)`` at time ``t``."""

    step: int
    t: float
    x: Tensor


Callback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SampleResult:
    """Samples ``x`` ``(B, *event)``, the number of (guided) score evaluations, of solver steps
    (``None`` where the solver does not report them; an adaptive ODE solve reports its accepted steps)
    and of network forward passes per sample, filled in by the pipeline: classifier-free guidance's batched pass
    over ``2 B`` rows counts 2, a classifier's pass 1 more (``None`` where not counted)."""

    x: Tensor
    nfe: int
    steps: int | None
    forward_passes: int | None = None


def check_result(result: object, x_T: Tensor, sampler: Component) -> SampleResult:
    """Check what a sampler returned where it crosses into core: a :class:`SampleResult` whose
    samples have the start states' shape, dtype and device (a missing row or a broadcastable shape
    would otherwise be written as if correct) and a non-negative NFE. Raises
    :class:`~diffcore.errors.PluginError` naming the sampler."""
    who = f"sampler {describe(sampler)} ({type(sampler).__module__})"
    if not isinstance(result, SampleResult):
        raise PluginError(f"{who} returned {type_name(result)}, not a diffcore.sampler.SampleResult")
    x = result.x
    if not isinstance(x, Tensor):
        raise PluginError(f"{who} returned {type_name(x)} as samples; they must be a torch.Tensor")
    if x.shape != x_T.shape or x.dtype != x_T.dtype or x.device != x_T.device:
        raise PluginError(f"{who} returned samples of shape {tuple(x.shape)}, {x.dtype} on {x.device} from start "
                          f"states of shape {tuple(x_T.shape)}, {x_T.dtype} on {x_T.device}; they must match")
    counts = (result.steps, result.forward_passes)
    if not isinstance(result.nfe, int) or result.nfe < 0 or not all(c is None or isinstance(c, int) for c in counts):
        raise PluginError(f"{who} reported nfe={result.nfe!r}, steps={result.steps!r}, "
                          f"forward_passes={result.forward_passes!r}; expected counts (int)")
    return result


class CountedScore:
    """The score function a sampler sees: counts evaluations, knows the step in progress, and
    rejects a non-finite score (a non-finite state gives one) with the step, the evaluation and the time.

    The base :class:`Sampler` makes one per call and passes :meth:`on_step` as the callback that
    :meth:`Sampler.report` calls, so ``step`` is the index (as callbacks number steps) of the
    solver step under way. An adaptive ODE solve reports no intermediate steps: it is step 0.
    """

    def __init__(self, score_fn: ScoreFn, callback: Callback | None = None) -> None:
        self.score_fn = score_fn
        self.callback = callback
        self.nfe = 0
        self.step = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        s = self.score_fn(x, t)  # a NaN in x shows in s: one check per evaluation, on the output
        check_finite(s, "the score", step=self.step, t=t, evaluation=self.nfe)
        return s

    def on_step(self, info: StepInfo) -> None:
        self.step = info.step + 1
        if self.callback is not None:
            self.callback(info)


def check_finite(x: Tensor, what: str, *, step: int, t: Tensor | float, evaluation: int | None = None) -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or Inf.

    A NaN or Inf anywhere makes the sum non-finite, so one reduction settles the common case; only a
    non-finite sum (a NaN, an Inf, or an overflow of finite values) is checked element by element."""
    if bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        t_val = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        at = f"score evaluation {evaluation}, " if evaluation is not None else ""
        raise NonFiniteError(
            f"NaN or Inf in {what} at step {step} ({at}t={t_val:.6g}) for {bad} of {x.shape[0]} samples; "
            "check the model, or use more steps or a larger t_min",
            step=step, t=t_val, evaluation=evaluation,
        )


def uniform_grid(t_start: float, t_end: float, steps: int, *, device: torch.device,
                 dtype: torch.dtype = torch.float64) -> Tensor:
    """``steps + 1`` equally spaced times from ``t_start`` to ``t_end`` (either direction)."""
    return torch.linspace(t_start, t_end, steps + 1, device=device, dtype=dtype)


class Sampler(Component, abc.ABC):
    """Base of all samplers.

    Implementers write :meth:`run`; the base checks compatibility, counts NFE, checks the final state
    and packs the :class:`SampleResult`. ``requires`` names the capabilities the process must
    declare (e.g. ``{"linear_gaussian"}`` for samplers written against ``alpha`` and ``sigma``).
    """

    def sample(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
               *, callback: Callback | None = None) -> SampleResult:
        """Integrate from ``x_T`` ``(B, *event)`` at ``process.T`` down to ``process.t_min``.

        ``noise`` must have one row per sample of ``x_T``; samplers draw all their randomness from
        it (``noise.normal(event_shape, step=i)``), never from a global generator.
        """
        check_compatible(self, process)
        if noise.batch_size != x_T.shape[0]:
            raise ValueError(f"noise has {noise.batch_size} rows but x_T has {x_T.shape[0]}")
        counted = CountedScore(score_fn, callback)
        with component_errors(self, "sampling"):
            out = self.run(counted, process, x_T, noise, counted.on_step)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise PluginError(f"sampler {describe(self)} ({type(self).__module__}): run() returned {type_name(out)}; "
                              "it must return (samples, steps)")
        x, steps = out
        result = check_result(SampleResult(x=x, nfe=counted.nfe, steps=steps), x_T, self)
        check_finite(x, f"the final samples of sampler {self.name!r}", step=max(counted.step - 1, 0), t=process.t_min)
        return result

    @abc.abstractmethod
    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int | None]:
        """Return the samples ``(B, *event)`` and the number of steps taken (``None``: unknown)."""

    @staticmethod
    def report(callback: Callback | None, step: int, t: float, x: Tensor) -> None:
        """Check the state at the end of ``step`` (0-based) and pass it to the callback, if any."""
        check_finite(x, "the state", step=step, t=t)
        if callback is not None:
            callback(StepInfo(step=step, t=t, x=x))


def tweedie_denoise(score_fn: ScoreFn, process: ForwardProcess, x: Tensor, t: float) -> Tensor:
    """The posterior mean ``E[x_0 | x_t] = (x + sigma(t)^2 s(x, t)) / alpha(t)`` (Tweedie's formula),
    ``x`` ``(B, *event)``: the optional final denoising step of a sampler (one score evaluation).
    Needs a linear-Gaussian process."""
    lg = require_linear_gaussian(process, "denoising with Tweedie's formula")
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    alpha, sigma = bcast(lg.alpha(tt), x), bcast(lg.sigma(tt), x)
    return (x + sigma**2 * score_fn(x, tt)) / alpha

