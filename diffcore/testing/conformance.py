"""Conformance suites any registered process or sampler can be run through.

- :func:`check_process_marginals`: simulate the forward SDE (from ``drift`` and ``diffusion`` only)
  starting at a Gaussian mixture and compare the mean and variance at several times with the closed
  form ``alpha(t) E[x0]``, ``alpha(t)^2 Var[x0] + sigma(t)^2``.
- :func:`check_linear_gaussian_consistency`: the closed-form ``f``, ``g`` and the inverse of
  ``lambda(t)`` agree with what ``alpha`` and ``sigma`` imply.
- :func:`check_sampler`: samples from a reference model whose data distribution is known exactly
  (:class:`ReferenceModel`, e.g. the analytic ``gmm`` model: exact score) match it: energy distance
  within ``k`` standard deviations of the data-vs-data noise floor, and mode weights within a
  tolerance.

Each returns a report (numbers to print or record) and raises ``AssertionError`` with that report
when the check fails.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from diffcore.metrics import energy_distance
from diffcore.model import ScoreModel
from diffcore.pipeline import Pipeline
from diffcore.process import ForwardProcess, LinearGaussianProcess
from diffcore.registry import Registry, get_registry
from diffcore.sampler import Sampler
from diffcore.utils import bcast

REFERENCE_MIXTURE: dict[str, Any] = {
    "weights": [0.2, 0.5, 0.3],
    "means": [[-5.0, 0.0], [0.0, 5.0], [5.0, -2.0]],
    "variances": [[1.0, 0.5], [0.6, 0.6], [0.3, 1.2]],
}
"""A 2-D mixture with unequal weights and per-axis scales; modes separated by >= 6 stds."""

CONFORMANCE_PROCESSES: dict[str, dict[str, Any]] = {"vp": {}, "ve": {"sigma_max": 100.0}, "subvp": {}}
"""The built-in processes with the parameters a sampler's conformance run uses. VE's largest noise
scale must be well above the data's spread (Song & Ermon 2020, technique 1): the reference mixture
spans about 12 units, and with VE's default ``sigma_max`` of 50 the Gaussian prior misses ``p_T``'s
variance by about 0.6%, which a deterministic sampler carries into its samples (about 2.6 floor stds
and mode weights 0.014 off, measured), so VE runs at 100."""

QUICK_NUM = 2_000
QUICK_WEIGHT_TOL = 0.045
"""The quick conformance run: 2000 samples, mode weights within 0.045, four binomial standard deviations
of the heaviest mode's weight (``sqrt(0.5 * 0.5 / 2000) = 0.011``); 0.02 at 20 000 samples (the full
run, :func:`check_sampler`'s defaults) is about the same multiple of its own standard deviation (0.0035)
plus the samplers' measured bias. Every built-in sampler passes both on every entry of
:data:`CONFORMANCE_PROCESSES` (diffcore's own test suite runs them), so a plugin's sampler tested at
these sizes is held to the built-in samplers' standard."""


def registered_names(kind: str, registry: Registry | None = None) -> list[str]:
    """Names registered for ``kind``: parametrize a test over every component of a kind."""
    return (registry or get_registry()).names(kind)


def _mixture_tensors(mixture: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    w = torch.tensor(mixture["weights"], dtype=torch.float64)
    return (torch.log(w / w.sum()), torch.tensor(mixture["means"], dtype=torch.float64),
            torch.tensor(mixture["variances"], dtype=torch.float64))


def sample_mixture(mixture: dict[str, Any], num: int, generator: torch.Generator) -> Tensor:
    """Exact draws ``(num, D)`` (float64) from a diagonal Gaussian mixture given as gmm params."""
    log_w, means, variances = _mixture_tensors(mixture)
    labels = torch.multinomial(log_w.exp(), num, replacement=True, generator=generator)
    z = torch.randn(num, means.shape[1], generator=generator, dtype=torch.float64)
    return means[labels] + variances[labels].sqrt() * z


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


@dataclass
class MarginalReport:
    """Largest z-scores of the simulated mean and variance against the closed form, per time."""

    process: str
    times: list[float]
    mean_z: list[float] = field(default_factory=list)
    var_z: list[float] = field(default_factory=list)
    var_rel_err: list[float] = field(default_factory=list)


def check_process_marginals(process: LinearGaussianProcess, *, num: int = 20_000, steps: int = 2_000,
                            times: tuple[float, ...] = (0.1, 0.3, 0.6, 1.0), seed: int = 0,
                            max_z: float = 5.0, mixture: dict[str, Any] | None = None) -> MarginalReport:
    """Simulate ``dx = f dt + g dw`` from a mixture with a midpoint-in-time Euler-Maruyama scheme
    (``steps`` uniform steps on ``[0, T]``) and compare, at each fraction ``times`` of ``T``, the
    per-dimension sample mean and variance with ``alpha E[x0]`` and ``alpha^2 Var[x0] + sigma^2``.

    The tolerance is statistical: every z-score (difference over its standard error, estimated from
    the same samples) must stay below ``max_z``.
    """
    mixture = mixture or REFERENCE_MIXTURE
    gen = torch.Generator().manual_seed(seed)
    log_w, means, variances = _mixture_tensors(mixture)
    w = log_w.exp()
    mean0 = (w[:, None] * means).sum(0)
    var0 = (w[:, None] * (variances + means**2)).sum(0) - mean0**2
    x = sample_mixture(mixture, num, gen)
    grid = torch.linspace(0.0, process.T, steps + 1, dtype=torch.float64)
    checkpoints = {round(f * steps): f * process.T for f in times}
    report = MarginalReport(process=getattr(process, "name", type(process).__name__),
                            times=[checkpoints[k] for k in sorted(checkpoints)])
    for i in range(steps):
        h = float(grid[i + 1] - grid[i])
        t_mid = torch.full((num,), float(grid[i]) + 0.5 * h, dtype=torch.float64)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = x + process.drift(x, t_mid) * h + bcast(process.diffusion(t_mid), x) * math.sqrt(h) * z
        if i + 1 in checkpoints:
            t = torch.tensor([checkpoints[i + 1]], dtype=torch.float64)
            alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
            mean_t, var_t = alpha * mean0, alpha**2 * var0 + sigma**2
            m_hat, v_hat = x.mean(0), x.var(0)
            m4 = ((x - m_hat) ** 4).mean(0)
            report.mean_z.append(float(((m_hat - mean_t).abs() / (v_hat / num).sqrt()).max()))
            report.var_z.append(float(((v_hat - var_t).abs() / ((m4 - v_hat**2) / num).sqrt()).max()))
            report.var_rel_err.append(float(((v_hat - var_t).abs() / var_t).max()))
    assert max(report.mean_z + report.var_z) < max_z, f"forward marginals disagree with alpha/sigma: {report}"
    return report


def check_linear_gaussian_consistency(process: LinearGaussianProcess, *, rtol: float = 1e-4) -> None:
    """``f`` and ``g`` agree with ``f = d log alpha/dt``, ``g^2 = d sigma^2/dt - 2 f sigma^2``
    (autograd on ``alpha``, ``sigma``), and ``t_from_half_log_snr`` inverts ``half_log_snr``."""
    t = torch.linspace(process.t_min, process.T, 101, dtype=torch.float64)
    generic_f = LinearGaussianProcess.drift_coef(process, t)
    generic_g = LinearGaussianProcess.diffusion(process, t)
    x = torch.ones(t.shape[0], 1, dtype=torch.float64)
    torch.testing.assert_close(process.drift(x, t)[:, 0], generic_f, rtol=rtol, atol=1e-8)
    torch.testing.assert_close(process.diffusion(t), generic_g, rtol=rtol, atol=1e-8)
    lam = process.half_log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "half_log_snr must decrease strictly in t"
    torch.testing.assert_close(process.t_from_half_log_snr(lam), t, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplerReport:
    """How well a sampler reproduced the mixture (see :func:`check_sampler`)."""

    sampler: str
    process: str
    num: int
    energy_distance: float
    floor_std: float
    mode_weights: list[float]
    true_weights: list[float]
    nfe: int
    seconds: float

    @property
    def ed_in_floor_stds(self) -> float:
        return self.energy_distance / self.floor_std

    @property
    def max_weight_error(self) -> float:
        return max(abs(a - b) for a, b in zip(self.mode_weights, self.true_weights, strict=True))


class ReferenceModel(Protocol):
    """A score model whose data distribution ``p_0`` is known exactly: the ground truth of
    :func:`check_sampler` (the analytic ``gmm`` model is one; any analytic model with these three
    members can serve)."""

    name: str

    @property
    def component_weights(self) -> Tensor:
        """The true weight ``(K,)`` of each mode of ``p_0``."""
        ...

    def mode_weights(self, x: Tensor) -> Tensor:
        """The fraction ``(K,)`` of the samples ``x`` ``(n, *event)`` assigned to each mode."""
        ...

    def sample_data(self, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact draws ``(num, *event)`` of ``p_0`` (float64) and their mode labels ``(num,)``."""
        ...


_floor_cache: dict[tuple[str, int, int], float] = {}


def energy_distance_floor(reference: dict[str, Any] | ReferenceModel, num: int, *, replicates: int = 10,
                          seed: int = 1234) -> float:
    """Standard deviation of the energy distance between two independent exact sample sets of size
    ``num`` (the U-statistic has mean zero, so this is its root mean square over ``replicates``).
    ``reference``: a reference model, or the parameters of a diagonal Gaussian mixture
    (:func:`sample_mixture`; the same draws as the ``gmm`` model of those parameters)."""
    key = (repr(sorted(reference.items())) if isinstance(reference, dict) else repr(reference), num, replicates)
    if key not in _floor_cache:
        def draw(generator: torch.Generator) -> Tensor:
            if isinstance(reference, dict):
                return sample_mixture(reference, num, generator)
            return reference.sample_data(num, generator)[0]

        gen = torch.Generator().manual_seed(seed)
        values = [energy_distance(draw(gen), draw(gen)) for _ in range(replicates)]
        _floor_cache[key] = math.sqrt(sum(v * v for v in values) / replicates)
    return _floor_cache[key]


def sampler_report(sampler: Sampler, process: ForwardProcess, reference: ReferenceModel, *, num: int = 20_000,
                   seed: int = 0, device: str | torch.device = "cpu") -> SamplerReport:
    """Sample ``num`` points from the ``reference`` model (a score model whose ``p_0`` is known
    exactly, e.g. ``gmm`` built on :data:`REFERENCE_MIXTURE`) through ``process`` and measure them
    against fresh exact draws of ``p_{t_min}`` (the marginal the sampler targets)."""
    if not isinstance(reference, ScoreModel):
        raise TypeError(f"the reference must be a score model with exact data draws, got {type(reference).__name__}")
    pipe = Pipeline(process, reference, sampler)
    start = time.perf_counter()
    result = pipe.sample(num, seed=seed, device=device)
    seconds = time.perf_counter() - start
    gen = torch.Generator().manual_seed(10_000 + seed)
    exact = reference.sample_data(num, gen)[0]
    lg = process.linear_gaussian
    if lg is not None:
        t = torch.tensor([lg.t_min], dtype=torch.float64)
        z = torch.randn(exact.shape, generator=gen, dtype=torch.float64)
        exact = float(lg.alpha(t)) * exact + float(lg.sigma(t)) * z
    samples = result.x.detach().cpu().to(torch.float64)
    return SamplerReport(
        sampler=sampler.name, process=process.name, num=num,
        energy_distance=energy_distance(samples, exact),
        floor_std=energy_distance_floor(reference, num),
        mode_weights=reference.mode_weights(samples).tolist(),
        true_weights=reference.component_weights.tolist(), nfe=result.nfe, seconds=seconds,
    )


def check_sampler(sampler: Sampler, process: ForwardProcess, reference: ReferenceModel, *,
                  max_floor_stds: float = 3.0, weight_tol: float = 0.02, **kwargs: Any) -> SamplerReport:
    """:func:`sampler_report`, asserting the energy distance is at most ``max_floor_stds`` floor
    standard deviations and every mode weight is within ``weight_tol`` of the truth."""
    report = sampler_report(sampler, process, reference, **kwargs)
    assert report.ed_in_floor_stds <= max_floor_stds, (
        f"{report.sampler} on {report.process}: energy distance {report.energy_distance:.3g} is "
        f"{report.ed_in_floor_stds:.2f} floor stds (limit {max_floor_stds}): {report}")
    assert report.max_weight_error <= weight_tol, (
        f"{report.sampler} on {report.process}: mode weights {report.mode_weights} vs "
        f"{report.true_weights} (limit {weight_tol}): {report}")
    return report
