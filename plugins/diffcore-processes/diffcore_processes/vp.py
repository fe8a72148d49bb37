"""Variance-preserving SDE (seed 000, "Example 2"; seed 001; Song et al. 2021, eq. 32)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.process import LinearGaussianProcess, ProcessParams


class VPParams(ProcessParams):
    """Linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)`` (score_sde's defaults)."""

    beta_min: float = Field(0.1, gt=0, description="beta(0).")
    beta_max: float = Field(20.0, gt=0, description="beta(1).")

    def check(self) -> None:
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be at least beta_min ({self.beta_min})")


class VPSDE(LinearGaussianProcess):
    """Variance-preserving SDE (Song et al. 2021), the continuous-time DDPM: the data shrink towards zero while noise
    grows, reaching a standard normal prior at ``T``. The usual choice for data scaled to about [-1, 1].

    ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``, the continuous DDPM.

    With ``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``:
    ``alpha(t) = exp(-B/2)``, ``sigma(t)^2 = 1 - exp(-B)`` (exact for data at ``t = 0``),
    ``lambda(t) = log(alpha / sigma) = -log(expm1(B)) / 2``.
    """

    name = "vp"
    Params = VPParams
    params: VPParams
    noise_field = "beta_max"
    min_noise_field = "beta_min"

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t)``, shape ``(B,)``."""
        return self.params.beta_min + t * (self.params.beta_max - self.params.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """``B(t) = int_0^t beta(s) ds``, shape ``(B,)``."""
        return self.params.beta_min * t + 0.5 * (self.params.beta_max - self.params.beta_min) * t**2

    def t_from_integrated_beta(self, big_b: Tensor) -> Tensor:
        """Inverse of :meth:`integrated_beta` (the stable root of the quadratic)."""
        b0, db = self.params.beta_min, self.params.beta_max - self.params.beta_min
        return 2.0 * big_b / (b0 + torch.sqrt(b0**2 + 2.0 * db * big_b))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def half_log_snr(self, t: Tensor) -> Tensor:
        """``-log(expm1(B)) / 2``, written ``-(B + log(1 - e^-B)) / 2`` so that a large ``B`` cannot overflow."""
        big_b = self.integrated_beta(t)
        return -0.5 * (big_b + torch.log(-torch.expm1(-big_b)))

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        return self.t_from_integrated_beta(torch.log1p(torch.exp(-2.0 * lam)))
