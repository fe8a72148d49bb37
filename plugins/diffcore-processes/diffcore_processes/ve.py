"""Variance-exploding SDE (seed 000, "Example 1"; seed 001; Song et al. 2021, eq. 30)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from diffcore.process import LinearGaussianProcess, ProcessParams


class VESDE(LinearGaussianProcess):
    """Variance-exploding SDE (Song et al. 2021), the continuous-time NCSN: noise of growing scale from ``sigma_min``
    to ``sigma_max`` is added to unscaled data; the prior at ``T`` is a normal of standard deviation ``sigma_max``,
    which must exceed the largest distance between data points.

    ``dx = sqrt(d sigma^2(t) / dt) dw`` with score_sde's geometric noise scale
    ``s(t) = sigma_min (sigma_max / sigma_min)^t``, i.e. ``g(t) = s(t) sqrt(2 log(sigma_max/sigma_min))``.

    ``alpha(t) = 1``. ``sigma(t)`` is the *exact* std of this SDE started from the data at ``t = 0``:
    ``sigma(t)^2 = s(t)^2 - sigma_min^2``. (score_sde's ``marginal_prob`` reports ``s(t)``, which
    differs by the ``sigma_min^2`` it neglects; the SDE, and so every sampler, is the same.)
    """

    name = "ve"

    class Params(ProcessParams):
        sigma_min: float = Field(0.01, gt=0, description="Smallest noise scale s(0).")
        sigma_max: float = Field(50.0, gt=0, description="Largest noise scale s(1); choose it above "
                                 "the largest distance between data points.")
        t_min: float = Field(1e-5, gt=0, description="Smallest time samplers reach (score_sde: 1e-5 for VE).")

        def check(self) -> None:
            if self.sigma_max <= self.sigma_min:
                raise ValueError(f"sigma_max ({self.sigma_max}) must exceed sigma_min ({self.sigma_min})")

    params: Params
    noise_field = "sigma_max"
    min_noise_field = "sigma_min"

    @property
    def _log_ratio(self) -> float:
        return math.log(self.params.sigma_max / self.params.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.exp(-self.half_log_snr(t))

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.exp(math.log(self.params.sigma_min) + self._log_ratio * t) * math.sqrt(2.0 * self._log_ratio)

    def half_log_snr(self, t: Tensor) -> Tensor:
        """``-log sigma(t)`` with ``sigma(t)^2 = s(t)^2 (1 - (sigma_min / s(t))^2)``, in logs: no overflow
        of ``s(t)^2`` or of ``(sigma_max / sigma_min)^(2t)`` however wide the noise range."""
        two_lt = 2.0 * self._log_ratio * t
        return -(math.log(self.params.sigma_min) + 0.5 * two_lt + 0.5 * torch.log(-torch.expm1(-two_lt)))

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        return torch.log1p(torch.exp(-2.0 * lam) / self.params.sigma_min**2) / (2.0 * self._log_ratio)
