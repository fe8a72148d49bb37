"""Encoding (``diffcore/encoding.py``) and partial-range sampling (``diffcore/partial.py``) against ground truth.

The analytic ``gmm`` model has the exact score of the perturbed mixture, so:

- **round trip**: encoding mixture draws with the probability-flow ODE and decoding the latents with the
  ``probability_flow`` sampler gives the data back up to the solvers' error alone. dopri5 keeps the
  local error of each accepted step below ``atol + rtol |x|`` (per value, in torchdiffeq's RMS norm);
  the round trip's error is then bounded by the accepted steps of both solves times ``tol (1 + rms x)``
  (errors adding at most linearly, the flow not amplifying them between the ends):
  :func:`round_trip_bound`. Measured on 200 draws of the 2-D reference mixture at ``tol = 1e-5``: RMS
  error 4.6e-4 (ve, sigma_max 100), 3.7e-4 (vp), 4.1e-4 (subvp) to ``T``, 2.3e-5 / 2.4e-4 / 3.1e-4 to
  ``t = 0.5``, against bounds of 1e-3 to 2e-3 (6e-4 to 8e-4 to ``t = 0.5``); at ``tol = 1e-7`` 180 to 240
  times smaller (error proportional to the tolerance: the solver's, not a bias). NFE (encode + decode)
  152 + 110 (ve), 104 + 86 (vp), 110 + 86 (subvp) at 1e-5.
- **latents**: the flow carries ``p_0`` to ``p_T``, so the latents of mixture draws follow the prior
  (mean 0, covariance ``prior_std^2 I`` up to ``alpha(T)^2 Cov[x_0]``, which is 1e-3 for vp).
- **partial range**: states drawn exactly from ``p_{t0}`` (mixture draws noised by the closed-form
  marginal, :func:`~diffcore.partial.noise_to`) and run by a reverse sampler from ``t0`` are draws of
  ``p_{t_min}``: energy distance to exact draws within 3 floor standard deviations (the data-vs-data
  noise, :func:`~diffcore.testing.conformance.energy_distance_floor`), as tests/test_samplers.py
  measures whole-range sampling. A wrong start time is seen (ddim started at ``0.8 t0``: 17 to 25 floors
  at 2000 samples), so the check has power.

The default tier uses small sizes; ``-m slow`` repeats the statistical checks at 8000 samples.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from conftest import DoubleWell, ZeroScore
from torch import Tensor

from diffcore import CompatibilityError, Pipeline, UsageError, get_registry
from diffcore.condition import Condition
from diffcore.encoding import EncodeResult, encode
from diffcore.errors import SpecError
from diffcore.metrics import energy_distance
from diffcore.model import score_function
from diffcore.noise import NoiseSource
from diffcore.ode import SolverParams
from diffcore.partial import noise_to, original_process, starting_at
from diffcore.process import ForwardProcess, LinearGaussianProcess, ProcessParams, ScoreFn
from diffcore.sampler import Callback, Sampler, StepInfo
from diffcore.testing.conformance import REFERENCE_MIXTURE, energy_distance_floor, sample_mixture
from diffcore.testing.mixtures import LABELLED_MIXTURE

REGISTRY = get_registry()
PROCESSES = ["ve", "vp", "subvp"]
FLOOR_STDS = 3.0
"""Energy distance bound in floor standard deviations (tests/test_samplers.py's convention)."""
PROCESS_PARAMS = {"ve": {"sigma_max": 100.0}}
"""As in tests/test_samplers.py: ve's default sigma_max of 50 leaves a prior that misses p_T's variance;
only the latent check starts from the prior, the rest from exact draws."""




def pipeline(process: str, sampler: str = "probability_flow", mixture: dict[str, Any] = REFERENCE_MIXTURE,
             guidance: list[dict[str, Any]] | None = None, **sampler_params: Any) -> Pipeline:
    return Pipeline.from_spec({"process": {"type": process, **PROCESS_PARAMS.get(process, {})},
                               "model": {"type": "gmm", **mixture}, "sampler": {"type": sampler, **sampler_params},
                               "guidance": guidance or []})


def draws(n: int, seed: int = 0, mixture: dict[str, Any] = REFERENCE_MIXTURE) -> Tensor:
    return sample_mixture(mixture, n, torch.Generator().manual_seed(seed))


def rms(x: Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


# ---------------------------------------------------------------------------------------------
# The view: starting_at
# ---------------------------------------------------------------------------------------------


class NormalisedTime(LinearGaussianProcess):
    """A process whose formulas read ``self.T``: ``alpha(t) = exp(-5 t / T)``, ``sigma^2 = 1 - alpha^2``
    (a schedule normalised to ``[0, T]``). A view started at ``t0`` must keep its math."""

    name = "normalised_time"
    Params = ProcessParams

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-5.0 * t / self.T)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-10.0 * t / self.params.T))


