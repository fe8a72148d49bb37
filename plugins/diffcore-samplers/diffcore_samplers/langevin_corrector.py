"""The Langevin corrector with the signal-to-noise step size (Song et al. 2021, Algorithm 4 and
Appendix G; seed 001, "Langevin dynamics"; seed 002, section 4.3).

At a fixed time ``t`` the corrector runs ``n_steps`` steps of Langevin dynamics on ``p_t``
(seed 002, ULA with the estimated score)::

    x <- x + eps s(x, t) + sqrt(2 eps) z,        eps = 2 alpha_i (snr ||z|| / ||s(x, t)||)^2,

choosing the step so that the ratio of the signal ``eps ||s||`` to the noise ``sqrt(2 eps) ||z||`` is
``snr``. ``alpha_i`` is score_sde's ``1 - beta_i`` for VP: here, for any linear-Gaussian process,
``alpha_{t_prev|t}^2 = (alpha(t_prev) / alpha(t))^2`` over the grid interval ``[t, t_prev]`` just
crossed (``1`` on VE and on processes that are not linear-Gaussian).

The norms. score_sde averages ``||z||`` and ``||s||`` over the batch, which makes a sample depend on
the rest of the batch; taken per sample they blow up the step wherever ``s`` is near zero (at the
centre of a mode), throwing samples far out. Here, for a linear-Gaussian process, both are replaced
by their reference values in ``D`` event dimensions, ``||z||^2 = D`` and ``||s||^2 = D / sigma(t)^2``
(the squared score norm of pure noise at that level, which bounds the Fisher information
``E||grad log p_t||^2`` of ``p_t``, a Gaussian convolution, from above)::

    eps = 2 alpha_i snr^2 sigma(t)^2,

the same step for every sample, batch-independent and bounded (on VE it is NCSN's ``h ~ sigma^2``
rule). For a process that is not linear-Gaussian (``sigma`` unknown) the norms are taken per sample,
and a sample whose score is exactly zero is left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffcore.noise import NoiseSource
from diffcore.process import LinearGaussianProcess, ScoreFn
from diffcore.utils import bcast
from diffcore_samplers.common import alpha_sigma


def corrector_alpha(process: LinearGaussianProcess | None, t: float, t_prev: float) -> float:
    """``alpha_i`` of the step-size rule at ``t`` after the grid interval ``[t, t_prev]``:
    ``(alpha(t_prev) / alpha(t))^2`` for a linear-Gaussian process (``process.linear_gaussian``,
    looked up once by the caller), ``1`` for ``None`` (a process that is not one)."""
    if process is None or t_prev == t:
        return 1.0
    return (alpha_sigma(process, t_prev)[0] / alpha_sigma(process, t)[0]) ** 2


@dataclass(frozen=True)
class LangevinCorrector:
    """``n_steps`` Langevin steps at one time with the step size set by ``snr`` (module docstring).

    Stateless: :meth:`correct` keeps everything in local variables. Each step costs one score
    evaluation and draws ``noise.normal(event, step=index * n_steps + j, stream=stream)``.
    """

    snr: float
    n_steps: int = 1
    stream: str = "corrector"

    def step_size(self, score: Tensor, z: Tensor, alpha: float) -> Tensor:
        """Per-sample ``eps = 2 alpha (snr ||z|| / ||s||)^2`` ``(B,)`` (zero where ``s = 0``), in float64:
        the rule for processes without a known ``sigma(t)``."""
        s_norm2 = score.reshape(score.shape[0], -1).to(torch.float64).square().sum(1)
        z_norm2 = z.reshape(z.shape[0], -1).to(torch.float64).square().sum(1)
        eps = 2.0 * alpha * self.snr**2 * z_norm2 / s_norm2.clamp_min(torch.finfo(torch.float64).tiny)
        return torch.where(s_norm2 > 0, eps, torch.zeros_like(eps))

    def correct(self, score_fn: ScoreFn, x: Tensor, t: float, alpha: float, noise: NoiseSource,
                index: int, sigma: float | None = None) -> Tensor:
        """Run the corrector on ``x`` ``(B, *event)`` at time ``t``; ``index`` numbers the call (the
        grid point) so that every corrector step draws its own noise. ``sigma``: the process's
        ``sigma(t)`` (the step ``2 alpha snr^2 sigma^2``); ``None``: per-sample norms."""
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        event = tuple(x.shape[1:])
        for j in range(self.n_steps):
            score = score_fn(x, tt)
            z = noise.normal(event, step=index * self.n_steps + j, stream=self.stream, dtype=x.dtype)
            if sigma is not None:
                eps = torch.full((x.shape[0],), 2.0 * alpha * self.snr**2 * sigma**2, dtype=torch.float64,
                                 device=x.device)
            else:
                eps = self.step_size(score, z, alpha)
            x = x + bcast(eps, x) * score + bcast(torch.sqrt(2.0 * eps), x) * z
        return x
