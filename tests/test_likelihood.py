"""Exact likelihood (``diffcore/likelihood.py``) and the core ODE (``diffcore/ode.py``) against ground truth.

The analytic ``gmm`` model knows ``log p_t(x)`` of the perturbed mixture in closed form, so each
likelihood is compared with it on points drawn from the mixture. The error of a result splits exactly
into two parts, both printed (``-s``):

- the **flow error**, ``delta_log_prob + log p_T(latent) - log p_{t_min}(x)``: the change of variables
  integrated by the solver, checked against the closed form at both ends (what the solver and the
  divergence get wrong);
- the **prior mismatch**, ``prior_log_prob(latent) - log p_T(latent)``: the process's Gaussian prior is
  not exactly the mixture's ``p_T``. This is part of the model's ``log p`` (the model *is* the prior
  pushed through the flow), so it is not an error of the computation; it shrinks as ``sigma_max`` or
  ``T`` grow (ve's default ``sigma_max`` of 50 leaves -8e-4 nats/dim on average on the 2-D mixture).

The ``t_min`` part: the closed form compared with is ``log p_{t_min}``, the density the ODE reaches;
the data's ``log p_0`` differs from it by the gap ``log p_{t_min} - log p_0``, measured here on the 2-D
mixture at about 1e-9 nats/dim for ve (``t_min = 1e-5``) and -1.6e-5 (vp) and -2.1e-5 (subvp) at
``t_min = 1e-3``, so the comparison with ``log p_0`` holds within that gap plus the 0.01 nats/dim target.

The default tier uses the 2-D reference mixture and small batches; ``-m slow`` repeats the checks on a
64-D mixture.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor
from torchdiffeq import odeint

from diffcore import get_registry
from diffcore.condition import Condition
from diffcore.errors import UsageError
from diffcore.likelihood import LikelihoodOptions, LikelihoodResult, hutchinson_probes, log_likelihood
from diffcore.model import score_function
from diffcore.noise import NoiseSource
from diffcore.ode import ADAPTIVE, FIXED, SolverParams, integrate, probability_flow_velocity
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture
from diffcore.testing.mixtures import Mixture
from diffcore_models import GaussianMixture
from diffcore_samplers.probability_flow import ProbabilityFlowParams

REGISTRY = get_registry()
TARGET = 0.01
"""Nats per dimension: the accuracy the exact trace must reach on average (issue 12)."""
FLOW_BOUND = 1e-3
"""Nats per dimension: the bound on the mean absolute flow error (measured 1e-5 to 8e-5 at the default
tolerances of 1e-5, see :data:`LikelihoodOptions`); a tenth of the target."""




def setup(process_name: str, mixture: dict[str, Any] = REFERENCE_MIXTURE,
          **params: float) -> tuple[ForwardProcess, GaussianMixture, ScoreFn]:
    """The process, the bound ``gmm`` model on ``mixture`` and its unconditional score ``(x, t)``."""
    process = REGISTRY.build("process", process_name, **params)
    model = REGISTRY.build("model", "gmm", **mixture)
    model.bind(process)
    fn = score_function(model, process)
    return process, model, lambda x, t: fn(x, t, Condition())


def draws(mixture: dict[str, Any], n: int, seed: int = 0) -> Tensor:
    return sample_mixture(mixture, n, torch.Generator().manual_seed(seed))


def at(value: float, n: int) -> Tensor:
    return torch.full((n,), value, dtype=torch.float64)


def errors(result: LikelihoodResult, process: ForwardProcess, model: GaussianMixture, x: Tensor) -> dict[str, float]:
    """Per-dimension errors of ``result`` against the closed forms (module docstring): the mean and mean
    absolute total error against ``log p_{t_min}``, the flow error, the prior mismatch and the gap."""
    n, d = x.shape[0], x[0].numel()
    exact = model.log_prob(x, at(process.t_min, n))
    p_T = model.log_prob(result.latent, at(process.T, n))
    mismatch = result.prior_log_prob - p_T
    flow = result.delta_log_prob + p_T - exact
    total = result.log_prob - exact
    log_p0 = Mixture.diagonal(model.params.model_dump()).log_prob(x)
    return {"mean": float(total.mean()) / d, "mean_abs": float(total.abs().mean()) / d,
            "flow": float(flow.abs().mean()) / d, "mismatch": float(mismatch.mean()) / d,
            "gap": float((exact - log_p0).mean()) / d, "vs_p0": float((result.log_prob - log_p0).mean()) / d}


def show(label: str, e: dict[str, float], result: LikelihoodResult) -> None:
    print(f"\n{label}: error/dim vs log p_tmin: mean {e['mean']:+.2e}, mean |.| {e['mean_abs']:.2e}; flow error "
          f"{e['flow']:.2e}; prior mismatch {e['mismatch']:+.2e}; gap log p_tmin - log p_0 {e['gap']:+.2e}; "
          f"vs log p_0 {e['vs_p0']:+.2e}; NFE {result.nfe}, {result.steps} steps, {result.seconds:.2f} s "
          f"(trace {result.trace}, vectorized {result.vectorized})")


def check_exact(process_name: str, mixture: dict[str, Any], n: int, **params: float) -> dict[str, float]:
    process, model, score = setup(process_name, mixture, **params)
    x = draws(mixture, n)
    result = log_likelihood(score, process, x)
    e = errors(result, process, model, x)
    show(f"{process_name} {params or ''} D={x.shape[1]}, {n} points", e, result)
    assert abs(e["mean"]) < TARGET, e
    assert e["flow"] < FLOW_BOUND, e
    assert abs(e["vs_p0"]) <= abs(e["gap"]) + TARGET, e
    assert result.log_prob.dtype == torch.float64 and result.log_prob.shape == (n,) and result.stderr is None
    torch.testing.assert_close(result.log_prob, result.prior_log_prob + result.delta_log_prob)
    return e


# ---------------------------------------------------------------------------------------------------
# exact trace against the closed form


@pytest.mark.parametrize("process_name", ["ve", "vp", "subvp"])
def test_exact_trace_matches_the_closed_form_2d(process_name: str) -> None:
    check_exact(process_name, REFERENCE_MIXTURE, 100)


@pytest.mark.parametrize(("process_name", "settings"), [
    ("ve", [{"sigma_max": 10.0}, {"sigma_max": 100.0}, {"sigma_max": 1000.0}]),
    ("vp", [{}, {"T": 1.5}, {"beta_max": 40.0}]),
])
def test_error_does_not_grow_with_the_noise_at_T(process_name: str, settings: list[dict[str, float]]) -> None:
    """More noise at ``T`` (larger ``sigma_max``, ``T`` or ``beta_max``) leaves the flow error bounded, and
    the total error is the flow error plus the prior mismatch, which shrinks: the prior is the process's
    own ``prior_log_prob``, evaluated at the latent. (At ve's ``sigma_max = 10`` the mismatch is -2e-2
    nats/dim: there the model's prior is wrong for this mixture, and the result says so.)"""
    found = []
    for params in settings:
        process, model, score = setup(process_name, **params)
        x = draws(REFERENCE_MIXTURE, 64)
        result = log_likelihood(score, process, x)
        e = errors(result, process, model, x)
        show(f"{process_name} {params}", e, result)
        assert e["flow"] < FLOW_BOUND, e
        assert abs(e["mean"] - e["mismatch"]) < FLOW_BOUND, e  # the total error is the mismatch, up to the flow's
        found.append(e)
    assert abs(found[-1]["mean"]) < TARGET and abs(found[-1]["mismatch"]) <= abs(found[0]["mismatch"])


def test_partial_range_with_the_density_at_its_end() -> None:
    """``t_end < T`` with the closed-form ``log p_{t_end}`` as ``end_log_prob`` gives ``log p_{t_min}``; without
    one it is refused; ``t_start > t_min`` gives ``log p_{t_start}``."""
    process, model, score = setup("vp")
    x = draws(REFERENCE_MIXTURE, 32)
    result = log_likelihood(score, process, x, t_end=0.5, end_log_prob=lambda z: model.log_prob(z, at(0.5, 32)))
    exact = model.log_prob(x, at(process.t_min, 32))
    assert float((result.log_prob - exact).abs().mean()) / 2 < FLOW_BOUND
    later = log_likelihood(score, process, x, t_start=0.2)
    p_T = model.log_prob(later.latent, at(process.T, 32))
    flow = later.delta_log_prob + p_T - model.log_prob(x, at(0.2, 32))
    assert float(flow.abs().mean()) / 2 < FLOW_BOUND
    with pytest.raises(UsageError, match="end_log_prob"):
        log_likelihood(score, process, x, t_end=0.5)


@pytest.mark.parametrize("process_name", ["ve", "vp", "subvp"])
def test_noise_level_variable_against_t(process_name: str) -> None:
    """The default (``variable="auto"``) integrates ``y = x / alpha_t`` in ``s = sigma_t / alpha_t`` with the
    Jacobian ``D log alpha`` at both ends: the closed form within the flow bound like the ``t`` path, on the
    whole range and on a partial one, the same latent as a solve to round-off (within 10 rtol of its scale),
    the score only ever asked for times inside the interval, and on ve
    fewer evaluations than in ``t`` at the same tolerance (ve's noise grows exponentially in ``t``)."""
    process, model, score = setup(process_name)
    x = draws(REFERENCE_MIXTURE, 64)
    seen: list[float] = []

    def recording(z: Tensor, t: Tensor) -> Tensor:
        seen.extend(float(v) for v in t.unique())
        return score(z, t)

    results = {}
    for variable in ("t", "auto"):
        seen.clear()  # the t path's first-step probe may look past T (torchdiffeq's initial step selection)
        result = log_likelihood(recording, process, x, options=LikelihoodOptions(variable=variable))
        e = errors(result, process, model, x)
        show(f"{process_name} variable={variable}", e, result)
        assert e["flow"] < FLOW_BOUND, e
        torch.testing.assert_close(result.log_prob, result.prior_log_prob + result.delta_log_prob)
        results[variable] = result
    assert all(process.t_min <= t <= process.T for t in seen)
    # both carry x to the same latent: within 10 rtol of its scale of the ODE solved to round-off
    tight = log_likelihood(score, process, x, options=LikelihoodOptions(variable="t", rtol=1e-10, atol=1e-10)).latent
    scale = float(tight.square().mean().sqrt())
    for result in results.values():
        assert float((result.latent - tight).abs().max()) < 10 * LikelihoodOptions().rtol * scale
    if process_name == "ve":
        assert results["auto"].nfe < results["t"].nfe
    seen.clear()
    t0, t1 = 0.2, 0.7
    part = log_likelihood(recording, process, x, t_start=t0, t_end=t1,
                          end_log_prob=lambda z: model.log_prob(z, at(t1, 64)))
    assert all(t0 <= t <= t1 for t in seen) and min(seen) == pytest.approx(t0) and max(seen) == pytest.approx(t1)
    flow = part.log_prob - model.log_prob(x, at(t0, 64))
    assert float(flow.abs().mean()) / 2 < FLOW_BOUND


@pytest.mark.parametrize("process_name", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("trace", ["exact", "gaussian", "rademacher"])
def test_control_variate_is_exact_for_unit_gaussian_data(process_name: str, trace: str) -> None:
    """For data ``N(0, I)`` the flow is a scaling, ``x_T = x sqrt(v_T / v_t0)`` with ``v = alpha^2 + sigma^2``,
    so ``log p_t0(x) - log p_T(x_T) = D/2 log(v_T / v_t0)`` exactly. That is the control variate's reference
    flow, whose divergence diffcore integrates in closed form: the solver integrates nothing but round-off,
    so ``delta_log_prob`` is exact at a tolerance of 1e-2 and every Hutchinson probe, Gaussian ones included
    (weighted by their own ``|eps|^2``), gives the same value: no spread."""
    unit = {"weights": [1.0], "means": [[0.0, 0.0, 0.0]], "variances": [[1.0, 1.0, 1.0]]}
    process, _, score = setup(process_name, unit)
    x = draws(unit, 16)
    options = (LikelihoodOptions(rtol=1e-2, atol=1e-2) if trace == "exact" else
               LikelihoodOptions(rtol=1e-2, atol=1e-2, trace="hutchinson", probes=8, probe=trace))
    result = log_likelihood(score, process, x, options=options)
    ends = torch.tensor([process.t_min, process.T], dtype=torch.float64)
    lg = process.linear_gaussian
    assert lg is not None
    v = lg.alpha(ends) ** 2 + lg.sigma(ends) ** 2
    expected = 1.5 * math.log(float(v[1] / v[0]))
    torch.testing.assert_close(result.delta_log_prob, torch.full((16,), expected, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    if result.stderr is not None:
        assert float(result.stderr.max()) < 1e-9


# ---------------------------------------------------------------------------------------------------
# Hutchinson's estimator


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe: str) -> None:
    """Over 64 points and 4 seeds (K = 1), the mean difference from the exact trace is within 3 standard
    errors of zero (its own spread over the 256 estimates / sqrt(256)). Measured on vp: rademacher
    +0.058 +- 0.053 nats (sd 0.85), gaussian -0.041 +- 0.083 (sd 1.33)."""
    process, _, score = setup("vp")
    x = draws(REFERENCE_MIXTURE, 64)
    exact = log_likelihood(score, process, x)
    diffs = []
    for seed in range(4):
        options = LikelihoodOptions(trace="hutchinson", probe=probe)  # type: ignore[arg-type]
        result = log_likelihood(score, process, x, options=options, seed=seed)
        assert result.stderr is None and result.per_probe is not None and result.per_probe.shape == (64, 1)
        diffs.append(result.log_prob - exact.log_prob)
    d = torch.cat(diffs)
    se = float(d.std()) / math.sqrt(d.numel())
    print(f"\nhutchinson {probe}, K=1, {d.numel()} estimates: mean difference from exact {float(d.mean()):+.4f} nats "
          f"(standard error {se:.4f}, z = {float(d.mean()) / se:+.2f}), sd {float(d.std()):.3f}; NFE {result.nfe} "
          f"(exact {exact.nfe})")
    assert abs(float(d.mean())) < 3 * se


def mean_square(d: Tensor) -> tuple[float, float]:
    """``mean(d^2)`` of independent differences ``d`` and the standard error of its logarithm: the sample
    std of ``d^2`` over ``sqrt(M)``, relative to the mean (the delta method; the differences are independent
    but not identically distributed, so this overestimates the error a little: conservative)."""
    sq = d.flatten().square()
    return float(sq.mean()), float(sq.std()) / (math.sqrt(sq.numel()) * float(sq.mean()))


def test_hutchinson_spread_shrinks_like_one_over_sqrt_k() -> None:
    """K = 16 probes (one solve) against K = 1 (separate solves, other seeds) on the same 256 points,
    Gaussian probes: the mean squared difference from the exact trace falls 16-fold, i.e. the spread
    4-fold, within 3 standard errors of the log of the ratio (derived from the data, :func:`mean_square`);
    and the reported per-sample standard errors match the spread of the K = 16 estimates, within the same
    kind of bound."""
    process, _, score = setup("vp")
    x = draws(REFERENCE_MIXTURE, 256)
    exact = log_likelihood(score, process, x).log_prob
    one, sixteen, stderr2 = [], [], []
    for seed in range(6):
        r1 = log_likelihood(score, process, x, options=LikelihoodOptions(trace="hutchinson", probe="gaussian"),
                            seed=seed)
        one.append(r1.log_prob - exact)
        r16 = log_likelihood(score, process, x, seed=100 + seed,
                             options=LikelihoodOptions(trace="hutchinson", probe="gaussian", probes=16))
        assert r16.stderr is not None and r16.per_probe is not None
        sixteen.append(r16.log_prob - exact)
        stderr2.append(r16.stderr.square())
    (v1, se1), (v16, se16) = mean_square(torch.cat(one)), mean_square(torch.cat(sixteen))
    bound = 3 * math.hypot(se1, se16)
    ratio = v1 / v16
    reported, se_rep = float(torch.cat(stderr2).mean()), mean_square(torch.cat(stderr2).sqrt())[1]
    print(f"\nhutchinson gaussian: rms difference K=1 {math.sqrt(v1):.3f}, K=16 {math.sqrt(v16):.3f}: spread ratio "
          f"{math.sqrt(ratio):.2f} (expected 4; log-variance ratio {math.log(ratio):.2f} vs {math.log(16):.2f} "
          f"+- {bound:.2f}); rms reported stderr {math.sqrt(reported):.3f}; NFE K=1 {r1.nfe}, K=16 {r16.nfe}, "
          f"{r1.seconds:.2f} s and {r16.seconds:.2f} s")
    assert abs(math.log(ratio) - math.log(16)) < bound
    assert abs(math.log(reported / v16)) < 3 * math.hypot(se_rep, se16)


def test_probes_are_seeded_and_independent_of_the_batch() -> None:
    """A shard's probes (``start``) are the whole's rows; the same seed gives the same result, bit for bit."""
    options = LikelihoodOptions(trace="hutchinson", probes=3)
    whole = hutchinson_probes(options, (40, 2, 3), seed=5)
    assert whole.shape == (3, 40, 2, 3) and set(whole.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(hutchinson_probes(options, (10, 2, 3), seed=5, start=20), whole[:, 20:30],
                               rtol=0, atol=0)
    assert not torch.equal(hutchinson_probes(options, (40, 2, 3), seed=6), whole)
    gaussian = hutchinson_probes(LikelihoodOptions(trace="hutchinson", probes=64, probe="gaussian"), (64, 8), seed=0)
    assert abs(float(gaussian.mean())) < 0.05 and abs(float(gaussian.var()) - 1) < 0.05  # 32768 draws
    process, _, score = setup("vp")
    x = draws(REFERENCE_MIXTURE, 16)
    a = log_likelihood(score, process, x, options=options, seed=1)
    b = log_likelihood(score, process, x, options=options, seed=1)
    assert torch.equal(a.log_prob, b.log_prob) and a.stderr is not None and b.stderr is not None
    assert torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.log_prob, log_likelihood(score, process, x, options=options, seed=2).log_prob)


# ---------------------------------------------------------------------------------------------------
# networks, shapes, the divergence itself


class NoVmap(torch.autograd.Function):
    """The identity, whose backward leaves torch (numpy) and so cannot run under vmap."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.from_numpy(grad.detach().cpu().numpy().copy())


def jacobian_trace(score: ScoreFn, process: ForwardProcess, x: Tensor, t: float) -> Tensor:
    """``tr(dv/dx)`` of the probability-flow velocity per row, from the full Jacobian (torch.autograd.functional)."""
    velocity = probability_flow_velocity(process, score)
    tt = torch.tensor(t, dtype=torch.float64)
    traces = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda r: velocity(tt, r[None])[0], row)
        traces.append(jac.reshape(row.numel(), row.numel()).diagonal().sum())
    return torch.stack(traces).to(torch.float64)


def test_divergence_of_a_network_on_images_batched_and_looped() -> None:
    """An untrained U-Net (eps output, float32, images ``(n, 1, 4, 4)``): one Euler step from ``t_min`` gives
    ``delta_log_prob = tr(dv/dx)(x, t_min) (T - t_min)``, which matches the full Jacobian's trace; the
    looped vector-Jacobian products (a model whose backward cannot be vectorised) give the same."""
    torch.manual_seed(0)
    process = REGISTRY.build("process", "vp")
    net = REGISTRY.build("model", "unet", image_size=4, channels=8, channel_mults=[1], num_res_blocks=1,
                         attention_resolutions=[4])
    net.eval()
    fn = score_function(net, process)
    score: ScoreFn = lambda x, t: fn(x, t, Condition())  # noqa: E731
    x = torch.randn(3, 1, 4, 4)
    options = LikelihoodOptions(method="euler", steps=1, variable="t")
    result = log_likelihood(score, process, x, options=options)
    assert result.vectorized and result.latent.shape == x.shape and result.nfe == 1
    expected = jacobian_trace(score, process, x, process.t_min) * (process.T - process.t_min)
    torch.testing.assert_close(result.delta_log_prob, expected, rtol=1e-4, atol=1e-4)
    looped = log_likelihood(lambda x, t: score(NoVmap.apply(x), t), process, x, options=options)
    assert not looped.vectorized
    torch.testing.assert_close(looped.delta_log_prob, result.delta_log_prob, rtol=1e-5, atol=1e-5)
    one_step = LikelihoodOptions(method="euler", steps=1, trace="hutchinson", probes=4, variable="t")
    hutch = log_likelihood(lambda x, t: score(NoVmap.apply(x), t), process, x, seed=3, options=one_step)
    vec = log_likelihood(score, process, x, seed=3, options=one_step)
    assert not hutch.vectorized and vec.vectorized and hutch.per_probe is not None and vec.per_probe is not None
    torch.testing.assert_close(hutch.per_probe, vec.per_probe, rtol=1e-5, atol=1e-5)


def test_event_shapes_are_flattened() -> None:
    """The 2-D mixture's points as ``(n, 1, 2)``: the same log-density as ``(n, 2)``."""
    process, _, score = setup("vp")
    x = draws(REFERENCE_MIXTURE, 16)
    flat = log_likelihood(score, process, x)
    shaped = log_likelihood(score, process, x[:, None, :])
    assert shaped.latent.shape == (16, 1, 2) and shaped.dim == 2
    torch.testing.assert_close(shaped.log_prob, flat.log_prob)


def test_bad_inputs_are_refused() -> None:
    process, _, score = setup("vp")
    x = draws(REFERENCE_MIXTURE, 4)
    for bad, match in [(x.long(), "floating-point"), (x[0], "floating-point"), (x[:0], "at least one row"),
                       (x.clone().fill_(math.nan), "NaN")]:
        with pytest.raises(UsageError, match=match):
            log_likelihood(score, process, bad)
    with pytest.raises(UsageError, match="within the process"):
        log_likelihood(score, process, x, t_start=0.0)
    with pytest.raises(UsageError, match="within the process"):
        log_likelihood(score, process, x, t_start=0.5, t_end=0.5, end_log_prob=process.prior_log_prob)
    with pytest.raises(UsageError, match="seed"):
        log_likelihood(score, process, x, seed=-1)
    with pytest.raises(ValueError, match="probes"):
        LikelihoodOptions(probes=4)
    with pytest.raises(ValueError, match="steps applies to fixed-step methods"):
        LikelihoodOptions(steps=10)


# ---------------------------------------------------------------------------------------------------
# the core ODE and the probability_flow sampler on it


def test_solver_options_are_one_definition() -> None:
    assert issubclass(ProbabilityFlowParams, SolverParams) and issubclass(LikelihoodOptions, SolverParams)
    assert set(SolverParams.model_fields) <= set(ProbabilityFlowParams.model_fields) == set(SolverParams.model_fields)
    with pytest.raises(ValueError, match="dopri5' is adaptive"):
        ProbabilityFlowParams(steps=10)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4", "euler"])
def test_integrate_counts_evaluations_and_never_passes_the_end(method: str) -> None:
    """``dx/dt = -x``, ``dy/dt = 2 y`` as a tuple state from 1 to 0.25 (backwards): the exact solution, every
    evaluation inside the interval, the evaluations and steps counted."""
    times: list[float] = []

    def velocity(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        times.append(float(t))
        return -state[0], 2 * state[1]

    start = (torch.ones(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    fixed = method in FIXED
    options = SolverParams(method=method, steps=50) if fixed else SolverParams(method=method, rtol=1e-8, atol=1e-8)
    solution = integrate(velocity, start, 1.0, 0.25, options)
    x, y = solution.state
    tol = 0.05 if method == "euler" else 1e-6  # Euler: relative error ~ c^2 h L / 2 = 0.023 for c = 2
    torch.testing.assert_close(x, torch.full_like(x, math.exp(0.75)), rtol=tol, atol=0)
    torch.testing.assert_close(y, torch.full_like(y, math.exp(-1.5)), rtol=tol, atol=0)
    assert solution.nfe == len(times) and all(0.25 <= t <= 1.0 for t in times)
    if fixed:
        assert solution.steps == 50 and solution.rejected == 0 and solution.nfe == (4 if method == "rk4" else 1) * 50
    else:
        assert method in ADAPTIVE and solution.steps > 0 and solution.nfe > solution.steps


def test_integrate_atol_scales_loosen_one_part() -> None:
    """``atol_scales`` scales ``atol`` per part of a tuple state. With ``dx/dt = 0`` and a quadrature
    ``dq/dt = cos(20 t)`` (exact integral ``sin(20) / 20``), the steps follow the quadrature's tolerance:
    a 1e4 times larger one takes fewer evaluations and stays within it. A scale per part is required."""

    def velocity(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return torch.zeros_like(state[0]), torch.cos(20 * t).expand_as(state[1])

    start = (torch.ones(4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    options = SolverParams(rtol=1e-10, atol=1e-10)
    tight = integrate(velocity, start, 0.0, 1.0, options)
    loose = integrate(velocity, start, 0.0, 1.0, options, atol_scales=(1.0, 1e4))
    exact = math.sin(20.0) / 20.0
    assert abs(float(tight.state[1]) - exact) < 1e-8 and abs(float(loose.state[1]) - exact) < 1e-5
    assert loose.nfe < tight.nfe
    with pytest.raises(UsageError, match="2 factors for a state of 3 part"):
        integrate(lambda t, s: s, (*start, start[1]), 0.0, 1.0, options, atol_scales=(1.0, 2.0))


def hand_integrated(process: ForwardProcess, score: ScoreFn, x_T: Tensor, params: dict[str, Any]) -> tuple[Tensor, int]:
    """The probability_flow sampler as it was before diffcore.ode (torchdiffeq called directly), and its NFE."""
    reverse = process.reverse(score, probability_flow=True)
    calls = [0]

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        calls[0] += 1
        return reverse.drift(x, t.to(x.dtype).expand(x_T.shape[0]))

    if params.get("method", "dopri5") in ADAPTIVE:
        times = torch.tensor([process.T, process.t_min], dtype=torch.float64)
        path = odeint(velocity, x_T, times, method=params.get("method", "dopri5"), rtol=params.get("rtol", 1e-5),
                      atol=params.get("atol", 1e-5), options={"step_t": times[1:]})
    else:
        times = torch.linspace(process.T, process.t_min, params["steps"] + 1, dtype=torch.float64)
        path = odeint(velocity, x_T, times, method=params["method"])
    return path[-1], calls[0]


@pytest.mark.parametrize("process_name", ["ve", "vp"])
@pytest.mark.parametrize("params", [{}, {"method": "bosh3", "rtol": 1e-3, "atol": 1e-4},
                                    {"method": "rk4", "steps": 10}])
def test_probability_flow_sampler_unchanged_and_reports_nfe(process_name: str, params: dict[str, Any]) -> None:
    """The sampler on :func:`diffcore.ode.integrate` gives the samples torchdiffeq gave it directly, bit for
    bit, with the NFE counted by the sampler equal to the solver's evaluations, and its steps reported (an
    adaptive solve's accepted steps)."""
    process, _, score = setup(process_name)
    noise = NoiseSource.range(7, 0, 50)
    x_T = process.prior_sample(noise, (2,), dtype=torch.float64)
    sampler = REGISTRY.build("sampler", "probability_flow", **params)
    with torch.no_grad():
        result = sampler.sample(score, process, x_T, noise)
        expected, nfe = hand_integrated(process, score, x_T, params)
        direct = integrate(probability_flow_velocity(process, score), x_T, process.T, process.t_min,
                           SolverParams(**params))
    assert torch.equal(result.x, expected) and result.nfe == nfe == direct.nfe
    assert result.steps == direct.steps and result.steps is not None
    if "steps" in params:
        assert result.steps == params["steps"]
    print(f"\nprobability_flow {params or 'dopri5 1e-5'} on {process_name}: NFE {result.nfe}, {result.steps} steps")


# ---------------------------------------------------------------------------------------------------
# slow tier: 64 dimensions


def mixture_64d() -> dict[str, Any]:
    """Four components in 64 dimensions (means ``1.5 N(0, 1)``, variances in ``[0.3, 1.3]``, seed 64, rounded)."""
    gen = torch.Generator().manual_seed(64)
    means = (1.5 * torch.randn(4, 64, generator=gen, dtype=torch.float64)).round(decimals=3)
    variances = (0.3 + torch.rand(4, 64, generator=gen, dtype=torch.float64)).round(decimals=3)
    return {"weights": [0.2, 0.3, 0.25, 0.25], "means": means.tolist(), "variances": variances.tolist()}


@pytest.mark.slow
@pytest.mark.parametrize(("process_name", "params"), [("ve", {}), ("ve", {"sigma_max": 100.0}), ("vp", {}),
                                                      ("subvp", {})])
def test_exact_trace_matches_the_closed_form_64d(process_name: str, params: dict[str, float]) -> None:
    check_exact(process_name, mixture_64d(), 128, **params)


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_64d(probe: str) -> None:
    """K = 16 probes on the 64-D mixture (vp, 128 points, one solve): the mean difference from the exact trace
    within 3 standard errors, and the reported standard errors match the spread of the per-probe estimates."""
    mixture = mixture_64d()
    process, model, score = setup("vp", mixture)
    x = draws(mixture, 128)
    exact = log_likelihood(score, process, x)
    options = LikelihoodOptions(trace="hutchinson", probes=16, probe=probe)  # type: ignore[arg-type]
    result = log_likelihood(score, process, x, options=options, seed=11)
    assert result.stderr is not None and result.per_probe is not None
    d = result.log_prob - exact.log_prob
    se = float(result.stderr.square().sum().sqrt()) / d.numel()  # the standard error of the mean of d
    e = errors(result, process, model, x)
    print(f"\nhutchinson {probe} K=16 on 64-D: mean difference from exact {float(d.mean()):+.4f} nats (standard "
          f"error {se:.4f}), rms {float(d.square().mean().sqrt()):.4f}, rms stderr "
          f"{float(result.stderr.square().mean().sqrt()):.4f}; flow error/dim {e['flow']:.2e}; NFE {result.nfe} "
          f"(exact {exact.nfe}), {result.seconds:.2f} s (exact {exact.seconds:.2f} s)")
    assert abs(float(d.mean())) < 3 * se
    v16, se16 = mean_square(d)
    reported, se_rep = mean_square(result.stderr)
    assert abs(math.log(reported / v16)) < 3 * math.hypot(se16, se_rep)

