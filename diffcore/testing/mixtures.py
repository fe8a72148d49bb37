"""Exact conditionals and posteriors of Gaussian mixtures: the ground truth of the guidance tests
and of ``benchmarks/guidance_mixtures.py``.

A :class:`Mixture` is ``p(x) = sum_k w_k N(x; mu_k, S_k)`` with full covariances ``S_k``, in float64.
Built from the parameters of the ``gmm`` model (diagonal ``S_k``) it gives:

- :meth:`Mixture.of_class`: the class-conditional ``p(x | y)`` of a labelled mixture (the components
  of class ``y``, weights renormalised), what classifier-free and classifier guidance must sample;
- :func:`linear_observation_posterior`: the posterior ``p(x | y)`` of a linear observation
  ``y = A x + n``, ``n ~ N(0, s^2 I)``, again a Gaussian mixture (below), what ``dps`` approximates;
- :func:`inpainting_posterior`: the noiseless observation of some coordinates (``A`` selects them,
  ``s = 0``), what ``inpaint`` approximates;
- :meth:`Mixture.perturbed`: ``p_t`` under ``x_t = alpha x_0 + sigma z``, whose gradient is the exact
  score a guided score is compared with;
- the mixtures and observations the guidance tests and benchmark share (:data:`LABELLED_MIXTURE`,
  :data:`CONCENTRIC_MIXTURE`, :class:`LinearObservation` and the problems after it).

The posterior of a mixture under a linear-Gaussian observation (Bishop 2006, *Pattern Recognition
and Machine Learning*, eqs. 2.113-2.117 per component, the covariance in its Woodbury / Kalman form;
the component weights by Bayes' rule with the marginal likelihood of eq. 2.115)::

    G_k        = A S_k A^T + s^2 I                                       (m, m)
    w_k | y    ∝ w_k N(y; A mu_k, G_k)
    mu_k | y   = mu_k + S_k A^T G_k^{-1} (y - A mu_k)
    S_k | y    = S_k - S_k A^T G_k^{-1} A S_k

With ``s = 0`` and ``A`` selecting the coordinates ``O`` of diagonal ``S_k``, this is the inpainting
posterior: weights ``∝ w_k N(y_O; mu_k,O, S_k,O)``, the observed coordinates equal to ``y`` (zero
variance), the unobserved means and variances unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from diffcore.condition import Condition
from diffcore.metrics import assign_modes, energy_distance, mode_weights
from diffcore.testing.conformance import energy_distance_floor


@dataclass(eq=False)  # not frozen: ReferenceModel's ``name`` is a plain attribute
class Mixture:
    """``sum_k w_k N(mu_k, S_k)``: ``log_weights`` ``(K,)`` (normalised), ``means`` ``(K, D)``,
    ``covariances`` ``(K, D, D)`` (symmetric positive semi-definite), all float64 on the CPU.

    It has the members of :class:`diffcore.testing.conformance.ReferenceModel`, so
    :func:`~diffcore.testing.conformance.energy_distance_floor` takes it.
    """

    log_weights: Tensor
    means: Tensor
    covariances: Tensor
    name: str = "mixture"

    @classmethod
    def diagonal(cls, params: Mapping[str, Any], name: str = "gmm") -> Mixture:
        """The mixture of ``gmm`` model parameters (``weights`` ``K``, ``means`` and ``variances``
        ``(K, D)``; ``labels`` ignored): diagonal covariances."""
        w = torch.tensor(params["weights"], dtype=torch.float64)
        variances = torch.tensor(params["variances"], dtype=torch.float64)
        return cls(torch.log(w / w.sum()), torch.tensor(params["means"], dtype=torch.float64),
                   torch.diag_embed(variances), name)

    @classmethod
    def class_conditional(cls, params: Mapping[str, Any], label: int) -> Mixture:
        """``p(x | y = label)`` of labelled ``gmm`` parameters (``labels``: one class per component)."""
        return cls.diagonal(params).of_class(params["labels"], label)

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def component_weights(self) -> Tensor:
        """The weights ``(K,)``, summing to one."""
        return self.log_weights.exp()

    @property
    def variances(self) -> Tensor:
        """The diagonals ``(K, D)`` of the covariances."""
        return torch.diagonal(self.covariances, dim1=1, dim2=2)

    def of_class(self, labels: Sequence[int], label: int) -> Mixture:
        """The components whose class in ``labels`` (one per component) is ``label``, weights
        renormalised: ``p(x | y = label)``. Its components are numbered as they come."""
        keep = torch.tensor([k for k, c in enumerate(labels) if c == label], dtype=torch.long)
        if keep.numel() == 0:
            raise ValueError(f"no component has class {label}")
        log_w = self.log_weights[keep]
        return Mixture(log_w - torch.logsumexp(log_w, 0), self.means[keep], self.covariances[keep],
                       f"{self.name} | y={label}")

    def sample_data(self, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact draws ``(num, D)`` and their components ``(num,)``. The covariance roots come from an
        eigendecomposition whose eigenvalues below ``1e-12`` times the largest are rounding and set to
        zero, so singular covariances (the observed coordinates of an inpainting posterior) are
        sampled exactly too (those coordinates at their mean to about 1e-15)."""
        labels = torch.multinomial(self.component_weights, num, replacement=True, generator=generator)
        z = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        values, vectors = torch.linalg.eigh(self.covariances)
        values = torch.where(values > 1e-12 * values.amax(-1, keepdim=True), values, 0.0)
        roots = vectors * values.sqrt()[:, None, :]  # (K, D, D): roots @ roots^T = S_k
        return self.means[labels] + torch.einsum("nij,nj->ni", roots[labels], z), labels

    def assign(self, x: Tensor) -> Tensor:
        """The most probable component ``(n,)`` of each sample ``x`` ``(n, D)``, by the diagonal of each
        covariance (:func:`diffcore.metrics.assign_modes`; variances clamped at ``1e-12``, so a
        coordinate every component pins to one value, an observed one, counts alike for all)."""
        return assign_modes(x, self.log_weights, self.means, self.variances.clamp_min(1e-12))

    def mode_weights(self, x: Tensor) -> Tensor:
        """The fraction ``(K,)`` of the samples ``x`` ``(n, D)`` assigned to each component (:meth:`assign`)."""
        return mode_weights(x, self.log_weights, self.means, self.variances.clamp_min(1e-12))

    def mean(self) -> Tensor:
        """The mixture's mean ``(D,)``."""
        return (self.component_weights[:, None] * self.means).sum(0)

    def perturbed(self, alpha: float, sigma: float) -> Mixture:
        """The law of ``alpha x + sigma z`` for ``x`` of this mixture and ``z ~ N(0, I)``: the marginal
        ``p_t`` of a linear-Gaussian process at a time with those ``alpha``, ``sigma``."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return Mixture(self.log_weights, alpha * self.means, alpha**2 * self.covariances + sigma**2 * eye,
                       f"{self.name} at alpha={alpha:.4g}, sigma={sigma:.4g}")

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``(n,)`` of ``x`` ``(n, D)``; every covariance must be positive definite."""
        chol = torch.linalg.cholesky(self.covariances)  # (K, D, D)
        diff = (x.to(torch.float64)[:, None, :] - self.means[None]).unsqueeze(-1)  # (n, K, D, 1)
        white = torch.linalg.solve_triangular(chol[None], diff, upper=False)[..., 0]  # (n, K, D)
        log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # half log det S_k
        log_comp = -0.5 * white.square().sum(-1) - log_det - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(self.log_weights + log_comp, dim=1)

    def __repr__(self) -> str:  # a short, unique key (energy_distance_floor caches on repr)
        digest = hashlib.sha256()
        for tensor in (self.log_weights, self.means, self.covariances):
            digest.update(tensor.contiguous().numpy().tobytes())
        return f"Mixture({self.name!r}, K={self.num_components}, D={self.dim}, {digest.hexdigest()[:16]})"