def test_view_changes_the_start_and_nothing_else() -> None:
    process = NormalisedTime(T=2.0)
    view = starting_at(process, 0.5)
    assert view.T == 0.5 and view.t_min == process.t_min and view.params is process.params
    assert view.params.T == 2.0 and view.name == "normalised_time" and original_process(view) is process
    assert isinstance(view, NormalisedTime) and isinstance(view, LinearGaussianProcess)
    assert view.capabilities() == process.capabilities() and view.linear_gaussian is view
    t = torch.linspace(0.01, 2.0, 7, dtype=torch.float64)
    for method in ("alpha", "sigma", "half_log_snr", "drift_coef", "diffusion"):
        torch.testing.assert_close(getattr(view, method)(t), getattr(process, method)(t), rtol=0, atol=0)
    lam = process.half_log_snr(torch.tensor([0.3], dtype=torch.float64))
    torch.testing.assert_close(view.t_from_half_log_snr(lam), torch.tensor([0.3], dtype=torch.float64))
    assert view.prior_std() == process.prior_std()  # the prior is the process's, at its T
    vp = REGISTRY.build("process", "vp")
    assert starting_at(vp, vp.T) is vp  # t0 = T: the process itself
    twice = starting_at(starting_at(vp, 0.5), 0.2)
    assert twice.T == 0.2 and original_process(twice) is vp
    assert copy.deepcopy(starting_at(vp, 0.5)).T == 0.5
    assert type(starting_at(vp, 0.5))(beta_max=10.0).T == 1.0  # a process's own checks rebuild plain processes
    with pytest.raises(AttributeError, match="read-only view"):
        starting_at(vp, 0.5).params = vp.params  # type: ignore[misc]
    double_well = starting_at(DoubleWell(), 0.5)
    assert double_well.linear_gaussian is None and double_well.T == 0.5


@pytest.mark.parametrize("t0", [0.0, 1e-3, 1.5, -1.0, math.nan, math.inf])
def test_start_time_outside_the_process_is_refused(t0: float) -> None:
    with pytest.raises(UsageError, match=r"t_start = .* outside \(t_min, T\]|finite number"):
        starting_at(REGISTRY.build("process", "vp"), t0)


# ---------------------------------------------------------------------------------------------
# noise_to: the forward marginal
# ---------------------------------------------------------------------------------------------


def test_noise_to_draws_the_forward_marginal_reproducibly() -> None:
    process = REGISTRY.build("process", "vp")
    x0 = draws(4000)
    xt = noise_to(process, x0, 0.4, seed=5)
    t = torch.tensor([0.4], dtype=torch.float64)
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    z = (xt - alpha * x0) / sigma
    assert abs(float(z.mean())) < 4 / math.sqrt(z.numel()) and abs(float(z.std()) - 1) < 0.03
    assert xt.dtype == torch.float64
    torch.testing.assert_close(noise_to(process, x0[10:20], 0.4, seed=5, start=10), xt[10:20], rtol=0, atol=0)
    assert not torch.equal(noise_to(process, x0, 0.4, seed=6), xt)
    with pytest.raises(CompatibilityError, match="linear-Gaussian"):
        noise_to(DoubleWell(), x0, 0.4, seed=0)
    with pytest.raises(UsageError, match=r"within \[t_min, T\]"):
        noise_to(process, x0, 1.5, seed=0)


