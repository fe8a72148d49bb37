"""Euler-Maruyama on the reverse-time SDE (seed 001; seed 000, "Euler-Maruyama")."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.limits import Steps
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler, uniform_grid
from diffcore_samplers.common import EULER_MARUYAMA


class EulerMaruyamaParams(Params):
    steps: Steps = Field(1000, description="Number of steps from T to t_min.")
    denoise_last: bool = Field(True, description="Skip the noise of the last step.")


class EulerMaruyama(Sampler):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021): the simplest sampler, for any process; needs hundreds
    to a thousand steps.

    ``x <- x - [f(x, t) - g(t)^2 s(x, t)] h + g(t) sqrt(h) z`` on a uniform grid from ``T`` to ``t_min``.

    Works for any process (it only needs ``f``, ``g`` and the score). One score evaluation per step;
    strong order 1/2, weak order 1. With ``denoise_last`` the final step adds no noise (score_sde's
    ``noise_removal``). ``pc``'s ``euler_maruyama`` predictor is the same update
    (:func:`~diffcore_samplers.common.euler_maruyama_step`).
    """

    name = "euler_maruyama"
    Params = EulerMaruyamaParams
    params: EulerMaruyamaParams
    requires = EULER_MARUYAMA.requires

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        steps = self.params.steps
        grid64 = uniform_grid(process.T, process.t_min, steps, device=torch.device("cpu"))
        grid = grid64.tolist()
        # The coefficients at every grid time in one call each, as Python floats: g(t) is the same for
        # every sample, and so is f(t) for a linear process (f(x, t) = f(t) x). Each step is then a
        # score evaluation and two fused tensor updates.
        g = process.diffusion(grid64[:-1]).tolist()
        lg = process.linear_gaussian
        f = lg.drift_coef(grid64[:-1]).tolist() if lg is not None else None
        x, batch, event = x_T, x_T.shape[0], tuple(x_T.shape[1:])
        for i in range(steps):
            t, h = grid[i], grid[i] - grid[i + 1]
            tt = torch.full((batch,), t, device=x.device, dtype=x.dtype)
            score = score_fn(x, tt)
            # x - [f(x, t) - g^2 s] h, the drift folded into a scale of x when it is linear; the in-place
            # updates act on the new tensor of this step, never on one a callback was given
            x = x * (1.0 - f[i] * h) if f is not None else x - process.drift(x, tt) * h
            x.add_(score, alpha=g[i] * g[i] * h)
            if not (self.params.denoise_last and i == steps - 1):
                x.add_(noise.normal(event, step=i, dtype=x.dtype), alpha=g[i] * h**0.5)
            self.report(callback, i, grid[i + 1], x)
        return x, steps
