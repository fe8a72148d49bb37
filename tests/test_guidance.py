"""Guidance against closed forms on Gaussian mixtures (``diffcore/testing/mixtures.py``).

- ``cfg`` at ``w = 0`` and ``classifier`` at scale 1 with the exact ``gmm`` classifier must sample
  ``p(x | y)`` exactly: their scores are checked against the gradient of the exact ``log p_t(x | y)``,
  and their samples (``vp`` and ``ve``, a stochastic and a deterministic sampler) against exact
  conditional draws: class purity, the weights of the class's two components and the energy distance
  within the data-vs-data noise.
- ``inpaint`` (the replacement method) and ``dps`` approximate the posterior of a linear observation;
  their scores are checked against their own formulas written independently, and their samples are
  measured against the exact posterior (a Gaussian mixture in closed form). The errors are printed
  (``-s``) and bounded by what the methods were measured to reach, with a margin, not by exactness.
- Refusals (models, labels, masks, matrices) and composition (``cfg`` with ``inpaint``; every sampler
  with ``cfg``).

The default tier runs small sizes in seconds; ``-m slow`` repeats the sampling checks at full size.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from diffcore import CompatibilityError, Pipeline, get_registry
from diffcore.condition import Condition
from diffcore.errors import UsageError
from diffcore.process import LinearGaussianProcess
from diffcore.testing.mixtures import (
    CONCENTRIC_MIXTURE,
    LABELLED_MIXTURE,
    Errors,
    LinearObservation,
    Mixture,
    errors,
    inpainting_2d,
    inpainting_16d,
    inpainting_posterior,
    labelled_inpainting_2d,
    mask_matrix,
    matrix_16d,
)

REGISTRY = get_registry()
UNLABELLED = {k: v for k, v in LABELLED_MIXTURE.items() if k != "labels"}
CLASS_0 = Mixture.class_conditional(LABELLED_MIXTURE, 0)
"""``p(x | y = 0)``: components 0 and 2 of the labelled mixture, weights 2/3 and 1/3."""
CLASS_0_PARAMS = {"weights": [0.3, 0.15], "means": [LABELLED_MIXTURE["means"][k] for k in (0, 2)],
                  "variances": [LABELLED_MIXTURE["variances"][k] for k in (0, 2)]}
"""Class 0 of the labelled mixture as an unlabelled ``gmm`` of its own."""
CLASSIFIER = {"type": "gmm", **LABELLED_MIXTURE}
MAX_FLOOR_STDS = 3.0
"""The energy-distance bound of exact methods, in floors (the RMS energy distance between two
independent exact draw sets of the same size, over 10 replicates): the convention of
:func:`diffcore.testing.conformance.check_sampler` (3 standard deviations of the data-vs-data noise,
the U-statistic having mean zero)."""




PROCESS_PARAMS = {"ve": {"sigma_max": 100.0}}
"""As in tests/test_samplers.py: with ve's default sigma_max of 50 the Gaussian prior misses the
variance of p_T (here by about 0.4%), which a deterministic sampler carries into the samples. Measured
on class 0 (ddim, 10k samples): 3.75 floors at sigma_max 50 (3.41 at 200 steps: not a step-size
error), 1.55 at 100; unguided sampling of a gmm made of class 0's components alone gives the same
numbers, so this is the process's prior, not the guidance."""


def pipeline(process: str, sampler: tuple[str, dict[str, Any]], model: dict[str, Any],
             guidance: list[dict[str, Any]]) -> Pipeline:
    name, params = sampler
    return Pipeline.from_spec({"process": {"type": process, **PROCESS_PARAMS.get(process, {})},
                               "sampler": {"type": name, **params}, "model": {"type": "gmm", **model},
                               "guidance": guidance})


def method_pipeline(method: str, process: str, sampler: tuple[str, dict[str, Any]], scale: float = 0.0) -> Pipeline:
    """``cfg`` at weight ``scale`` over the labelled mixture, or ``classifier`` at scale ``1 + scale``
    over the unlabelled one (the same score: ``grad log p_t(y | x) = s(x, y) - s(x, null)``)."""
    if method == "cfg":
        return pipeline(process, sampler, LABELLED_MIXTURE, [{"type": "cfg", "scale": scale}])
    return pipeline(process, sampler, UNLABELLED,
                    [{"type": "classifier", "scale": 1.0 + scale, "classifier": CLASSIFIER}])


def zeros(num: int) -> Tensor:
    return torch.zeros(num, dtype=torch.long)