# ---------------------------------------------------------------------------------------------
# Encoding and the round trip
# ---------------------------------------------------------------------------------------------


def round_trip(process: str, tol: float, t_end: float | None, n: int = 200) -> tuple[float, float, EncodeResult, int]:
    """RMS reconstruction error of encode (to ``t_end``) then decode (``probability_flow`` from ``t_end``)
    at ``rtol = atol = tol``, its bound (module docstring), the encoding and the decoding's NFE."""
    pipe = pipeline(process, rtol=tol, atol=tol)
    x = draws(n)
    enc = pipe.encode(x, t_end=t_end, options=SolverParams(rtol=tol, atol=tol))
    assert enc.latent.shape == x.shape and enc.latent.dtype == torch.float64 and enc.t_end == (t_end or pipe.process.T)
    dec = pipe.sample(n, seed=0, x_start=enc.latent, t_start=enc.t_end, dtype=torch.float64)
    assert dec.steps is not None
    error = rms(dec.x - x)
    bound = (enc.steps + dec.steps) * tol * (1.0 + rms(x))
    print(f"\n{process} tol {tol:g} to t = {enc.t_end:g}: RMS error {error:.2e} (bound {bound:.2e}, max "
          f"{float((dec.x - x).abs().max()):.2e}), NFE encode {enc.nfe} ({enc.steps} steps) + decode {dec.nfe} "
          f"({dec.steps} steps), latent RMS {rms(enc.latent):.3g}")
    return error, bound, enc, dec.nfe


@pytest.mark.parametrize("process", PROCESSES)
def test_encode_then_decode_reconstructs_the_data(process: str) -> None:
    """To T and to an intermediate t (decoded by starting the sampler there), within the bound derived
    from the tolerance; the error is the solver's: 100 times smaller tolerances, at least 30 times
    smaller error."""
    coarse, bound, enc, _ = round_trip(process, 1e-5, None)
    assert coarse < bound and enc.nfe > 0 and enc.steps > 0
    middle, bound, _, _ = round_trip(process, 1e-5, 0.5)
    assert middle < bound
    fine, bound, _, _ = round_trip(process, 1e-7, None)
    assert fine < bound and fine < coarse / 30


def test_encode_is_the_flow_of_the_model_with_its_condition_without_guidance() -> None:
    """A conditional model is encoded with the condition's labels (the exact score of p_t(x | y)), the
    guidance left out; decoding with the same labels reconstructs the data."""
    guided = pipeline("vp", mixture=LABELLED_MIXTURE, guidance=[{"type": "cfg", "scale": 2.0}])
    x, component = guided.model.sample_data(64, torch.Generator().manual_seed(0))  # type: ignore[operator]
    labels = torch.tensor(LABELLED_MIXTURE["labels"])[component]  # each point of its own class
    enc = guided.encode(x, cond=labels)
    fn = score_function(guided.model, guided.process)
    plain = encode(lambda xs, ts: fn(xs, ts, Condition(labels=labels)), guided.process, x)
    torch.testing.assert_close(enc.latent, plain.latent, rtol=0, atol=0)
    assert enc.nfe == plain.nfe
    unconditional = guided.encode(x)  # the null label: the whole mixture's flow
    assert rms(unconditional.latent - enc.latent) > 0.01
    decoder = Pipeline(guided.process, guided.model, guided.sampler)
    dec = decoder.sample(64, seed=0, x_start=enc.latent, cond=labels, dtype=torch.float64)
    assert rms(dec.x - x) < 2e-3
    chunked = guided.encode(x, cond=labels, batch_size=16, options=SolverParams(method="rk4", steps=20))
    assert chunked.nfe == 80 and chunked.steps == 20  # rk4: 4 evaluations a step
    whole = guided.encode(x, cond=labels, options=SolverParams(method="rk4", steps=20))
    torch.testing.assert_close(chunked.latent, whole.latent)  # fixed steps: rows independent


