"""Sub-variance-preserving SDE (Song et al. 2021, eq. 34; seed 001)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffcore_processes.vp import VPSDE, VPParams


class SubVPParams(VPParams):
    """The linear schedule of :class:`~diffcore_processes.vp.VPParams`; a class of its own so that its
    log-SNR range is checked with sub-VP's ``sigma``."""


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021): VP's drift with less noise at every time (its variance is bounded by VP's), which
    gives better likelihoods; the prior at ``T`` is a standard normal.

    ``dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw``.

    Same ``alpha(t) = exp(-B/2)`` as VP, smaller noise: ``sigma(t) = 1 - exp(-B)`` (so
    ``sigma^2 <= 1 - alpha^2``, the variance of VP, at every ``t``).
    """

    name = "subvp"
    Params = SubVPParams
    params: SubVPParams

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.integrated_beta(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(-self.beta(t) * torch.expm1(-2.0 * self.integrated_beta(t)))

    def half_log_snr(self, t: Tensor) -> Tensor:
        big_b = self.integrated_beta(t)
        return -0.5 * big_b - torch.log(-torch.expm1(-big_b))

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`half_log_snr`: ``alpha / sigma = a / (1 - a^2) = e^lam`` with ``a = exp(-B/2)``
        is the quadratic ``a^2 + u a - 1 = 0`` in ``a`` (``u = e^-lam``), whose positive root gives
        ``B = -2 log a = 2 asinh(u / 2)``: no cancellation at large ``lam``, where ``a`` is within
        rounding of 1 (the form through ``log a`` returned ``t = 0`` from ``lam`` ~ 37 on)."""
        return self.t_from_integrated_beta(2.0 * torch.asinh(0.5 * torch.exp(-lam)))
