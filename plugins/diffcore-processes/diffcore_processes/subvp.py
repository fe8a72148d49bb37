"""Sub-variance-preserving SDE (Song et al. 2021, eq. 34; seed 001)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffcore_processes.vp import VPSDE


class SubVPSDE(VPSDE):
    """``dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw``.

    Same ``alpha(t) = exp(-B/2)`` as VP, smaller noise: ``sigma(t) = 1 - exp(-B)`` (so
    ``sigma^2 <= 1 - alpha^2``, the variance of VP, at every ``t``).
    """

    name = "subvp"

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.integrated_beta(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(-self.beta(t) * torch.expm1(-2.0 * self.integrated_beta(t)))

    def half_log_snr(self, t: Tensor) -> Tensor:
        big_b = self.integrated_beta(t)
        return -0.5 * big_b - torch.log(-torch.expm1(-big_b))

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        # alpha / sigma = a / (1 - a^2) = e^lam with a = exp(-B/2): the positive root of a quadratic.
        log_a = lam + math.log(2.0) - torch.log1p(torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam)))
        return self.t_from_integrated_beta(-2.0 * log_a)
