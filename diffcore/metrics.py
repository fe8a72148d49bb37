"""Sample-quality metrics used by the conformance suites, the tests and the benchmarks."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def _pairwise_distance_sum(a: Tensor, b: Tensor, chunk: int) -> Tensor:
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], chunk):
        total += torch.cdist(a[i:i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist").sum()
    return total


def mean_self_distance(y: Tensor, *, chunk: int = 2048) -> float:
    """``E|Y - Y'|`` over distinct pairs of the rows of ``y`` ``(m, ...)`` (flattened, float64): the
    reference's own term of :func:`energy_distance`, to compute once when many sample sets are
    measured against the same reference."""
    b = rearrange(y, "n ... -> n (...)").to(torch.float64)
    m = b.shape[0]
    if m < 2:
        raise ValueError("energy_distance needs at least two samples on each side")
    return float(_pairwise_distance_sum(b, b, chunk) / (m * (m - 1)))  # the zero diagonal drops out


def energy_distance(x: Tensor, y: Tensor, *, chunk: int = 2048, y_self: float | None = None) -> float:
    """Unbiased (U-statistic) energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``.

    ``x`` ``(n, ...)`` and ``y`` ``(m, ...)`` are flattened per sample and compared in float64. Its
    expectation is zero when both come from the same distribution, positive otherwise
    (Szekely & Rizzo 2013). Cost ``O((n + m)^2)``, memory ``O(chunk * max(n, m))``. ``y_self``:
    :func:`mean_self_distance` of ``y``, when already known (it is then not recomputed).
    """
    a = rearrange(x, "n ... -> n (...)").to(torch.float64)
    b = rearrange(y, "n ... -> n (...)").to(torch.float64)
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError("energy_distance needs at least two samples on each side")
    xy = float(_pairwise_distance_sum(a, b, chunk) / (n * m))
    yy = mean_self_distance(b, chunk=chunk) if y_self is None else y_self
    return 2 * xy - mean_self_distance(a, chunk=chunk) - yy


def assign_modes(x: Tensor, log_weights: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """Index ``(n,)`` of the most probable mixture component of each sample ``x`` ``(n, D)``, for a
    diagonal Gaussian mixture with ``log_weights`` ``(K,)``, ``means`` and ``variances`` ``(K, D)``."""
    x = rearrange(x, "n ... -> n (...)").to(torch.float64)
    means, variances = means.to(x), variances.to(x)
    diff = x[:, None, :] - means[None]
    log_post = log_weights.to(x) - 0.5 * (diff**2 / variances + torch.log(variances)).sum(-1)
    return log_post.argmax(1)


def mode_weights(x: Tensor, log_weights: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """Fraction ``(K,)`` of the samples assigned to each component by :func:`assign_modes`."""
    labels = assign_modes(x, log_weights, means, variances)
    return torch.bincount(labels, minlength=means.shape[0]).to(torch.float64) / labels.shape[0]


def _sqrtm_psd(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues clamped at zero ``(D,)`` and the symmetric square root ``(D, D)`` of a symmetric
    positive semi-definite ``matrix`` ``(D, D)``, by ``torch.linalg.eigh``."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    values = values.clamp_min(0.0)
    return values, (vectors * values.sqrt()) @ vectors.T


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """Frechet (2-Wasserstein) distance between the Gaussians fitted to ``x`` ``(n, D)`` and ``y``
    ``(m, D)`` (samples of other shapes ``(n, ...)`` are flattened):

    ``|mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^{1/2} S_y S_x^{1/2})^{1/2})``

    with the sample means and the unbiased sample covariances, all in float64 (Dowson & Landau 1982;
    the FID of Heusel et al. 2017 is this distance on Inception features, here it is used on the
    values themselves). ``tr((S_x S_y)^{1/2})`` is computed in the symmetric form above: ``S_x^{1/2}``
    from an eigendecomposition of ``S_x``, then the eigenvalues of the positive semi-definite
    ``S_x^{1/2} S_y S_x^{1/2}``. Eigenvalues that rounding leaves slightly negative (rank-deficient
    covariances, e.g. constant pixels or ``n <= D``) are clamped to zero, so the result is real and
    never needs the complex ``scipy.linalg.sqrtm``. The estimate is biased upwards for finite
    samples: two draws of the same distribution give a positive value that shrinks with ``n, m``.
    """
    a = rearrange(x, "n ... -> n (...)").to(torch.float64)
    b = rearrange(y, "n ... -> n (...)").to(torch.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance needs at least two samples on each side")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs samples of the same dimension, got {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.atleast_2d(torch.cov(a.T))
    cov_b = torch.atleast_2d(torch.cov(b.T))
    _, root_a = _sqrtm_psd(cov_a)
    cross, _ = _sqrtm_psd(root_a @ cov_b @ root_a)
    distance = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2.0 * cross.sqrt().sum()
    return max(float(distance), 0.0)
