"""Langevin dynamics with the score (seed 002, sections 4.3-4.4; seed 001, "Langevin dynamics").

``langevin``: the unadjusted Langevin algorithm with the estimated score (seed 002, section 4.3)::

    x <- x + h s(x, t_min) + sqrt(2 h) z,

run for ``iterations`` steps at the fixed time ``t_min``, i.e. on ``p_{t_min}``, the nearly noise-free
marginal. It starts from whatever ``x_T`` the pipeline gives: the process's prior draw (standard
deviation ``prior_std``: 1 for vp and subvp, about ``sigma_max`` for ve), or the ``latents`` passed to
``Pipeline.sample``, so the initial spread is chosen by passing latents. Seed 002 (section 4.3) explains
why it fails on multimodal data: modes separated by low-density regions are a bottleneck, so each chain
stays in the mode whose basin it started in and the mode weights follow the initial spread, not the data.

``annealed_langevin``: annealed Langevin dynamics (NCSN, Song & Ermon 2019; seed 002, section 4.4):
``L`` noise levels from large to small, ``steps_per_level`` ULA steps at each with
``h_i = h_L sigma_i^2 / sigma_L^2``. For a process ``x_t = alpha_t x_0 + sigma_t z`` the noise level of
time ``t`` is ``sigma(t) / alpha(t)`` (the noise of ``x_t / alpha_t = x_0 + (sigma / alpha) z``), and the
levels are the times of a grid (default ``logsnr``: levels on a geometric ladder, from ``T`` to ``t_min``).
At level ``t_i`` the chain targets ``p_{t_i}`` with ``h_i = eps sigma(t_i)^2 / sigma(t_L)^2`` (on VE,
where ``alpha = 1``, exactly NCSN's rule). Moving from level ``t_{i-1}`` to ``t_i`` the state is rescaled
by ``alpha(t_i) / alpha(t_{i-1})``, so the whole run is NCSN's annealed Langevin dynamics on ``x / alpha``
(a ULA step on ``x`` with ``h`` is one on ``x / alpha`` with ``h / alpha^2``), mapped back; on VE it
changes nothing. Without it, on VP and sub-VP the means ``alpha(t) mu`` of the targets move outwards
as ``t`` falls while the steps ``h ~ sigma^2`` become too short to follow, and the samples end up
contracted by ``alpha`` of the level where the chains stop moving.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.component import Params, describe
from diffcore.grids import GridKind, time_grid
from diffcore.limits import MAX_STEPS, Levels, Steps, check_total
from diffcore.noise import NoiseSource
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, LinearGaussianProcess, ScoreFn, require_linear_gaussian
from diffcore.sampler import Callback, Sampler
from diffcore_samplers.common import alpha_sigma


def ula_step(score_fn: ScoreFn, x: Tensor, t: float, h: float, z: Tensor) -> Tensor:
    """One unadjusted Langevin step at time ``t`` (seed 002, section 4.3):
    ``x + h s(x, t) + sqrt(2 h) z``; ``x`` and ``z`` ``(B, *event)``. One score evaluation."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    return x + h * score_fn(x, tt) + (2.0 * h) ** 0.5 * z


class LangevinParams(Params):
    """Parameters of ``langevin``."""

    step_size: float = Field(0.01, gt=0, description="Step size h of x <- x + h s + sqrt(2h) z.")
    iterations: Steps = Field(1000, description="Langevin steps at t_min, one score evaluation each.")


class Langevin(Sampler):
    """Plain (unadjusted) Langevin dynamics at the smallest noise level, for comparison: on multimodal data its mode
    weights depend on where it starts (Song & Ermon 2019, Sec. 3); prefer a diffusion sampler.

    Plain Langevin dynamics at ``t_min`` from the pipeline's ``x_T`` (module docstring): works for any
    process. ``NFE = iterations``; noise of iteration ``k``: ``noise.normal(event, step=k)``; ``x_T``
    ``(B, *event)``. Not a diffusion sampler: on multimodal data its mode weights depend on the start.
    """

    name = "langevin"
    Params = LangevinParams
    params: LangevinParams

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        x, event = x_T, tuple(x_T.shape[1:])
        for k in range(p.iterations):
            x = ula_step(score_fn, x, process.t_min, p.step_size, noise.normal(event, step=k, dtype=x.dtype))
            self.report(callback, k, process.t_min, x)
        return x, p.iterations


