"""Euler-Maruyama on the reverse-time SDE (seed 001; seed 000, "Euler-Maruyama")."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler, uniform_grid


class EulerMaruyamaParams(Params):
    steps: int = Field(1000, gt=0, description="Number of steps from T to t_min.")
    denoise_last: bool = Field(True, description="Skip the noise of the last step.")


class EulerMaruyama(Sampler):
    """``x <- x - [f(x, t) - g(t)^2 s(x, t)] h + g(t) sqrt(h) z`` on a uniform grid from ``T`` to ``t_min``.

    Works for any process (it only needs ``f``, ``g`` and the score). One score evaluation per step;
    strong order 1/2, weak order 1. With ``denoise_last`` the final step adds no noise (score_sde's
    ``noise_removal``).
    """

    name = "euler_maruyama"
    Params = EulerMaruyamaParams
    params: EulerMaruyamaParams

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        steps = self.params.steps
        grid = uniform_grid(process.T, process.t_min, steps, device=torch.device("cpu")).tolist()
        x, batch, event = x_T, x_T.shape[0], tuple(x_T.shape[1:])
        for i in range(steps):
            t, h = grid[i], grid[i] - grid[i + 1]
            tt = torch.full((batch,), t, device=x.device, dtype=x.dtype)
            g = float(process.diffusion(torch.tensor([t], dtype=torch.float64)))  # g(t): the same for every sample
            x = x - (process.drift(x, tt) - (g * g) * score_fn(x, tt)) * h
            if not (self.params.denoise_last and i == steps - 1):
                x = x + (g * h**0.5) * noise.normal(event, step=i, dtype=x.dtype)
            self.report(callback, i, grid[i + 1], x)
        return x, steps