def linear_observation_posterior(prior: Mixture, matrix: Tensor, observed: Tensor, noise_std: float) -> Mixture:
    """``p(x | y)`` for ``x ~ prior`` and ``y = A x + n``, ``n ~ N(0, noise_std^2 I)`` (the module
    docstring's formula): ``matrix`` ``A`` ``(m, D)``, ``observed`` ``y`` ``(m,)``. ``noise_std = 0``
    (a noiseless observation) needs every ``A S_k A^T`` positive definite."""
    a = matrix.to(torch.float64)
    y = observed.to(torch.float64).reshape(-1)
    if a.ndim != 2 or a.shape[1] != prior.dim or y.shape[0] != a.shape[0]:
        raise ValueError(f"A must be (m, {prior.dim}) and y (m,); got {tuple(a.shape)} and {tuple(y.shape)}")
    m = a.shape[0]
    a_s = a @ prior.covariances  # (K, m, D): A S_k
    gram = a_s @ a.T + noise_std**2 * torch.eye(m, dtype=torch.float64)  # (K, m, m): G_k
    chol = torch.linalg.cholesky(gram)
    resid = y - prior.means @ a.T  # (K, m): y - A mu_k
    solved = torch.cholesky_solve(resid[..., None], chol)  # (K, m, 1): G_k^{-1} (y - A mu_k)
    means = prior.means + (a_s.transpose(1, 2) @ solved)[..., 0]
    covariances = prior.covariances - a_s.transpose(1, 2) @ torch.cholesky_solve(a_s, chol)
    covariances = 0.5 * (covariances + covariances.transpose(1, 2))
    log_marginal = (-0.5 * (resid[..., None] * solved).sum((1, 2))
                    - torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1) - 0.5 * m * math.log(2 * math.pi))
    log_w = prior.log_weights + log_marginal
    return Mixture(log_w - torch.logsumexp(log_w, 0), means, covariances, f"{prior.name} | A x + n")