def exact_score(mixture: Mixture, process: LinearGaussianProcess, x: Tensor, t: float) -> Tensor:
    """``grad log p_t(x)`` ``(n, D)`` of ``mixture`` under ``process`` at time ``t``, by autograd of the
    perturbed mixture's log-density (independent of the ``gmm`` model's formula)."""
    tt = torch.tensor([t], dtype=torch.float64)
    p_t = mixture.perturbed(float(process.alpha(tt)), float(process.sigma(tt)))
    leaf = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(p_t.log_prob(leaf).sum(), leaf)
    return grad


def random_points(num: int, dim: int, seed: int = 0) -> Tensor:
    return 3.0 * torch.randn(num, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def times(num: int, t: float) -> Tensor:
    return torch.full((num,), t, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# The closed forms themselves
# ---------------------------------------------------------------------------------------------


def test_posterior_is_prior_times_likelihood() -> None:
    """Bayes' rule pointwise: ``log p(x | y) - log p(x) - log N(y; A x, s^2 I)`` is one constant
    (``-log p(y)``) for every ``x``, for the 16-D mixture seen through a 4 x 16 matrix."""
    problem = matrix_16d(0.2)
    posterior = problem.posterior()
    x = random_points(64, 16)
    likelihood = torch.distributions.Normal(x @ problem.matrix.T, problem.noise_std).log_prob(problem.observed).sum(1)
    gap = posterior.log_prob(x) - problem.prior.log_prob(x) - likelihood
    assert float(gap.max() - gap.min()) < 1e-9, gap
    torch.testing.assert_close(posterior.component_weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_inpainting_posterior_closed_form() -> None:
    """Noiseless observation of diagonal components: weights ``∝ w_k N(y_O; mu_k,O, S_k,O)``, the
    observed coordinates pinned to ``y`` (variance 0), the others' means and variances unchanged."""
    problem = inpainting_16d()
    mask = problem.mask
    assert mask is not None
    prior, posterior = problem.prior, problem.posterior()
    obs = torch.distributions.Normal(prior.means[:, mask], prior.variances[:, mask].sqrt())
    log_w = prior.log_weights + obs.log_prob(problem.observed).sum(1)
    torch.testing.assert_close(posterior.log_weights.exp(), torch.softmax(log_w, 0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(posterior.means[:, ~mask], prior.means[:, ~mask], rtol=0, atol=1e-12)
    torch.testing.assert_close(posterior.means[:, mask], problem.observed.expand(4, -1), rtol=0, atol=1e-12)
    torch.testing.assert_close(posterior.variances[:, ~mask], prior.variances[:, ~mask], rtol=0, atol=1e-12)
    assert float(posterior.covariances[:, mask][:, :, mask].abs().max()) < 1e-12
    draws, _ = posterior.sample_data(2000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws[:, mask], problem.observed.expand(2000, -1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("problem", [inpainting_2d(), inpainting_16d(), matrix_16d(0.2), labelled_inpainting_2d()],
                         ids=lambda p: p.name)
def test_exact_draws_are_assigned_to_their_components(problem: LinearObservation) -> None:
    """The weight errors below assign samples to components (:meth:`Mixture.assign`); on exact draws
    that recovers the component drawn for at least 99% (the components are well apart)."""
    posterior = problem.posterior()
    draws, labels = posterior.sample_data(4000, torch.Generator().manual_seed(0))
    assert float((posterior.assign(draws) == labels).double().mean()) >= 0.99


# ---------------------------------------------------------------------------------------------
# Scores: exact where the theory says so, the methods' own formulas otherwise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process_name", ["vp", "ve"])
@pytest.mark.parametrize("t", [0.02, 0.3, 0.9])
@pytest.mark.parametrize("w", [0.0, 0.5, 3.0])
def test_cfg_and_classifier_scores_are_exact(process_name: str, t: float, w: float) -> None:
    """``cfg`` at weight ``w`` gives ``(1 + w) grad log p_t(x | y) - w grad log p_t(x)``, and so does
    ``classifier`` at scale ``1 + w`` with the exact classifier; at ``w = 0``: the exact conditional score."""
    sampler = ("ddim", {"steps": 4})
    x, tt = random_points(128, 2), times(128, t)
    labels = torch.tensor([0, 1] * 64)
    for method in ("cfg", "classifier"):
        pipe = method_pipeline(method, process_name, sampler, w)
        assert isinstance(pipe.process, LinearGaussianProcess)
        expected = torch.zeros_like(x)
        for label in (0, 1):
            rows = labels == label
            conditional = exact_score(Mixture.class_conditional(LABELLED_MIXTURE, label), pipe.process, x[rows], t)
            unconditional = exact_score(Mixture.diagonal(LABELLED_MIXTURE), pipe.process, x[rows], t)
            expected[rows] = (1 + w) * conditional - w * unconditional
        torch.testing.assert_close(pipe.score_fn(Condition(labels=labels))(x, tt), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_inpaint_and_dps_scores_follow_their_formulas(t: float, tmp_path: Path) -> None:
    """``inpaint``: ``(alpha y - x) / sigma^2`` on the mask, the model's score elsewhere; ``dps``:
    ``s + grad_x log N(y; A x0_hat(x), s^2 I)`` with Tweedie's ``x0_hat = (x + sigma^2 s) / alpha``,
    all recomputed here from the exact mixture and autograd."""
    problem = inpainting_16d()
    assert problem.mask is not None
    x, tt = random_points(32, 16, seed=1), times(32, t)
    cond = problem.condition(32, dtype=torch.float64)
    pipe = pipeline("vp", ("ddim", {"steps": 4}), problem.params, [{"type": "inpaint"}])
    lg = pipe.process
    assert isinstance(lg, LinearGaussianProcess)
    alpha, sigma = float(lg.alpha(tt[:1])), float(lg.sigma(tt[:1]))
    prior_score = exact_score(problem.prior, lg, x, t)
    expected = torch.where(problem.mask, (alpha * problem.full_observed() - x) / sigma**2, prior_score)
    torch.testing.assert_close(pipe.score_fn(cond)(x, tt), expected, rtol=1e-8, atol=1e-8)

    def dps_expected(matrix: Tensor, y: Tensor, noise_std: float) -> Tensor:
        p_t = problem.prior.perturbed(alpha, sigma)
        leaf = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(p_t.log_prob(leaf).sum(), leaf, create_graph=True)
        x0_hat = (leaf + sigma**2 * score) / alpha
        log_likelihood = -0.5 * (y - x0_hat @ matrix.T).square().sum() / noise_std**2
        (grad,) = torch.autograd.grad(log_likelihood, leaf)
        return score.detach() + grad

    pipe = pipeline("vp", ("ddim", {"steps": 4}), problem.params, [{"type": "dps", "noise_std": 0.2}])
    expected = dps_expected(mask_matrix(problem.mask), problem.observed, 0.2)
    torch.testing.assert_close(pipe.score_fn(cond)(x, tt), expected, rtol=1e-7, atol=1e-7)
    matrix = matrix_16d(0.2)
    np.save(tmp_path / "A.npy", matrix.matrix.numpy())
    pipe = pipeline("vp", ("ddim", {"steps": 4}), problem.params,
                    [{"type": "dps", "noise_std": 0.2, "matrix": str(tmp_path / "A.npy")}])
    got = pipe.score_fn(Condition(observed=matrix.observed.expand(32, -1)))(x, tt)
    torch.testing.assert_close(got, dps_expected(matrix.matrix, matrix.observed, 0.2), rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# cfg and classifier sample p(x | y) exactly
# ---------------------------------------------------------------------------------------------

STOCHASTIC = "euler_maruyama"
DETERMINISTIC = "ddim"
CLASS_SIZES = {"fast": (2000, {STOCHASTIC: 500, DETERMINISTIC: 100}), "full": (10_000, {STOCHASTIC: 1000,
                                                                                         DETERMINISTIC: 100})}
"""Samples and steps of the class-conditional checks per tier, chosen so that the sampler's own
discretisation error stays small (these errors are the sampler's: the guided samples equal those of
unguided sampling of class 0 alone, :func:`test_exact_guidance_is_sampling_the_class_alone`). Measured
at 2000 samples: euler_maruyama on ve (sigma_max 50) with 250 steps 5.8 floors, with 500 -1.4; ddim
leaves a few samples between the modes: 99.1% (ve) and 99.3% (vp) in class at 50 steps, 99.35% and
99.45% at 100, where exact draws give 99.7% (0.3% of them lie nearer component 1's mean)."""


def relative_weight_tolerance(num: int) -> float:
    """The tolerance of the within-class weight of component 0 (exact 2/3) from ``num`` samples: four
    binomial standard deviations, ``4 sqrt((2/3)(1/3) / num)`` (0.042 at 2000), but never below the
    issue's 0.02 (4.2 standard deviations at 10k samples)."""
    return max(0.02, 4.0 * math.sqrt(2.0 / 9.0 / num))


def check_class_conditional(method: str, process: str, sampler: str, tier: str) -> None:
    num, steps = CLASS_SIZES[tier]
    result = method_pipeline(method, process, (sampler, {"steps": steps[sampler]})).sample(
        num, seed=0, cond=Condition(labels=zeros(num)))
    x = result.x.double()
    weights = Mixture.diagonal(LABELLED_MIXTURE).mode_weights(x)  # components 0, 1, 2 of the whole mixture
    in_class = float(weights[0] + weights[2])
    relative = float(weights[0] / (weights[0] + weights[2]))
    report = errors(x, CLASS_0)
    print(f"\n{method} {process} {sampler} {steps[sampler]} steps, {num} samples: in class {in_class:.4f}, "
          f"component 0 within the class {relative:.4f} (exact 0.6667), ED {report.energy_distance:.2e} = "
          f"{report.ed_in_floors:.2f} floors, mean error {report.mean_error:.3f}, NFE {result.nfe}, "
          f"forward passes {result.forward_passes}")
    assert in_class >= 0.99, weights
    assert abs(relative - 2.0 / 3.0) <= relative_weight_tolerance(num), relative
    assert report.ed_in_floors <= MAX_FLOOR_STDS, report


@pytest.mark.parametrize("sampler", [STOCHASTIC, DETERMINISTIC])
@pytest.mark.parametrize("process", ["vp", "ve"])
@pytest.mark.parametrize("method", ["cfg", "classifier"])
def test_cfg_and_classifier_sample_the_class_conditional(method: str, process: str, sampler: str) -> None:
    check_class_conditional(method, process, sampler, "fast")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [STOCHASTIC, DETERMINISTIC])
@pytest.mark.parametrize("process", ["vp", "ve"])
@pytest.mark.parametrize("method", ["cfg", "classifier"])
def test_cfg_and_classifier_sample_the_class_conditional_at_full_size(method: str, process: str,
                                                                     sampler: str) -> None:
    """The issue's acceptance criteria: 10k samples, the within-class weights within 0.02."""
    check_class_conditional(method, process, sampler, "full")


@pytest.mark.parametrize("process", ["vp", "ve"])
@pytest.mark.parametrize("sampler", [(STOCHASTIC, {"steps": 100}), (DETERMINISTIC, {"steps": 20})])
def test_exact_guidance_is_sampling_the_class_alone(process: str, sampler: tuple[str, dict[str, Any]]) -> None:
    """The same noise through ``cfg`` (w = 0) and ``classifier`` (scale 1) gives the samples of the
    unguided ``gmm`` made of class 0's components alone, to float32 rounding: whatever error the
    sampling checks show is the sampler's, not the guidance's."""
    alone = pipeline(process, sampler, CLASS_0_PARAMS, []).sample(500, seed=5).x
    for method in ("cfg", "classifier"):
        guided = method_pipeline(method, process, sampler).sample(500, seed=5, cond=zeros(500)).x
        assert float((guided - alone).abs().max()) < 1e-3, method


@pytest.mark.parametrize(("process", "sampler"), [("vp", (DETERMINISTIC, {"steps": 100})),
                                                  ("ve", (STOCHASTIC, {"steps": 250}))])
def test_cfg_weight_pulls_samples_towards_the_class(process: str, sampler: tuple[str, dict[str, Any]]) -> None:
    """On :data:`CONCENTRIC_MIXTURE` (class 0 ``N(0, I)`` inside class 1 ``N(0, 4 I)``) the implicit
    classifier ``p_t(0 | x)`` falls with ``|x|`` at every ``t``, so ``w grad log p_t(0 | x)`` points
    inwards: the mean squared distance to the class mean must fall as ``w`` grows (``w = 0``: the exact
    2; ddim shrinks a Gaussian slightly, by about ``exp(-theta^2 / (2 N))`` in variance over ``N``
    steps spanning the angle ``theta`` of ``(alpha, sigma)``, so 100 steps here).

    On the separated :data:`LABELLED_MIXTURE` the same guidance pushes samples away from class 1 and
    past class 0's means: the mean distance to the nearest class-0 mean is 1.09, 1.04, 1.07, 1.35, 2.22
    at w = 0, 0.5, 1, 3, 10 (vp, ddim 100 steps, 2000 samples) while the distance to class 1's mean grows
    steadily (4.33 to 6.12); there the distance to the class means is not a monotone measure."""
    num = 1000
    spreads = []
    for w in (0.0, 1.0, 3.0, 10.0):
        pipe = pipeline(process, sampler, CONCENTRIC_MIXTURE, [{"type": "cfg", "scale": w}])
        x = pipe.sample(num, seed=0, cond=zeros(num)).x.double()
        spreads.append(float(x.square().sum(1).mean()))
    print(f"\n{process} {sampler[0]}: mean |x|^2 at w = 0, 1, 3, 10: {[round(s, 3) for s in spreads]}")
    # E|x|^2 = 2 for N(0, I_2); its standard error at 1000 samples is sqrt(Var(chi2_2) / 1000) = 0.063
    assert abs(spreads[0] - 2.0) < 4 * 0.063
    assert all(a > b for a, b in itertools.pairwise(spreads)), spreads


def test_forward_passes() -> None:
    """One pass per score evaluation for ``cfg`` at ``w = 0``, two (a batch of 2 B) at ``w != 0``, two
    for ``classifier`` (model and classifier)."""
    sampler = (DETERMINISTIC, {"steps": 7})
    for method, scale, per_evaluation in [("cfg", 0.0, 1), ("cfg", 2.0, 2), ("cfg", -1.0, 2),
                                          ("classifier", 0.0, 2), ("classifier", 2.0, 2)]:
        result = method_pipeline(method, "vp", sampler, scale).sample(8, seed=0, cond=zeros(8))
        assert result.nfe == 7 and result.forward_passes == per_evaluation * result.nfe, (method, scale, result)


@pytest.mark.parametrize("sampler", [(STOCHASTIC, {"steps": 40}), (DETERMINISTIC, {"steps": 20})])
def test_interval_limits_guidance_to_its_times(sampler: tuple[str, dict[str, Any]]) -> None:
    """``interval: [0.5, 1]``: ``cfg`` at ``w = 5`` costs two forward passes per evaluation inside it and
    one outside, and changes the samples; an interval past ``T = 1`` (``[2, 3]``), which would never act,
    is refused (tests/test_conditioning.py) rather than silently giving unguided samples."""
    labels = torch.tensor([0, 1] * 32)
    plain = pipeline("vp", sampler, LABELLED_MIXTURE, [{"type": "cfg", "scale": 0.0}]).sample(64, seed=3, cond=labels)
    half = pipeline("vp", sampler, LABELLED_MIXTURE,
                    [{"type": "cfg", "scale": 5.0, "interval": [0.5, 1.0]}]).sample(64, seed=3, cond=labels)
    inside = pipeline("vp", sampler, LABELLED_MIXTURE,
                      [{"type": "cfg", "scale": 5.0, "interval": [0.0, 1.0]}]).sample(64, seed=3, cond=labels)
    assert half.nfe < half.forward_passes < 2 * half.nfe and not torch.allclose(plain.x, half.x)
    assert inside.forward_passes == 2 * inside.nfe and not torch.allclose(plain.x, inside.x)
    with pytest.raises(CompatibilityError, match="would never act"):
        pipeline("vp", sampler, LABELLED_MIXTURE, [{"type": "cfg", "scale": 5.0, "interval": [2.0, 3.0]}])


# ---------------------------------------------------------------------------------------------
# Inverse problems against the exact posterior
# ---------------------------------------------------------------------------------------------

DPS_NOISE = 0.2
"""``noise_std`` of the dps checks. Smaller values make the likelihood term stiff (its coefficient
grows as ``1 / noise_std^2``): at 0.1, ddim with 50 steps diverges (samples of size 1e3 to 1e7) and
euler_maruyama's error depends on the step count (16-D matrix problem, 1000 samples: ED 0.27 at 1000
steps, 0.07 at 2000); at 0.05 euler_maruyama with 500 steps on ve meets NaN (see
:func:`test_dps_with_small_noise_and_few_steps_stays_bounded`)."""
INVERSE_SAMPLERS = {STOCHASTIC: (STOCHASTIC, {"steps": 500}), DETERMINISTIC: (DETERMINISTIC, {"steps": 50})}
INVERSE_SIZES = {"fast": 1000, "full": 4000}
"""Samples per check; the samplers are the same in both tiers, so the same measured errors apply."""

MEASURED: dict[tuple[str, str], tuple[float, float, float]] = {
    # (problem, sampler): energy distance, largest weight error, mean error; measured on vp, seed 0, at
    # 1000 and 4000 samples, the larger of the two. The energy distance's floor is 2.4e-3 (2-D) and
    # 2.6e-3 (16-D) at 1000 samples, 9e-4 and 1.2e-3 at 4000: every method is 3 (inpaint 16-D,
    # stochastic, 1000 samples) to 2100 floors off, so these are the methods' approximation errors,
    # not noise. Unconditional draws: ED 0.35 (2-D), 1.2 (16-D mask), 0.32 (16-D matrix).
    ("inpaint 2-D", STOCHASTIC): (0.080, 0.178, 0.191),
    ("inpaint 2-D", DETERMINISTIC): (0.107, 0.198, 0.344),  # exact weights 0.116, 0.671, 0.213; ddim 0.26, 0.46, 0.27
    ("inpaint 16-D", STOCHASTIC): (0.0169, 0.044, 0.275),
    ("inpaint 16-D", DETERMINISTIC): (0.054, 0.031, 0.519),
    ("dps mask 2-D", STOCHASTIC): (0.0635, 0.144, 0.134),
    ("dps mask 2-D", DETERMINISTIC): (0.108, 0.168, 0.112),
    ("dps mask 16-D", STOCHASTIC): (0.176, 0.185, 0.951),
    ("dps mask 16-D", DETERMINISTIC): (2.56, 0.408, 3.69),  # worse than ignoring y (ED 1.2): see below
    ("dps A 16-D", STOCHASTIC): (0.115, 0.204, 0.558),
    ("dps A 16-D", DETERMINISTIC): (1.64, 0.200, 2.32),  # worse than ignoring y (ED 0.32); a step-size error
}
"""The errors the checks allow, with a margin: energy distance 1.5 times plus 3 floors, weight error
plus 4 binomial standard deviations (``4 sqrt(0.25 / n)``), mean error 1.5 times plus 0.05.

Under a deterministic sampler dps fits the 16-D mask far more tightly than the posterior does (the
residual 0.002 against 0.19) and puts the weight on the wrong component (0.14 and 0.86 where the
posterior has 0.54 and 0.46), at any step count (ED 2.5 at 50 steps, 2.4 at 200; ddim and the
adaptive probability_flow agree): its guided score is not the score of any family of marginals, and
the probability-flow ODE turns its pull towards ``y`` into a collapse. With the 4 x 16 matrix, ddim's
error is mostly the step size instead (2000 samples: ED 1.58, 0.28, 0.09 at 50, 100, 200 steps): the
likelihood term is stiff. Stochastic samplers (euler_maruyama, ancestral) agree with each other and do
better; Chung et al. (2023) sample with the stochastic ancestral sampler."""
WORSE_THAN_UNCONDITIONAL = {("dps mask 16-D", DETERMINISTIC), ("dps A 16-D", DETERMINISTIC)}
"""The cases whose energy distance exceeds that of ignoring the observation: the others must do at
least twice better than unconditional draws."""


def inverse_problems(folder: Path) -> dict[str, tuple[LinearObservation, list[dict[str, Any]]]]:
    """The observations and their guidance, the dps matrix saved under ``folder``."""
    matrix = matrix_16d(DPS_NOISE)
    np.save(folder / "A.npy", matrix.matrix.numpy())
    return {
        "inpaint 2-D": (inpainting_2d(), [{"type": "inpaint"}]),
        "inpaint 16-D": (inpainting_16d(), [{"type": "inpaint"}]),
        "dps mask 2-D": (inpainting_2d().with_noise(DPS_NOISE), [{"type": "dps", "noise_std": DPS_NOISE}]),
        "dps mask 16-D": (inpainting_16d().with_noise(DPS_NOISE), [{"type": "dps", "noise_std": DPS_NOISE}]),
        "dps A 16-D": (matrix, [{"type": "dps", "noise_std": DPS_NOISE, "matrix": str(folder / "A.npy")}]),
    }


def check_inverse_problem(name: str, sampler: str, tier: str, folder: Path) -> Errors:
    problem, guidance = inverse_problems(folder)[name]
    num = INVERSE_SIZES[tier]
    pipe = pipeline("vp", INVERSE_SAMPLERS[sampler], problem.params, guidance)
    cond = problem.condition(num)
    x = pipe.sample(num, seed=0, cond=cond).x
    posterior = problem.posterior()
    report = errors(x, posterior, problem)
    ignored = errors(problem.prior.sample_data(num, torch.Generator().manual_seed(1))[0], posterior, problem)
    print(f"\n{name} {sampler}, {num} samples: ED {report.energy_distance:.2e} ({report.ed_in_floors:.1f} floors), "
          f"weight error {report.weight_error:.3f}, mean error {report.mean_error:.3f}, residual "
          f"{report.residual_rms:.3f} | unconditional draws: ED {ignored.energy_distance:.2e}, weight error "
          f"{ignored.weight_error:.3f}, mean error {ignored.mean_error:.3f}, residual {ignored.residual_rms:.3f}")
    if problem.mask is not None and problem.noise_std == 0.0:  # inpainting restores the observation exactly
        assert torch.equal(x[:, problem.mask], cond.observed[:, problem.mask])  # type: ignore[index]
    assert report.residual_rms is not None and ignored.residual_rms is not None
    # the fit to the observation: exact draws reach about noise_std; ignoring y gives 1.3 to 1.6
    assert report.residual_rms <= max(1.5 * problem.noise_std, 1e-6), report
    assert ignored.residual_rms > 1.0
    ed, weight, mean = MEASURED[name, sampler]
    assert report.energy_distance <= 1.5 * ed + MAX_FLOOR_STDS * report.floor, report
    assert report.weight_error <= weight + 4 * math.sqrt(0.25 / num), report
    assert report.mean_error <= 1.5 * mean + 0.05, report
    if (name, sampler) not in WORSE_THAN_UNCONDITIONAL:
        assert report.energy_distance < ignored.energy_distance / 2, (report, ignored)
    return report


@pytest.mark.parametrize("sampler", [STOCHASTIC, DETERMINISTIC])
@pytest.mark.parametrize("name", ["inpaint 2-D", "inpaint 16-D", "dps mask 2-D", "dps mask 16-D", "dps A 16-D"])
def test_inverse_problems_against_the_exact_posterior(name: str, sampler: str, tmp_path: Path) -> None:
    check_inverse_problem(name, sampler, "fast", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [STOCHASTIC, DETERMINISTIC])
@pytest.mark.parametrize("name", ["inpaint 2-D", "inpaint 16-D", "dps mask 2-D", "dps mask 16-D", "dps A 16-D"])
def test_inverse_problems_against_the_exact_posterior_at_full_size(name: str, sampler: str, tmp_path: Path) -> None:
    check_inverse_problem(name, sampler, "full", tmp_path)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_cfg_needs_a_class_conditional_model() -> None:
    with pytest.raises(CompatibilityError, match="guidance 'cfg' needs a class-conditional model"):
        pipeline("vp", ("ddim", {"steps": 4}), UNLABELLED, [{"type": "cfg", "scale": 1.0}])


def test_labels_are_required_and_checked() -> None:
    pipe = pipeline("vp", ("ddim", {"steps": 4}), LABELLED_MIXTURE, [{"type": "cfg", "scale": 1.0}])
    with pytest.raises(UsageError, match="--label"):
        pipe.sample(4, seed=0)
    for bad in (3, -1):  # classes 0 and 1, null label 2
        with pytest.raises(UsageError, match=f"classes 0 to 1 .* such as {bad}"):
            pipe.sample(4, seed=0, cond=torch.tensor([0, 1, bad, 0]))
    assert pipe.sample(4, seed=0, cond=torch.tensor([0, 1, 2, 2])).x.shape == (4, 2)  # the null label is a label
    guided = method_pipeline("classifier", "vp", ("ddim", {"steps": 4}))
    with pytest.raises(UsageError, match="--label"):
        guided.sample(4, seed=0)
    with pytest.raises(UsageError, match="classifier knows classes 0 to 1, but labels such as 2"):
        guided.sample(4, seed=0, cond=torch.tensor([0, 1, 2, 0]))


def test_inpaint_needs_a_mask_and_matching_observations() -> None:
    pipe = pipeline("vp", ("ddim", {"steps": 4}), inpainting_2d().params, [{"type": "inpaint"}])
    with pytest.raises(UsageError, match=r"needs mask.*--mask"):
        pipe.sample(4, seed=0, cond=Condition(observed=torch.zeros(4, 2)))
    with pytest.raises(UsageError, match=r"needs observed.*--observed"):
        pipe.sample(4, seed=0, cond=Condition(mask=torch.ones(4, 2, dtype=torch.bool)))
    with pytest.raises(UsageError, match="the mask has shape"):
        pipe.sample(4, seed=0, cond=Condition(mask=torch.ones(4, 3, dtype=torch.bool), observed=torch.zeros(4, 3)))


def test_dps_matrix_must_fit_the_data(tmp_path: Path) -> None:
    np.save(tmp_path / "A.npy", np.ones((4, 3)))
    with pytest.raises(CompatibilityError, match="has 3 columns but samples of shape \\[2\\] have 2 values"):
        pipeline("vp", ("ddim", {"steps": 4}), inpainting_2d().params,
                 [{"type": "dps", "noise_std": 0.1, "matrix": str(tmp_path / "A.npy")}])
    np.save(tmp_path / "B.npy", np.ones((3, 2)))
    pipe = pipeline("vp", ("ddim", {"steps": 4}), inpainting_2d().params,
                    [{"type": "dps", "noise_std": 0.1, "matrix": str(tmp_path / "B.npy")}])
    with pytest.raises(UsageError, match="the matrix has 3 rows"):
        pipe.sample(4, seed=0, cond=Condition(observed=torch.zeros(4, 2)))
    without = pipeline("vp", ("ddim", {"steps": 4}), inpainting_2d().params, [{"type": "dps", "noise_std": 0.1}])
    with pytest.raises(UsageError, match="without a matrix observes the masked coordinates"):
        without.sample(4, seed=0, cond=Condition(observed=torch.zeros(4, 2)))


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------

COMPOSITION_MEASURED = {STOCHASTIC: (0.130, 0.086), DETERMINISTIC: (0.173, 0.102)}
"""cfg + inpaint, vp, seed 0, 2000 samples: energy distance and weight error against the exact posterior."""


@pytest.mark.parametrize("sampler", [(STOCHASTIC, {"steps": 250}), (DETERMINISTIC, {"steps": 50})])
def test_cfg_and_inpaint_together(sampler: tuple[str, dict[str, Any]]) -> None:
    """``cfg`` (w = 0, class 0) then ``inpaint`` (second coordinate observed at 0): the observation is
    restored exactly; the samples are those of ``inpaint`` alone over a ``gmm`` of class 0's
    components (the same score up to float32 rounding: the composition adds no error), and their error
    against the exact ``p(x | y = 0, x_2 = 0)`` is the replacement method's own. Measured (vp, seed 0,
    2000 samples): ED 0.130 (stochastic) and 0.173 (deterministic), 68 and 90 floors, weight errors
    0.086 and 0.102 (exact weights 0.769, 0.231), mean errors 0.71 and 0.82; dropping the class (exact
    draws of the observation's posterior alone) gives ED 0.60. Bounds: 1.5 times the measured ED plus 3
    floors, and under half of the class-free posterior's; the weight error plus 4 binomial standard
    deviations."""
    num = 2000
    problem = labelled_inpainting_2d()
    assert problem.mask is not None
    cond = problem.condition(num, zeros(num))
    both = pipeline("vp", sampler, LABELLED_MIXTURE, [{"type": "cfg", "scale": 0.0}, {"type": "inpaint"}])
    x = both.sample(num, seed=0, cond=cond).x
    assert torch.equal(x[:, 1], cond.observed[:, 1])  # type: ignore[index]
    alone = pipeline("vp", sampler, CLASS_0_PARAMS, [{"type": "inpaint"}])
    assert float((x - alone.sample(num, seed=0, cond=problem.condition(num)).x).abs().max()) < 1e-3
    exact = inpainting_posterior(CLASS_0, problem.mask, problem.full_observed())
    report = errors(x, exact, problem)
    classless = errors(problem.posterior().sample_data(num, torch.Generator().manual_seed(1))[0], exact, problem)
    print(f"\ncfg + inpaint {sampler[0]}: ED {report.energy_distance:.3f} ({report.ed_in_floors:.1f} floors), weight "
          f"error {report.weight_error:.3f}, mean error {report.mean_error:.3f}; without the class: ED "
          f"{classless.energy_distance:.3f}")
    ed, weight = COMPOSITION_MEASURED[sampler[0]]
    assert report.energy_distance <= 1.5 * ed + MAX_FLOOR_STDS * report.floor, report
    assert report.energy_distance < classless.energy_distance / 2, (report, classless)
    assert report.weight_error <= weight + 4 * math.sqrt(0.25 / num), report


def tiny(name: str) -> dict[str, Any]:
    """A few steps of sampler ``name``, whatever its size parameters are called."""
    fields = REGISTRY.get("sampler", name).Params.model_fields
    small = {"steps": 3, "levels": 2, "steps_per_level": 2, "iterations": 3}
    params = {key: value for key, value in small.items() if key in fields}
    if "method" in fields and name == "probability_flow":
        params["method"] = "euler"
    return params


@pytest.mark.parametrize("name", REGISTRY.names("sampler"))
def test_every_sampler_accepts_cfg(name: str) -> None:
    """Guidance only changes the score, so every sampler runs it: finite samples of the right shape,
    two forward passes per score evaluation."""
    pipe = pipeline("vp", (name, tiny(name)), LABELLED_MIXTURE, [{"type": "cfg", "scale": 1.5}])
    result = pipe.sample(16, seed=0, cond=torch.tensor([0, 1] * 8))
    assert result.x.shape == (16, 2) and bool(torch.isfinite(result.x).all())
    assert result.forward_passes == 2 * result.nfe, result


# ---------------------------------------------------------------------------------------------
# A known limitation
# ---------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="dps's likelihood term is stiff (coefficient scale / noise_std^2): explicit "
                   "samplers with few steps diverge; Chung et al. (2023, Algorithm 1) normalise the step by "
                   "||y - A x0_hat||, which dps does not offer")
def test_dps_with_small_noise_and_few_steps_stays_bounded() -> None:
    """``dps`` with ``noise_std = 0.1`` under ddim (50 steps): the samples should stay near the data
    (within 10 of the origin; the posterior lies within about 6). Measured: values up to 2.5e4 (vp),
    finite, so nothing stops the run (NonFiniteError only reacts to NaN and Inf)."""
    problem = inpainting_2d()
    pipe = pipeline("vp", (DETERMINISTIC, {"steps": 50}), problem.params, [{"type": "dps", "noise_std": 0.1}])
    x = pipe.sample(1000, seed=0, cond=problem.with_noise(0.1).condition(1000)).x
    assert float(x.abs().max()) < 10.0

