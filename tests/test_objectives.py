"""Objectives checked by their known minimiser: the exact mixture score (the gmm model) is the
minimiser, and shifting it by a constant c raises each loss by exactly the amount theory says."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffcore import get_registry
from diffcore.model import ScoreModel
from diffcore.noise import NoiseSource
from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture
from diffcore_models import GaussianMixture

REGISTRY = get_registry()
SHIFT = torch.tensor([0.3, -0.2], dtype=torch.float64)


class ShiftedScore(ScoreModel):
    """The exact mixture score plus a constant ``c`` (in score, or in eps units)."""

    name = "shifted"
    output = "score"

    def __init__(self, truth: GaussianMixture, shift: Tensor, in_eps: bool = False) -> None:
        super().__init__()
        self.truth, self.shift, self.in_eps = truth, shift, in_eps

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        s = self.truth(x, t)
        if self.in_eps:  # eps_pred = -sigma s, so eps_pred + c  <=>  s - c / sigma
            return s - self.shift / self.truth._process.sigma(t)[:, None]  # type: ignore[union-attr]
        return s + self.shift


def excess(objective_name: str, params: dict[str, object], *, in_eps: bool = False,
           chunks: int = 20, size: int = 10_000) -> tuple[float, float, Tensor]:
    """Loss(shifted) - loss(exact), with the same data and noise, on ``chunks`` independent batches:
    the mean excess, its standard error, and the times drawn (``(chunks * size,)``)."""
    process = REGISTRY.build("process", "vp")
    truth = GaussianMixture(**REFERENCE_MIXTURE)
    truth.bind(process)
    shifted_model = ShiftedScore(truth, SHIFT, in_eps)
    objective = REGISTRY.build("objective", objective_name, **params)
    x0 = sample_mixture(REFERENCE_MIXTURE, chunks * size, torch.Generator().manual_seed(0))
    values, times = [], []
    for k in range(chunks):
        noise = NoiseSource.range(7, k * size, (k + 1) * size)
        batch = x0[k * size:(k + 1) * size]
        values.append(float(objective.loss(shifted_model, process, batch, noise).detach())  # type: ignore[attr-defined]
                      - float(objective.loss(truth, process, batch, noise).detach()))  # type: ignore[attr-defined]
        times.append(noise.uniform((), step=0, stream="t", dtype=torch.float64))
    v = torch.tensor(values, dtype=torch.float64)
    t = process.t_min + (process.T - process.t_min) * torch.cat(times)
    return float(v.mean()), float(v.std() / chunks**0.5), t


def check(mean: float, se: float, expected: float, max_rel_se: float = 0.02) -> None:
    """Within 4 standard errors, and precise enough (SE below ``max_rel_se`` of the value, 2% unless
    the estimator is known to be noisy) for the check to have power."""
    assert se < max_rel_se * abs(expected), (mean, se, expected)
    assert abs(mean - expected) < 4 * se, (mean, se, expected)


def test_dsm_sigma2_excess_is_mean_sigma2_times_c2() -> None:
    mean, se, t = excess("dsm", {})
    check(mean, se, float(REGISTRY.build("process", "vp").sigma(t).pow(2).mean()) * float(SHIFT.pow(2).sum()))


@pytest.mark.parametrize("weighting", ["likelihood", "uniform"])
def test_dsm_weightings(weighting: str) -> None:
    # uniform weighting puts weight 1 on eps / sigma^2 at tiny sigma: a much noisier estimator
    chunks, max_rel_se = (20, 0.02) if weighting == "likelihood" else (100, 0.05)
    mean, se, t = excess("dsm", {"weighting": weighting}, chunks=chunks)
    vp = REGISTRY.build("process", "vp")
    lam = vp.diffusion(t) ** 2 if weighting == "likelihood" else torch.ones_like(t)
    check(mean, se, float(lam.mean()) * float(SHIFT.pow(2).sum()), max_rel_se)


def test_likelihood_importance_sampling_has_the_same_expectation() -> None:
    """Plain g^2 weighting and log-SNR-uniform importance sampling estimate the same excess
    E_U[g^2] ||c||^2; the latter with less variance."""
    vp = REGISTRY.build("process", "vp")
    grid = torch.linspace(vp.t_min, vp.T, 100_001, dtype=torch.float64)
    exact = float(torch.trapezoid(vp.diffusion(grid) ** 2, grid)) / (vp.T - vp.t_min) * float(SHIFT.pow(2).sum())
    mean, se, _ = excess("dsm", {"weighting": "likelihood", "importance_sampling": True})
    check(mean, se, exact)


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_prediction_losses_excess(target: str) -> None:
    """A shift c of eps_pred costs ||c||^2 for eps; x0 = (x - sigma eps)/alpha moves by -sigma c /
    alpha; v = alpha eps - sigma x0 moves by (alpha + sigma^2/alpha) c."""
    mean, se, t = excess("prediction", {"target": target}, in_eps=True)
    vp = REGISTRY.build("process", "vp")
    a, s = vp.alpha(t), vp.sigma(t)
    factor = {"eps": torch.ones_like(t), "x0": (s / a) ** 2, "v": (a + s**2 / a) ** 2}[target]
    check(mean, se, float(factor.mean()) * float(SHIFT.pow(2).sum()))


def test_ncsn_excess_over_its_ladder() -> None:
    objective = REGISTRY.build("objective", "ncsn", num_scales=10)
    vp = REGISTRY.build("process", "vp")
    levels = objective.levels(vp, torch.device("cpu"))  # type: ignore[attr-defined]
    sigmas = vp.sigma(levels)
    ratios = sigmas / vp.alpha(levels)
    torch.testing.assert_close(ratios[1:] / ratios[:-1], (ratios[1] / ratios[0]).expand(9))  # geometric
    mean, se, _ = excess("ncsn", {"num_scales": 10})
    # one random level per sample: the excess is the mean of sigma_i^2 ||c||^2 over levels
    check(mean, se, float(sigmas.pow(2).mean()) * float(SHIFT.pow(2).sum()))


@pytest.mark.parametrize(("name", "params"), [("ssm", {}), ("ssm", {"variance_reduced": False}),
                                              ("ssm", {"distribution": "rademacher", "projections": 2}),
                                              ("exact_sm", {})])
def test_implicit_score_matching_excess(name: str, params: dict[str, object]) -> None:
    """J(s) = E[tr ds/dx + ||s||^2/2] up to a constant equals E||s - grad log p||^2 / 2, so a shift
    by c costs sigma^2 ||c||^2 / 2 on average."""
    noisy = params.get("variance_reduced") is False  # (v.s)^2 has more variance than ||s||^2
    mean, se, t = excess(name, params, chunks=40 if noisy else 20)
    expected = 0.5 * float(REGISTRY.build("process", "vp").sigma(t).pow(2).mean()) * float(SHIFT.pow(2).sum())
    check(mean, se, expected, max_rel_se=0.03 if noisy else 0.02)
