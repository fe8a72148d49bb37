"""Predictor-corrector sampling (Song et al. 2021, Algorithms 1-3; seed 001, "SDEs" and "Langevin dynamics").

On the time grid ``T = t_0 > t_1 > ... > t_N = t_min``, step ``i`` first *predicts* ``x`` at
``t_{i+1}`` from ``t_i`` with one step of a numerical solver of the reverse SDE, then *corrects* it
with ``corrector_steps`` steps of Langevin dynamics on ``p_{t_{i+1}}`` (score-based MCMC; the paper's
Algorithms 2 and 3 order: predictor, then corrector at the new time, so the last correction is at
``t_min``). Predictors (each a pure ``step(score_fn, process, x, t, s, z)`` shared with its standalone
sampler):

- ``reverse_diffusion``: :func:`diffcore_samplers.reverse_diffusion.step`;
- ``euler_maruyama``: :func:`euler_maruyama_step` (the update of the ``euler_maruyama`` sampler);
- ``ancestral``: :func:`diffcore_samplers.ancestral.step` (linear-Gaussian processes only);
- ``none``: the identity; with the Langevin corrector this is annealed Langevin dynamics on the grid
  with the signal-to-noise step size (Song et al. 2021, "corrector only").

Corrector: ``langevin`` (:class:`~diffcore_samplers.langevin_corrector.LangevinCorrector`) or ``none``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.noise import NoiseSource
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, LinearGaussianProcess, ScoreFn
from diffcore.sampler import Callback, Sampler
from diffcore.utils import bcast
from diffcore_samplers import ancestral, reverse_diffusion
from diffcore_samplers.ancestral import alpha_sigma
from diffcore_samplers.langevin_corrector import LangevinCorrector, corrector_alpha

PredictorStep = Callable[[ScoreFn, ForwardProcess, Tensor, float, float, "Tensor | None"], Tensor]
"""``(score_fn, process, x, t, s, z) -> x_s``: one predictor step from ``t`` to ``s < t``; ``z``
``(B, *event)`` is the step's standard normal noise, ``None`` for a step without noise."""


def euler_maruyama_step(score_fn: ScoreFn, process: ForwardProcess, x: Tensor, t: float, s: float,
                        z: Tensor | None) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE (seed 001) from ``t`` to ``s < t``:
    ``x - [f(x, t) - g(t)^2 s(x, t)] h + g(t) sqrt(h) z`` with ``h = t - s``. One score evaluation."""
    reverse = process.reverse(score_fn)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    h = t - s
    x = x - reverse.drift(x, tt) * h
    return x if z is None else x + bcast(reverse.diffusion(tt), x) * (h**0.5) * z


PREDICTORS: dict[str, PredictorStep | None] = {
    "reverse_diffusion": reverse_diffusion.step,
    "euler_maruyama": euler_maruyama_step,
    "ancestral": ancestral.step,
    "none": None,
}
"""The predictor step of each ``predictor`` choice (``None``: no predictor)."""


class PCParams(GridParams):
    """Parameters of ``pc``."""

    steps: int = Field(1000, gt=0, description="Grid steps from T to t_min; each costs one score evaluation for "
                       "the predictor plus one per corrector step.")
    grid: GridKind = Field("uniform", description="Time grid: uniform (score_sde's), quadratic, logsnr or karras.")
    predictor: Literal["reverse_diffusion", "euler_maruyama", "ancestral", "none"] = Field(
        "reverse_diffusion", description="Predictor: one step of a reverse-SDE solver per grid step, or none.")
    corrector: Literal["langevin", "none"] = Field("langevin", description="Corrector: Langevin dynamics with the "
                                                    "signal-to-noise step size, or none.")
    snr: float = Field(0.16, gt=0, description="Signal-to-noise ratio r of the Langevin step size eps = 2 alpha_i "
                       "(r ||z|| / ||s||)^2 with the reference norms ||z||^2 = D, ||s||^2 = D / sigma(t)^2, i.e. "
                       "eps = 2 alpha_i r^2 sigma(t)^2 (score_sde's r = 0.16 for VE).")
    corrector_steps: int = Field(1, ge=1, description="Langevin steps after each predictor step.")
    denoise_last: bool = Field(True, description="Skip the noise of the last predictor step (score_sde's "
                               "noise_removal); the corrector at t_min, if any, still follows it.")

    @model_validator(mode="after")
    def _something_to_do(self) -> PCParams:
        if self.predictor == "none" and self.corrector == "none":
            raise ValueError("predictor and corrector are both 'none': the sampler would return the prior draw; "
                             "choose a predictor, a corrector, or both")
        return self


class PC(Sampler):
    """Predictor-corrector sampler: any predictor followed by an optional Langevin corrector at every
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

    def __init__(self, params: PCParams | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        if self.params.predictor == "ancestral":
            # an instance attribute shadows the class default, so the pipeline's check sees it
            object.__setattr__(self, "requires", frozenset({LINEAR_GAUSSIAN}))

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        predict = PREDICTORS[p.predictor]
        corrector = LangevinCorrector(p.snr, p.corrector_steps) if p.corrector == "langevin" else None
        times = time_grid(process, p.steps, p.grid, rho=p.rho).tolist()
        x, event = x_T, tuple(x_T.shape[1:])
        for i in range(p.steps):
            t, s = times[i], times[i + 1]
            if predict is not None:
                last = i == p.steps - 1
                z = None if (last and p.denoise_last) else noise.normal(event, step=i, dtype=x.dtype)
                x = predict(score_fn, process, x, t, s, z)
            if corrector is not None:
                sigma = alpha_sigma(process, s)[1] if isinstance(process, LinearGaussianProcess) else None
                x = corrector.correct(score_fn, x, s, corrector_alpha(process, s, t), noise, i, sigma=sigma)
            self.report(callback, i, s, x)
        return x, p.steps
