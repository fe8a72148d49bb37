"""What the objectives share: drawing times and perturbing data with a linear-Gaussian process."""

from __future__ import annotations

import torch
from torch import Tensor

from diffcore.condition import Condition
from diffcore.model import ScoreModel, score_function
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, LinearGaussianProcess
from diffcore.utils import bcast


def uniform_times(process: ForwardProcess, noise: NoiseSource, dtype: torch.dtype) -> Tensor:
    """``(B,)`` times uniform on ``[t_min, T]``."""
    u = noise.uniform((), step=0, stream="t", dtype=torch.float64)
    return (process.t_min + (process.T - process.t_min) * u).to(dtype)


def perturb(process: LinearGaussianProcess, x0: Tensor, t: Tensor, noise: NoiseSource, *,
            alpha: Tensor | None = None, sigma: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``x_t = alpha(t) x0 + sigma(t) eps`` and ``eps``, both shaped like ``x0``; ``alpha`` and
    ``sigma`` ``(B,)`` are the process's at ``t``, passed when the caller has them already."""
    eps = noise.normal(tuple(x0.shape[1:]), step=0, stream="eps", dtype=x0.dtype)
    alpha = process.alpha(t) if alpha is None else alpha
    sigma = process.sigma(t) if sigma is None else sigma
    return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps, eps


def sum_event(x: Tensor) -> Tensor:
    """Sum over every dimension but the batch: ``(B, *event) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(1)


def score_on_noisy_data(model: ScoreModel, process: LinearGaussianProcess, x0: Tensor, noise: NoiseSource,
                        cond: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """For the implicit (Hyvarinen) objectives: ``t`` ``(B,)``, samples ``x_t`` of ``p_t`` that
    require grad, and the model's score at them (differentiable in ``x_t``)."""
    t = uniform_times(process, noise, x0.dtype)
    x_t, _ = perturb(process, x0, t, noise)
    x_t = x_t.detach().requires_grad_(True)
    return t, x_t, score_function(model, process)(x_t, t, Condition(labels=cond))