def mask_matrix(mask: Tensor) -> Tensor:
    """The ``(m, D)`` float64 matrix selecting the ``m`` coordinates where ``mask`` ``(D,)`` is True."""
    flat = mask.reshape(-1).to(torch.bool)
    return torch.eye(flat.shape[0], dtype=torch.float64)[flat]


def inpainting_posterior(prior: Mixture, mask: Tensor, observed: Tensor) -> Mixture:
    """``p(x | x_O = y_O)``: ``mask`` ``(D,)`` True on the observed coordinates ``O``, ``observed``
    ``(D,)`` (read on the mask). The noiseless case of :func:`linear_observation_posterior`."""
    flat = mask.reshape(-1).to(torch.bool)
    return linear_observation_posterior(prior, mask_matrix(flat), observed.reshape(-1)[flat], 0.0)


@dataclass(frozen=True)
class Errors:
    """How far ``num`` samples are from an exact distribution (:func:`errors`).

    ``energy_distance``: the U-statistic against as many exact draws; ``floor``: the RMS of the same
    between two independent sets of exact draws (:func:`~diffcore.testing.conformance.energy_distance_floor`),
    the noise an exact sampler shows; ``weight_error``: the largest error of the components' weights
    (samples assigned by :meth:`Mixture.assign`); ``mean_error``: the Euclidean norm of the sample
    mean's error; ``residual_rms``: the fit to an observation (:meth:`LinearObservation.residual_rms`)."""

    num: int
    energy_distance: float
    floor: float
    weight_error: float
    mean_error: float
    residual_rms: float | None = None

    @property
    def ed_in_floors(self) -> float:
        return self.energy_distance / self.floor


def errors(samples: Tensor, exact: Mixture, observation: LinearObservation | None = None, *,
           seed: int = 10_000) -> Errors:
    """:class:`Errors` of ``samples`` ``(n, D)`` against ``exact``, with ``n`` exact draws (seed ``seed``)."""
    x = samples.reshape(samples.shape[0], -1).to(torch.float64).cpu()
    num = x.shape[0]
    reference = exact.sample_data(num, torch.Generator().manual_seed(seed))[0]
    return Errors(
        num=num, energy_distance=energy_distance(x, reference), floor=energy_distance_floor(exact, num),
        weight_error=float((exact.mode_weights(x) - exact.component_weights).abs().max()),
        mean_error=float((x.mean(0) - exact.mean()).norm()),
        residual_rms=None if observation is None else observation.residual_rms(x))