class AnnealedLangevinParams(Params):
    """Parameters of ``annealed_langevin``."""

    levels: Levels = Field(100, description="Number L of noise levels, from T down to t_min.")
    steps_per_level: Steps = Field(100, description="Langevin steps at each level, one score evaluation each.")
    grid: GridKind = Field("logsnr", description="Times of the levels: logsnr (noise levels sigma/alpha on a "
                           "geometric ladder, NCSN's), uniform, quadratic or karras.")
    rho: float = Field(7.0, ge=1.0, le=1000.0, description="Exponent of the karras grid (EDM's 7; below 1 the "
                       "levels crowd at high noise; as it grows the grid tends to logsnr's).")
    step_size: float | None = Field(None, gt=0, description="eps = h_L, the step at the last level (NCSN); the "
                                    "step at level i is eps sigma_i^2 / sigma_L^2. Default: step_ratio sigma_L^2.")
    step_ratio: float = Field(0.05, gt=0, lt=2, description="h_i / sigma_i^2 when step_size is not given: the "
                              "step relative to the noise variance of each level.")

    @model_validator(mode="after")
    def _one_step_rule(self) -> AnnealedLangevinParams:
        if self.step_size is not None and "step_ratio" in self.model_fields_set:
            raise ValueError("give step_size (eps, the step at the last level) or step_ratio (h_i / sigma_i^2), "
                             "not both")
        check_total("levels x steps_per_level (the Langevin steps of the run)", self.levels * self.steps_per_level,
                    MAX_STEPS, "lower levels or steps_per_level")
        return self


class AnnealedLangevin(Sampler):
    """Annealed Langevin dynamics (NCSN, Song & Ermon 2019): Langevin steps at a decreasing ladder of noise levels, for
    models trained with the ``ncsn`` objective; costs ``levels x steps_per_level`` evaluations.

    Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1) on the noise levels
    ``sigma(t_i) / alpha(t_i)`` of a grid of ``levels`` times from ``T`` to ``t_min``. Needs a
    linear-Gaussian process.

    The module docstring derives it (seed 002, section 4.4).

    The step ``h_i = eps sigma_i^2 / sigma_L^2`` keeps ``h_i / sigma_i^2`` fixed (``step_ratio``, 0.05 by
    default, unless ``step_size`` gives ``eps``). ``NFE = levels * steps_per_level``; callbacks see one step
    per level (at its time); noise of Langevin step ``k`` of level ``i``:
    ``noise.normal(event, step=i * steps_per_level + k)``. ``x_T`` ``(B, *event)``.
    """

    name = "annealed_langevin"
    Params = AnnealedLangevinParams
    params: AnnealedLangevinParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def step_sizes(self, lg: LinearGaussianProcess) -> list[tuple[float, float]]:
        """``(t_i, h_i)`` for each level, from ``T`` to ``t_min``, on the linear-Gaussian process ``lg``."""
        p = self.params
        times = time_grid(lg, p.levels - 1, p.grid, rho=p.rho).tolist()
        sigmas = [alpha_sigma(lg, t)[1] for t in times]
        ratio = p.step_ratio if p.step_size is None else p.step_size / sigmas[-1] ** 2
        return [(t, ratio * sigma**2) for t, sigma in zip(times, sigmas, strict=True)]

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        per_level = self.params.steps_per_level
        lg = require_linear_gaussian(process, describe(self))
        x, event = x_T, tuple(x_T.shape[1:])
        alpha_prev: float | None = None
        for i, (t, h) in enumerate(self.step_sizes(lg)):
            alpha = alpha_sigma(lg, t)[0]
            if alpha_prev is not None:  # carry the chain to the new level: the dynamics of x / alpha
                x = x * (alpha / alpha_prev)
            alpha_prev = alpha
            for k in range(per_level):
                x = ula_step(score_fn, x, t, h, noise.normal(event, step=i * per_level + k, dtype=x.dtype))
            self.report(callback, i, t, x)
        return x, self.params.levels
