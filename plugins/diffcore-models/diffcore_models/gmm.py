"""The analytic Gaussian-mixture score model: exact ``grad log p_t`` under any linear-Gaussian process.

If ``p_0 = sum_k w_k N(mu_k, diag(v_k))`` and ``x_t = alpha(t) x_0 + sigma(t) z``, then
``p_t = sum_k w_k N(alpha mu_k, diag(alpha^2 v_k + sigma^2))`` and

    grad log p_t(x) = sum_k r_k(x) (alpha mu_k - x) / (alpha^2 v_k + sigma^2),

with responsibilities ``r_k(x)`` proportional to ``w_k N(x; alpha mu_k, alpha^2 v_k + sigma^2)``.
It is the ground truth every sampler, objective and likelihood routine is checked against.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from einops import rearrange
from pydantic import Field, PositiveFloat, model_validator
from torch import Tensor

from diffcore.component import Params
from diffcore.errors import CompatibilityError
from diffcore.limits import MAX_COMPONENTS, MAX_EVENT_VALUES, check_total
from diffcore.metrics import mode_weights
from diffcore.model import ScoreModel
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, LinearGaussianProcess, require_linear_gaussian
from diffcore.utils import bcast


class GMMParams(Params):
    """``K`` components (at most :data:`~diffcore.limits.MAX_COMPONENTS`) in ``D`` dimensions, ``K D`` at
    most :data:`~diffcore.limits.MAX_EVENT_VALUES`; weights are normalised to sum to one."""

    weights: list[PositiveFloat] = Field(min_length=1, max_length=MAX_COMPONENTS,
                                         description="K positive mixture weights.")
    means: list[Annotated[list[float], Field(max_length=MAX_EVENT_VALUES)]] = Field(
        min_length=1, max_length=MAX_COMPONENTS, description="K means of dimension D.")
    variances: list[Annotated[list[PositiveFloat], Field(max_length=MAX_EVENT_VALUES)]] = Field(
        min_length=1, max_length=MAX_COMPONENTS, description="K diagonal variances of dimension D.")

    @model_validator(mode="after")
    def _shapes(self) -> GMMParams:
        k = len(self.weights)
        if len(self.means) != k or len(self.variances) != k:
            raise ValueError(f"weights, means and variances need one entry per component; got "
                             f"{k} weights, {len(self.means)} means, {len(self.variances)} variances")
        d = len(self.means[0])
        if d == 0:
            raise ValueError("means must have at least one dimension")
        for i, (m, v) in enumerate(zip(self.means, self.variances, strict=True)):
            if len(m) != d or len(v) != d:
                raise ValueError(f"component {i}: mean has {len(m)} and variance {len(v)} entries, "
                                 f"expected {d} (the dimension of component 0)")
        check_total("components x dimension (the values of means)", k * d, MAX_EVENT_VALUES,
                    "use fewer components or dimensions")
        return self


class GaussianMixture(ScoreModel):
    """Analytic Gaussian mixture with diagonal covariances; output kind ``score``.

    Buffers: ``log_weights`` ``(K,)``, ``means`` ``(K, D)``, ``variances`` ``(K, D)``. Data of any
    shape whose elements number ``D`` is accepted (flattened with einops).
    """

    name = "gmm"
    Params = GMMParams
    params: GMMParams
    requires = frozenset({LINEAR_GAUSSIAN})
    output = "score"
    log_weights: Tensor
    means: Tensor
    variances: Tensor

    def __init__(self, params: GMMParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        log_w = torch.log(torch.tensor(self.params.weights, dtype=torch.float64))
        self.register_buffer("log_weights", log_w - torch.logsumexp(log_w, 0))  # no overflow of sum(w)
        self.register_buffer("means", torch.tensor(self.params.means, dtype=torch.float64))
        self.register_buffer("variances", torch.tensor(self.params.variances, dtype=torch.float64))
        self.event_shape = (self.dim,)
        self._process: LinearGaussianProcess | None = None

    @property
    def dim(self) -> int:
        return len(self.params.means[0])

    @property
    def num_components(self) -> int:
        return len(self.params.weights)

    def bind(self, process: ForwardProcess) -> None:
        self._process = require_linear_gaussian(process, "the gmm model")

    def _marginal_terms(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``diff = x - alpha mu_k`` and ``var = alpha^2 v_k + sigma^2``, both ``(B, K, D)``, and the
        component log-densities ``(B, K)``, computed in ``x``'s dtype."""
        if self._process is None:
            raise CompatibilityError("gmm is not bound to a process; assemble it in a Pipeline or call bind()")
        flat = rearrange(x, "b ... -> b (...)")
        if flat.shape[1] != self.dim:
            raise ValueError(f"gmm has dimension {self.dim} but x has {flat.shape[1]} elements per sample")
        alpha = bcast(self._process.alpha(t), flat)[:, :, None]  # (B, 1, 1)
        sigma = bcast(self._process.sigma(t), flat)[:, :, None]
        means, variances = self.means.to(x.dtype), self.variances.to(x.dtype)
        var = alpha**2 * variances + sigma**2  # (B, K, D)
        diff = flat[:, None, :] - alpha * means
        log_comp = self.log_weights.to(x.dtype) - 0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return diff, var, log_comp

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        diff, var, log_comp = self._marginal_terms(x, t)
        resp = torch.softmax(log_comp, dim=1)[:, :, None]  # (B, K, 1)
        score = -(resp * diff / var).sum(1)  # no matmul: the result for a row never depends on the batch
        return score.reshape(x.shape)

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact ``log p_t(x)``, shape ``(B,)``."""
        return torch.logsumexp(self._marginal_terms(x, t)[2], dim=1)

    @property
    def component_weights(self) -> Tensor:
        """The mixture weights ``(K,)`` (float64, summing to one)."""
        return self.log_weights.exp()

    def mode_weights(self, x: Tensor) -> Tensor:
        """Fraction ``(K,)`` of the samples ``x`` ``(n, D)`` whose most probable component is each
        component (:func:`diffcore.metrics.mode_weights`)."""
        return mode_weights(x, self.log_weights, self.means, self.variances)

    def sample_data(self, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact draws from ``p_0``: samples ``(num, D)`` (float64) and their component labels ``(num,)``."""
        labels = torch.multinomial(self.log_weights.exp().cpu(), num, replacement=True, generator=generator)
        z = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        x = self.means.cpu()[labels] + self.variances.cpu()[labels].sqrt() * z
        return x, labels