# ---------------------------------------------------------------------------------------------
# The problems of the guidance tests and of benchmarks/guidance_mixtures.py
# ---------------------------------------------------------------------------------------------

LABELLED_MIXTURE: dict[str, Any] = {
    "weights": [0.3, 0.4, 0.15],
    "means": [[-4.0, 0.0], [0.0, 1.0], [4.0, -1.0]],
    "variances": [[0.5, 1.0], [0.6, 0.8], [0.4, 1.2]],
    "labels": [0, 1, 0],
}
"""A labelled 2-D mixture: class 0 is components 0 and 2 (weights 2/3 and 1/3 within the class),
class 1 component 1. Neighbouring components are 4 apart along the first axis (about 5 standard
deviations), so assigning samples to components is reliable; along the second axis they overlap, so
observing it (:func:`labelled_inpainting_2d`) leaves every component possible."""

CONCENTRIC_MIXTURE: dict[str, Any] = {
    "weights": [0.5, 0.5],
    "means": [[0.0, 0.0], [0.0, 0.0]],
    "variances": [[1.0, 1.0], [4.0, 4.0]],
    "labels": [0, 1],
}
"""Two classes on one centre: class 0 is ``N(0, I)``, class 1 ``N(0, 4 I)``. ``p(y = 0 | x)`` falls
with ``|x|``, so guiding towards class 0 pulls samples inwards: with more weight, smaller ``|x|``."""


@dataclass(frozen=True, eq=False)
class LinearObservation:
    """An inverse problem: ``x ~ `` the ``gmm`` mixture of ``params``, observed as ``y = A x + n``,
    ``n ~ N(0, noise_std^2 I)``: ``matrix`` ``A`` ``(m, D)``, ``observed`` ``y`` ``(m,)``. ``mask``
    ``(D,)`` is set when ``A`` selects coordinates (inpainting; ``dps`` without a matrix)."""

    name: str
    params: dict[str, Any]
    matrix: Tensor
    observed: Tensor
    noise_std: float = 0.0
    mask: Tensor | None = None

    @property
    def prior(self) -> Mixture:
        return Mixture.diagonal(self.params, self.name)

    def posterior(self) -> Mixture:
        """The exact ``p(x | y)`` (:func:`linear_observation_posterior`)."""
        return linear_observation_posterior(self.prior, self.matrix, self.observed, self.noise_std)

    def with_noise(self, noise_std: float) -> LinearObservation:
        """The same observation read as noisy, ``noise_std`` (what ``dps`` assumes)."""
        return replace(self, noise_std=noise_std)

    def full_observed(self) -> Tensor:
        """``(D,)``: ``y`` on the mask, 0 elsewhere (a mask observation's ``observed`` row)."""
        if self.mask is None:
            raise ValueError(f"{self.name} observes A x through a matrix, not masked coordinates")
        full = torch.zeros(self.mask.shape[0], dtype=torch.float64)
        full[self.mask] = self.observed
        return full

    def condition(self, num: int, labels: Tensor | None = None, *, dtype: torch.dtype = torch.float32) -> Condition:
        """The condition of ``num`` samples of this observation: ``mask`` and ``observed`` ``(num, D)``
        (masked), or ``observed`` ``(num, m)`` (matrix), in ``dtype``; and the class ``labels`` if given."""
        if self.mask is None:
            return Condition(labels=labels, observed=self.observed.to(dtype).expand(num, -1).clone())
        return Condition(labels=labels, mask=self.mask.expand(num, -1).clone(),
                         observed=self.full_observed().to(dtype).expand(num, -1).clone())

    def residual_rms(self, x: Tensor) -> float:
        """The root mean square of ``A x - y`` over the samples ``x`` ``(n, D)`` and measurements: how
        closely samples fit the observation (exact posterior draws: at most about ``noise_std``)."""
        return float((x.to(torch.float64) @ self.matrix.T - self.observed).square().mean().sqrt())