def latents_follow_the_prior(process_name: str, n: int) -> None:
    pipe = pipeline(process_name)
    enc = pipe.encode(draws(n, seed=1))
    lg = pipe.process.linear_gaussian
    assert lg is not None
    z = enc.latent / lg.prior_std()
    floor = energy_distance_floor({"weights": [1.0], "means": [[0.0, 0.0]], "variances": [[1.0, 1.0]]}, n)
    prior = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ed = energy_distance(z, prior)
    mean, cov = z.mean(0), torch.cov(z.T)
    print(f"\n{process_name}, {n} latents / prior std: mean {mean.tolist()}, covariance {cov.flatten().tolist()}, "
          f"energy distance to prior draws {ed:.2e} = {ed / floor:.2f} floor stds, NFE {enc.nfe}")
    assert float(mean.abs().max()) < 4 / math.sqrt(n)
    assert float((cov - torch.eye(2, dtype=cov.dtype)).abs().max()) < 4 * math.sqrt(2 / n)
    assert ed / floor < FLOOR_STDS


def test_latents_of_mixture_draws_follow_the_prior() -> None:
    latents_follow_the_prior("vp", 1000)


@pytest.mark.slow
@pytest.mark.parametrize("process", PROCESSES)
def test_latents_of_mixture_draws_follow_the_prior_at_full_size(process: str) -> None:
    latents_follow_the_prior(process, 8_000)


# ---------------------------------------------------------------------------------------------
# Partial-range sampling
# ---------------------------------------------------------------------------------------------

PARTIAL_SAMPLERS: dict[str, dict[str, Any]] = {"euler_maruyama": {"steps": 100}, "ddim": {"steps": 100}}
"""The reverse SDE and DDIM at moderate NFE from t0 (measured at 2000 samples, t0 = 0.3 and 0.6: within
0.5 floor stds on ve, vp, subvp). DDIM takes 100 steps: at 50, its own discretisation error on subvp
from t0 = 0.7 shows at 8000 samples (4.19 floor stds; 0.55 at 100 steps, -0.40 at 200), which is the
sampler's step size, not the start."""


def partial_range_report(process: str, sampler: str, t0: float, n: int, *, wrong_start: float | None = None) -> float:
    """Energy distance, in floor stds, of samples run by ``sampler`` from exact draws of ``p_{t0}`` (started
    at ``wrong_start`` instead of ``t0`` if given) to exact draws of ``p_{t_min}``."""
    pipe = pipeline(process, sampler, **PARTIAL_SAMPLERS[sampler])
    gen = torch.Generator().manual_seed(1)
    data = sample_mixture(REFERENCE_MIXTURE, n, gen)
    x_t0 = noise_to(pipe.process, data, t0, seed=3)
    result = pipe.sample(n, seed=0, x_start=x_t0, t_start=wrong_start or t0)
    exact = noise_to(pipe.process, sample_mixture(REFERENCE_MIXTURE, n, gen), pipe.process.t_min, seed=4)
    ed = energy_distance(result.x.double(), exact) / energy_distance_floor(REFERENCE_MIXTURE, n)
    moved = rms(result.x.double() - data)
    print(f"\n{sampler} on {process} from t0 = {t0}{f' started at {wrong_start}' if wrong_start else ''}, {n} "
          f"samples: energy distance {ed:.2f} floor stds, NFE {result.nfe}, moved RMS {moved:.3f}")
    return ed


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("sampler", list(PARTIAL_SAMPLERS))
def test_sampling_from_t0_gives_p0(process: str, sampler: str) -> None:
    assert partial_range_report(process, sampler, 0.5, 1000) < FLOOR_STDS


