"""Predictor-corrector sampling (Song et al. 2021, Algorithms 1-3; seed 001, "SDEs" and "Langevin dynamics").

On the time grid ``T = t_0 > t_1 > ... > t_N = t_min``, step ``i`` first *predicts* ``x`` at
``t_{i+1}`` from ``t_i`` with one step of a numerical solver of the reverse SDE, then *corrects* it
with ``corrector_steps`` steps of Langevin dynamics on ``p_{t_{i+1}}`` (score-based MCMC; the paper's
Algorithms 2 and 3 order: predictor, then corrector at the new time, so the last correction is at
``t_min``). Predictors (each a :class:`~diffcore_samplers.common.Predictor` of :mod:`diffcore_samplers.common`:
the step shared with its standalone sampler, declared once with the capabilities it needs):

- ``reverse_diffusion``: :data:`~diffcore_samplers.common.REVERSE_DIFFUSION`
  (:func:`~diffcore_samplers.common.reverse_diffusion_step`);
- ``euler_maruyama``: :data:`~diffcore_samplers.common.EULER_MARUYAMA`
  (:func:`~diffcore_samplers.common.euler_maruyama_step`, the update of the ``euler_maruyama`` sampler);
- ``ancestral``: :data:`~diffcore_samplers.common.ANCESTRAL`
  (:func:`~diffcore_samplers.common.ancestral_step`; linear-Gaussian processes only);
- ``none``: the identity; with the Langevin corrector this is annealed Langevin dynamics on the grid
  with the signal-to-noise step size (Song et al. 2021, "corrector only").

Corrector: ``langevin`` (:class:`~diffcore_samplers.langevin_corrector.LangevinCorrector`) or ``none``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor

from diffcore.component import describe
from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.limits import MAX_STEPS, Steps, check_total
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler
from diffcore_samplers.common import PREDICTORS, alpha_sigma
from diffcore_samplers.langevin_corrector import LangevinCorrector, corrector_alpha


class PCParams(GridParams):
    """Parameters of ``pc``."""

    steps: Steps = Field(1000, description="Grid steps from T to t_min; each costs one score evaluation for "
                       "the predictor plus one per corrector step.")
    grid: GridKind = Field("uniform", description="Time grid: uniform (score_sde's), quadratic, logsnr or karras.")
    predictor: Literal["reverse_diffusion", "euler_maruyama", "ancestral", "none"] = Field(
        "reverse_diffusion", description="Predictor: one step of a reverse-SDE solver per grid step, or none.")
    corrector: Literal["langevin", "none"] = Field("langevin", description="Corrector: Langevin dynamics with the "
                                                    "signal-to-noise step size, or none.")
    snr: float = Field(0.16, gt=0, description="Signal-to-noise ratio r of the Langevin step size eps = 2 alpha_i "
                       "(r ||z|| / ||s||)^2 with the reference norms ||z||^2 = D, ||s||^2 = D / sigma(t)^2, i.e. "
                       "eps = 2 alpha_i r^2 sigma(t)^2 (score_sde's r = 0.16 for VE).")
    corrector_steps: Steps = Field(1, description="Langevin steps after each predictor step.")
    denoise_last: bool = Field(True, description="Skip the noise of the last predictor step (score_sde's "
                               "noise_removal); the corrector at t_min, if any, still follows it.")

    @model_validator(mode="after")
    def _something_to_do(self) -> PCParams:
        if self.predictor == "none" and self.corrector == "none":
            raise ValueError("predictor and corrector are both 'none': the sampler would return the prior draw; "
                             "choose a predictor, a corrector, or both")
        if self.corrector == "langevin":
            check_total("steps x corrector_steps (the Langevin steps of the run)", self.steps * self.corrector_steps,
                        MAX_STEPS, "lower steps or corrector_steps")
        return self


class PC(Sampler):
    """Predictor-corrector sampling (Song et al. 2021, Sec. 4.2): a reverse-SDE predictor step then Langevin corrector
    steps at each time; score_sde's sampler for VE models.

    Predictor-corrector sampler: any predictor followed by an optional Langevin corrector at every
    grid time (module docstring). Defaults follow score_sde's VE setting: ``reverse_diffusion`` +
    ``langevin``, ``snr = 0.16``, one corrector step.

    ``NFE = steps * (p + c)`` with ``p = 1`` for a predictor (``0`` for ``none``) and ``c =
    corrector_steps`` for ``langevin`` (``0`` for ``none``). Noise: the predictor of step ``i`` draws
    ``noise.normal(event, step=i)`` (the same as its standalone sampler, so ``corrector: none``
    reproduces it), corrector step ``j`` after it ``noise.normal(event, step=i * corrector_steps + j,
    stream="corrector")``. ``x_T`` ``(B, *event)``. With ``predictor: ancestral`` the process must be
    linear-Gaussian (checked when the pipeline is assembled).
    """

    name = "pc"
    Params = PCParams
    params: PCParams

    def requirements(self) -> dict[str, str]:
        """The sampler's own requirements and those of its predictor (the ``requires`` of the
        :class:`~diffcore_samplers.common.Predictor`, which its standalone sampler declares too)."""
        needs = super().requirements()
        predictor = PREDICTORS.get(self.params.predictor)
        if predictor is not None:
            who = f"{describe(self)} with predictor {self.params.predictor!r}"
            for capability in sorted(predictor.requires):
                needs.setdefault(capability, who)
        return needs

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        predictor = PREDICTORS.get(p.predictor)
        predict = predictor.prepare(process, f"{describe(self)} with predictor {p.predictor!r}") if predictor else None
        corrector = LangevinCorrector(p.snr, p.corrector_steps) if p.corrector == "langevin" else None
        times = time_grid(process, p.steps, p.grid, rho=p.rho).tolist()
        # the corrector's alpha_i and sigma(s) at each grid step, from the typed process looked up once
        lg = process.linear_gaussian
        corrections = [(corrector_alpha(lg, s, t), alpha_sigma(lg, s)[1] if lg is not None else None)
                       for t, s in pairwise(times)] if corrector is not None else []
        x, event = x_T, tuple(x_T.shape[1:])
        for i in range(p.steps):
            t, s = times[i], times[i + 1]
            if predict is not None:
                last = i == p.steps - 1
                z = None if (last and p.denoise_last) else noise.normal(event, step=i, dtype=x.dtype)
                x = predict(score_fn, x, t, s, z)
            if corrector is not None:
                alpha_i, sigma = corrections[i]
                x = corrector.correct(score_fn, x, s, alpha_i, noise, i, sigma=sigma)
            self.report(callback, i, s, x)
        return x, p.steps