def masked(name: str, params: dict[str, Any], mask: Tensor, values: Tensor) -> LinearObservation:
    """The noiseless observation of the coordinates where ``mask`` ``(D,)`` is True, with the values
    ``values`` ``(D,)`` there (read on the mask)."""
    mask = mask.to(torch.bool)
    values = values.to(torch.float64)
    return LinearObservation(name, params, mask_matrix(mask), values[mask], 0.0, mask)


OBSERVED_MIXTURE_2D: dict[str, Any] = {
    "weights": [0.3, 0.4, 0.3],
    "means": [[-1.0, -3.0], [0.5, 0.0], [1.5, 3.5]],
    "variances": [[1.0, 0.3], [0.5, 0.4], [0.8, 0.3]],
}
"""A 2-D mixture whose components overlap along the first axis and are apart along the second."""


def inpainting_2d() -> LinearObservation:
    """:data:`OBSERVED_MIXTURE_2D` with the first coordinate observed at 0.5: the posterior of the
    second is a mixture of all three components (weights 0.116, 0.671, 0.213)."""
    return masked("2-D", OBSERVED_MIXTURE_2D, torch.tensor([True, False]), torch.tensor([0.5, 0.0]))


def labelled_inpainting_2d() -> LinearObservation:
    """:data:`LABELLED_MIXTURE` with its second coordinate observed at 0: given class 0, the first
    coordinate's posterior has components 0 and 2 (0.769, 0.231); without the class component 1 too."""
    return masked("labelled 2-D", LABELLED_MIXTURE, torch.tensor([False, True]), torch.tensor([0.0, 0.0]))


def _draws_16d() -> tuple[dict[str, Any], Tensor]:
    """:func:`mixture_16d` and the matrix of :func:`matrix_16d`, drawn in that order with seed 3."""
    gen = torch.Generator().manual_seed(3)
    means = (1.5 * torch.randn(4, 16, generator=gen, dtype=torch.float64)).round(decimals=3)
    means[1, :8] = means[0, :8]
    variances = (0.3 + 1.0 * torch.rand(4, 16, generator=gen, dtype=torch.float64)).round(decimals=3)
    matrix = torch.randn(4, 16, generator=gen, dtype=torch.float64) / 4.0
    params = {"weights": [0.2, 0.3, 0.25, 0.25], "means": means.tolist(), "variances": variances.tolist()}
    return params, matrix


def mixture_16d() -> dict[str, Any]:
    """Four components in 16 dimensions (means ``1.5 N(0, 1)``, variances in ``[0.3, 1.3]``, drawn
    with seed 3 and rounded), components 0 and 1 sharing their means on the first 8 coordinates."""
    return _draws_16d()[0]


def inpainting_16d() -> LinearObservation:
    """:func:`mixture_16d` with its first 8 coordinates observed at component 0's means: the
    posterior is split between components 0 and 1 (0.542, 0.458), told apart by the other 8."""
    params = mixture_16d()
    means = torch.tensor(params["means"], dtype=torch.float64)
    return masked("16-D", params, torch.arange(16) < 8, means[0])


def matrix_16d(noise_std: float) -> LinearObservation:
    """:func:`mixture_16d` seen through a random matrix ``A`` ``(4, 16)`` (entries ``N(0, 1/16)``, drawn
    after the mixture) with noise ``noise_std``, ``y = A (mu_0 + mu_2) / 2``: at ``noise_std = 0.2``
    the posterior weights are 0.308, 0.204, 0.371, 0.117."""
    params, matrix = _draws_16d()
    means = torch.tensor(params["means"], dtype=torch.float64)
    return LinearObservation("16-D, A (4x16)", params, matrix, matrix @ (0.5 * means[0] + 0.5 * means[2]),
                             noise_std)


__all__ = [
    "CONCENTRIC_MIXTURE",
    "LABELLED_MIXTURE",
    "OBSERVED_MIXTURE_2D",
    "Errors",
    "LinearObservation",
    "Mixture",
    "errors",
    "inpainting_2d",
    "inpainting_16d",
    "inpainting_posterior",
    "labelled_inpainting_2d",
    "linear_observation_posterior",
    "mask_matrix",
    "masked",
    "matrix_16d",
    "mixture_16d",
]
