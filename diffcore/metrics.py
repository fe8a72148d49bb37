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


def energy_distance(x: Tensor, y: Tensor, *, chunk: int = 2048) -> float:
    """Unbiased (U-statistic) energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``.

    ``x`` ``(n, ...)`` and ``y`` ``(m, ...)`` are flattened per sample and compared in float64. Its
    expectation is zero when both come from the same distribution, positive otherwise
    (Szekely & Rizzo 2013). Cost ``O((n + m)^2)``, memory ``O(chunk * max(n, m))``.
    """
    a = rearrange(x, "n ... -> n (...)").to(torch.float64)
    b = rearrange(y, "n ... -> n (...)").to(torch.float64)
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError("energy_distance needs at least two samples on each side")
    xy = _pairwise_distance_sum(a, b, chunk) / (n * m)
    xx = _pairwise_distance_sum(a, a, chunk) / (n * (n - 1))  # the zero diagonal drops out
    yy = _pairwise_distance_sum(b, b, chunk) / (m * (m - 1))
    return float(2 * xy - xx - yy)


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