def test_a_wrong_start_time_is_seen() -> None:
    """The check has power: states of p_{0.6} started as if at 0.48 are far from p_0."""
    assert partial_range_report("vp", "ddim", 0.6, 1000, wrong_start=0.48) > 3 * FLOOR_STDS


@pytest.mark.slow
@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("sampler", list(PARTIAL_SAMPLERS))
@pytest.mark.parametrize("t0", [0.3, 0.7])
def test_sampling_from_t0_gives_p0_at_full_size(process: str, sampler: str, t0: float) -> None:
    assert partial_range_report(process, sampler, t0, 8_000) < FLOOR_STDS


def test_the_grid_starts_at_t_start_and_chunking_keeps_the_samples() -> None:
    pipe = pipeline("vp", "euler_maruyama", steps=10)
    x_t0 = noise_to(pipe.process, draws(20), 0.4, seed=1)
    times: list[float] = []
    whole = pipe.sample(20, seed=7, x_start=x_t0, t_start=0.4, callback=lambda info: times.append(info.t))
    step = (0.4 - pipe.process.t_min) / 10
    assert times == pytest.approx([0.4 - (i + 1) * step for i in range(10)])
    chunks = pipe.sample(20, seed=7, x_start=x_t0, t_start=0.4, batch_size=7)
    torch.testing.assert_close(chunks.x, whole.x, rtol=0, atol=0)
    assert not torch.equal(pipe.sample(20, seed=8, x_start=x_t0, t_start=0.4).x, whole.x)  # the noise is seeded


def small_params(name: str) -> dict[str, Any]:
    """Few steps for a sampler that has such a field (its defaults otherwise, or where they are refused)."""
    fields = REGISTRY.get("sampler", name).Params.model_fields
    wanted = {"steps": 8, "levels": 4, "steps_per_level": 2, "iterations": 5}
    params = {k: v for k, v in wanted.items() if k in fields}
    try:
        REGISTRY.build("sampler", name, **params)
    except SpecError:
        return {}
    return params


class ThirdPartyEuler(Sampler):
    """A sampler written elsewhere, knowing nothing of partial ranges: Euler steps of the probability-flow
    ODE on its own uniform grid from ``process.T``."""

    name = "third_party_euler"

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        reverse = process.reverse(score_fn, probability_flow=True)
        grid = torch.linspace(process.T, process.t_min, 9, dtype=torch.float64).tolist()
        x = x_T
        for i in range(8):
            tt = torch.full((x.shape[0],), grid[i], dtype=x.dtype)
            x = x - reverse.drift(x, tt) * (grid[i] - grid[i + 1])
            self.report(callback, i, grid[i + 1], x)
        return x, 8


