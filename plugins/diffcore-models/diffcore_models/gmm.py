"""The analytic Gaussian-mixture score model: exact ``grad log p_t`` under any linear-Gaussian process.

If ``p_0 = sum_k w_k N(mu_k, diag(v_k))`` and ``x_t = alpha(t) x_0 + sigma(t) z``, then
``p_t = sum_k w_k N(alpha mu_k, diag(alpha^2 v_k + sigma^2))`` and

    grad log p_t(x) = sum_k r_k(x) (alpha mu_k - x) / (alpha^2 v_k + sigma^2),

with responsibilities ``r_k(x)`` proportional to ``w_k N(x; alpha mu_k, alpha^2 v_k + sigma^2)``.
It is the ground truth every sampler, objective and likelihood routine is checked against.

With ``labels`` (one class per component) the mixture is class-conditional: ``p_0(x | y)`` is the
mixture of the components of class ``y`` (their weights renormalised), so its exact score is the
sum above over those components only, and the null label (``C``, the number of classes) gives the
whole mixture. The analytic classifier :class:`GaussianMixtureClassifier` computes the exact class
posterior ``p_t(y | x) = sum_{k in y} r_k(x)``. Together they are the ground truth of guidance.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from einops import rearrange
from pydantic import Field, PositiveFloat, model_validator
from torch import Tensor

from diffcore.classifier import NoiseClassifier
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
    labels: list[Annotated[int, Field(ge=0, lt=MAX_COMPONENTS)]] | None = Field(
        None, max_length=MAX_COMPONENTS, description="The class of each component (0 to C-1, every class used): "
        "a class-conditional mixture whose null label C means the whole mixture. None: unconditional.")

    @model_validator(mode="after")
    def _shapes(self) -> GMMParams:
        k = len(self.weights)
        if self.labels is not None:
            if len(self.labels) != k:
                raise ValueError(f"labels needs one class per component: got {len(self.labels)} labels for {k} "
                                 "components")
            unused = sorted(set(range(max(self.labels) + 1)) - set(self.labels))
            if unused:
                raise ValueError(f"labels must use every class from 0 to {max(self.labels)}; no component has "
                                 f"class {unused[0]}")
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


PRIOR_REACH = 10.0
"""How many prior standard deviations a component's marginal at ``T`` may lie from the prior (its mean)
or exceed it (its standard deviation) before the mixture is refused: samplers start from the prior,
and a component beyond this reach gets none of the samples (``1e-23`` of them at 10)."""


def check_prior_reach(means: Tensor, variances: Tensor, process: LinearGaussianProcess, name: str) -> None:
    """Refuse a mixture that ``process`` does not carry to its prior by ``T``: a component mean
    ``alpha(T) mu`` or standard deviation ``sqrt(alpha(T)^2 v + sigma(T)^2)`` beyond :data:`PRIOR_REACH`
    prior standard deviations (the prior is the marginal at ``T`` of unit-variance data). Such a
    component was silently dropped from the samples (a mean of 1e20, a variance of 1e30)."""
    t = torch.tensor([process.T], dtype=torch.float64)
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    prior_std = process.prior_std()
    offset = (alpha * means.abs()).amax(1) / prior_std  # (K,)
    spread = torch.sqrt(alpha**2 * variances + sigma**2).amax(1) / prior_std
    for field, ratio in (("means", offset), ("variances", spread)):
        k = int(torch.argmax(ratio))
        if not bool(torch.isfinite(ratio[k])) or float(ratio[k]) > PRIOR_REACH:
            raise CompatibilityError(
                f"model.{field}: component {k} reaches {float(ratio[k]):.3g} standard deviations of the prior of "
                f"process {name!r} at T (the limit is {PRIOR_REACH:g}), so samplers starting from the prior would "
                "never produce it and the samples would silently lack it; scale the data to about unit size "
                "(a data set's `scale`), or use a process that adds more noise (ve with a sigma_max above the "
                "data's spread)")


class GaussianMixture(ScoreModel):
    """The exact score of a Gaussian mixture under any linear-Gaussian process: ground truth for testing samplers,
    objectives and likelihoods; with ``labels``, a class-conditional mixture for guidance.

    Analytic Gaussian mixture with diagonal covariances; output kind ``score``.

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

    @property
    def num_classes(self) -> int | None:
        """The number of classes ``C`` of a labelled mixture, ``None`` without labels."""
        return None if self.params.labels is None else max(self.params.labels) + 1

    @property
    def null_label(self) -> int | None:
        return self.num_classes

    def bind(self, process: ForwardProcess) -> None:
        self._process = lg = require_linear_gaussian(process, f"the {self.name} {type(self).__name__}")
        check_prior_reach(self.means, self.variances, lg, process.name)

    def _marginal_terms(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``diff = x - alpha mu_k`` and ``var = alpha^2 v_k + sigma^2``, both ``(B, K, D)``, and the
        component log-densities ``(B, K)``, computed in ``x``'s dtype."""
        if self._process is None:
            raise CompatibilityError(f"{self.name} is not bound to a process; assemble it in a Pipeline or "
                                     "call bind()")
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

    def _of_class(self, log_comp: Tensor, cond: Tensor | None) -> Tensor:
        """``log_comp`` ``(B, K)`` with the components outside each row's class at ``-inf`` (rows with
        the null label, or ``cond=None``, keep every component)."""
        if cond is None or self.params.labels is None:
            return log_comp
        labels = torch.tensor(self.params.labels, device=log_comp.device)
        null = cond.long() == int(self.num_classes or 0)
        keep = (labels[None, :] == cond.long()[:, None]) | null[:, None]
        return log_comp.masked_fill(~keep, -math.inf)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        diff, var, log_comp = self._marginal_terms(x, t)
        resp = torch.softmax(self._of_class(log_comp, cond), dim=1)[:, :, None]  # (B, K, 1)
        score = -(resp * diff / var).sum(1)  # no matmul: the result for a row never depends on the batch
        return score.reshape(x.shape)

    def log_prob(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Exact ``log p_t(x)`` (or ``log p_t(x | y)`` with labels ``cond`` ``(B,)``), shape ``(B,)``."""
        log_comp = self._of_class(self._marginal_terms(x, t)[2], cond)
        if cond is not None and self.params.labels is not None:  # renormalise the class's weights
            log_comp = log_comp - self._of_class(self.log_weights.to(x.dtype).expand_as(log_comp), cond).logsumexp(
                1, keepdim=True)
        return torch.logsumexp(log_comp, dim=1)

    def class_log_posterior(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact ``log p_t(y | x)`` ``(B, C)`` of a labelled mixture: ``log sum_{k of class y} r_k(x)``."""
        if self.params.labels is None:
            raise CompatibilityError(f"{self.name}: the class posterior needs labels (one class per component)")
        log_resp = torch.log_softmax(self._marginal_terms(x, t)[2], dim=1)  # (B, K)
        labels = torch.tensor(self.params.labels, device=x.device)
        classes = torch.arange(self.num_classes or 0, device=x.device)
        member = labels[None, :] == classes[:, None]  # (C, K)
        return torch.logsumexp(log_resp[:, None, :].masked_fill(~member[None], -math.inf), dim=2)

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


class GMMClassifierParams(GMMParams):
    """The mixture of the ``gmm`` model with ``labels`` required."""

    labels: list[Annotated[int, Field(ge=0, lt=MAX_COMPONENTS)]] = Field(  # type: ignore[assignment]
        max_length=MAX_COMPONENTS, description="The class of each component (0 to C-1, every class used).")


class GaussianMixtureClassifier(NoiseClassifier):
    """The exact noise-conditional classifier of a labelled ``gmm`` model: ground truth for classifier guidance.

    The exact noise-conditional classifier of a labelled Gaussian mixture: the class posterior
    ``p_t(y | x) = sum_{k of class y} r_k(x)`` of the perturbed mixture.

    Logits ``log p_t(y | x)`` ``(B, C)`` with the responsibilities ``r_k`` of the module docstring.
    Classifier guidance with it at scale 1 over the unlabelled ``gmm`` samples exactly ``p(x | y)``,
    the ground truth for guidance."""

    name = "gmm"
    Params = GMMClassifierParams
    params: GMMClassifierParams

    def __init__(self, params: GMMClassifierParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.mixture = GaussianMixture(**self.params.model_dump())
        self.event_shape = self.mixture.event_shape

    @property
    def num_classes(self) -> int:
        return max(self.params.labels) + 1

    def bind(self, process: ForwardProcess) -> None:
        self.mixture.bind(process)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.class_log_posterior(x, t)