@pytest.mark.parametrize("name", [*REGISTRY.names("sampler"), "third_party_euler"])
def test_every_sampler_starts_at_t_start(name: str) -> None:
    """Every registered sampler (and one defined here) runs from t_start unchanged: the right shape, the
    steps and NFE counted, every reported time within [t_min, t_start]."""
    if name == "third_party_euler":
        sampler: Sampler = ThirdPartyEuler()
    else:
        sampler = REGISTRY.build("sampler", name, **small_params(name))  # type: ignore[assignment]
    pipe = Pipeline(REGISTRY.build("process", "vp"), REGISTRY.build("model", "gmm", **REFERENCE_MIXTURE), sampler)
    x_t0 = noise_to(pipe.process, draws(16), 0.3, seed=0)
    seen: list[StepInfo] = []
    result = pipe.sample(16, seed=0, x_start=x_t0, t_start=0.3, callback=seen.append)
    full = pipe.sample(16, seed=0)
    assert result.x.shape == (16, 2) and bool(torch.isfinite(result.x).all())
    assert result.nfe >= 1 and (result.steps is None or result.steps >= 1) and seen
    assert all(pipe.process.t_min - 1e-12 <= info.t <= 0.3 + 1e-12 for info in seen)
    if name != "probability_flow":  # fixed grids: as many steps from t_start as from T
        assert result.nfe == full.nfe and result.steps == full.steps
    print(f"\n{name}: NFE {result.nfe} from t = 0.3 ({full.nfe} from T), steps {result.steps}")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_bad_start_states_and_times_are_refused() -> None:
    pipe = pipeline("vp", "euler_maruyama", steps=5)
    x = noise_to(pipe.process, draws(8), 0.5, seed=0).float()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"x_start": x, "t_start": 1.5}, r"t_start = 1.5 is outside \(t_min, T\] = \(0.001, 1\]"),
        ({"x_start": x, "t_start": 0.001}, r"outside \(t_min, T\]"),
        ({"x_start": x, "t_start": math.nan}, "finite number"),
        ({"t_start": 0.5}, "t_start = 0.5 needs x_start"),
        ({"x_start": x[:, :1], "t_start": 0.5}, r"x_start have shape \(8, 1\) but 8 samples of shape \(2,\) need"),
        ({"x_start": x[:5], "t_start": 0.5}, r"x_start have shape \(5, 2\) but 8 samples"),
        ({"x_start": x.numpy(), "t_start": 0.5}, "x_start have a ndarray"),
        ({"x_start": torch.full_like(x, math.nan), "t_start": 0.5}, "rows of x_start hold NaN"),
        ({"x_start": x, "latents": x}, "not both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            pipe.sample(8, seed=0, **kwargs)
    with pytest.raises(UsageError, match=r"t_min <= t_start < t_end <= T"):
        pipe.encode(draws(8), t_start=0.5, t_end=0.5)
    with pytest.raises(UsageError, match=r"t_min <= t_start < t_end <= T"):
        pipe.encode(draws(8), t_end=2.0)
    with pytest.raises(UsageError, match=r"data have shape \(8, 3\) but samples of this pipeline have shape \(2,\)"):
        pipe.encode(torch.zeros(8, 3))
    with pytest.raises(UsageError, match="floating-point tensor"):
        pipe.encode(torch.zeros(8, 2, dtype=torch.int64))
    with pytest.raises(UsageError, match="labels have shape"):
        pipeline("vp", mixture=LABELLED_MIXTURE).encode(draws(8), cond=torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="floating-point tensor"):
        encode(lambda xs, ts: xs, pipe.process, torch.zeros(2))
    zero = Pipeline(DoubleWell(), ZeroScore(), REGISTRY.build("sampler", "euler_maruyama", steps=3))
    assert zero.sample(4, seed=0, x_start=torch.zeros(4, 2), t_start=0.5).x.shape == (4, 2)  # any process


def test_cli_samples_from_t_start(tmp_path: Any) -> None:
    """``diffcore sample --latents X --t-start t0`` is :meth:`Pipeline.sample` with ``x_start``/``t_start``."""
    import numpy as np
    import yaml
    from conftest import run_cli

    spec = {"process": {"type": "vp"}, "model": {"type": "gmm", **REFERENCE_MIXTURE},
            "sampler": {"type": "ddim", "steps": 20}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    pipe = Pipeline.from_spec(spec)
    x_t0 = noise_to(pipe.process, draws(30), 0.4, seed=2).to(torch.float32)
    np.save(tmp_path / "x_t0.npy", x_t0.numpy())
    done = run_cli("sample", str(tmp_path / "spec.yaml"), "--num", "30", "--latents", str(tmp_path / "x_t0.npy"),
                   "--t-start", "0.4", "--out", str(tmp_path / "out.npy"), "--json", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert '"t_start": 0.4' in done.stdout
    expected = pipe.sample(30, seed=0, x_start=x_t0, t_start=0.4).x
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "out.npy")), expected)
    refused = run_cli("sample", str(tmp_path / "spec.yaml"), "--num", "30", "--t-start", "0.4",
                      "--out", str(tmp_path / "out.npy"))
    assert refused.returncode != 0 and "needs --latents" in refused.stderr
