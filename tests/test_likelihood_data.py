"""``diffcore likelihood`` and :func:`diffcore.density.data_log_likelihood` against closed forms: a
Gaussian mixture's density in raw units (the data scaling's log-determinant included), and for
integer data the exact probability of each bin (a product of normal CDF differences per component),
which uniform dequantisation must bound from below, closely when the bins are narrow."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_cli
from scipy.special import log_ndtr, logsumexp  # type: ignore[import-untyped]

from diffcore import Pipeline, get_registry
from diffcore.density import data_log_likelihood
from diffcore.errors import UsageError
from diffcore.likelihood import LikelihoodConfig

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-2.0, 0.0], [2.0, 1.0]])
VARIANCES = np.array([[0.5, 0.5], [0.3, 0.8]])
TOLERANCE = 0.01
"""Nats per dimension: the issue's bar for the exact trace (the solver's own error is about 1e-4, the
t_min gap of vp about 1e-4; tests/test_likelihood.py measures both)."""


def mixture_log_prob(x: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Closed-form log-density ``(n,)`` of a diagonal Gaussian mixture at ``x`` ``(n, D)``."""
    comp = -0.5 * (((x[:, None] - means) ** 2 / variances) + np.log(2 * math.pi * variances)).sum(-1)
    return logsumexp(comp + np.log(weights), axis=1)


def mixture_bin_log_prob(x: np.ndarray, width: float, weights: np.ndarray, means: np.ndarray,
                         variances: np.ndarray) -> np.ndarray:
    """Exact ``log P(bin)`` ``(n,)`` of the cube of side ``width`` centred on each row of ``x``."""
    std = np.sqrt(variances)
    hi = (x[:, None] + width / 2 - means) / std
    lo = (x[:, None] - width / 2 - means) / std
    with np.errstate(divide="ignore"):  # a bin far in a component's tail has mass 0 in float64: log 0 = -inf
        log_mass = log_ndtr(hi) + np.log1p(-np.exp(log_ndtr(lo) - log_ndtr(hi)))  # log(Phi(hi) - Phi(lo))
    return logsumexp(log_mass.sum(-1) + np.log(weights), axis=1)


def draw_mixture(n: int, seed: int, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.choice(len(weights), size=n, p=weights)
    return means[k] + np.sqrt(variances[k]) * rng.normal(size=means[k].shape)


def gmm_spec(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, **extra: object) -> dict[str, object]:
    return {"process": {"type": "vp"},
            "model": {"type": "gmm", "weights": weights.tolist(), "means": means.tolist(),
                      "variances": variances.tolist()},
            "sampler": {"type": "ddim", "steps": 20}, **extra}


def test_cli_log_prob_matches_the_closed_form(tmp_path: Path) -> None:
    spec, data, out = tmp_path / "gmm.yaml", tmp_path / "x.npy", tmp_path / "ll.npy"
    spec.write_text(yaml.safe_dump(gmm_spec(WEIGHTS, MEANS, VARIANCES)))
    x = draw_mixture(120, 0, WEIGHTS, MEANS, VARIANCES)
    np.save(data, x)
    done = run_cli("likelihood", str(spec), "--data", str(data), "--out", str(out), "--json",
                   env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    ll = np.load(out)
    assert ll.shape == (120,) and ll.dtype == np.float64
    error = (ll - mixture_log_prob(x, WEIGHTS, MEANS, VARIANCES)) / 2
    print(f"mean error {error.mean():.2e} nats/dim, max |error| {np.abs(error).max():.2e}, NFE {summary['nfe']}")
    assert abs(error.mean()) < TOLERANCE
    assert summary["num"] == 120 and summary["dim"] == 2 and summary["bpd"] is None and summary["nfe"] > 0
    assert summary["mean_log_prob"] == pytest.approx(ll.mean())


def test_scaled_data_are_reported_in_raw_units() -> None:
    # raw data: the mixture stretched by 5 around 10; the model sees (x - 10) * 0.2, the mixture itself
    shift, mult = 10.0, 0.2
    raw_means, raw_variances = MEANS / mult + shift, VARIANCES / mult**2
    pipe = Pipeline.from_spec(gmm_spec(WEIGHTS, MEANS, VARIANCES))
    x = draw_mixture(100, 1, WEIGHTS, raw_means, raw_variances)
    result = data_log_likelihood(pipe, torch.from_numpy(x), scaling=(shift, mult))
    error = (result.log_prob.numpy() - mixture_log_prob(x, WEIGHTS, raw_means, raw_variances)) / 2
    print(f"raw units: mean error {error.mean():.2e} nats/dim (the log-determinant is {2 * math.log(mult):.3f})")
    assert abs(error.mean()) < TOLERANCE
    assert result.bpd is None and result.log_prob_iw is None


def test_dequantised_bound_on_integer_data(tmp_path: Path) -> None:
    # integer data from a wide mixture (std 2 to 3, bins of width 1) in a spec whose `array` data set
    # declares the bin width and scales to [-1, 1]: the CLI dequantises, reports raw-unit log P(x) and bpd
    raw_means, raw_variances = np.array([[20.0, 30.0], [40.0, 35.0]]), np.array([[6.0, 4.0], [9.0, 5.0]])
    x = np.round(draw_mixture(150, 2, WEIGHTS, raw_means, raw_variances))
    train = np.round(draw_mixture(2000, 3, WEIGHTS, raw_means, raw_variances))
    np.save(tmp_path / "train.npy", train.astype(np.float32))
    data = {"type": "array", "path": str(tmp_path / "train.npy"), "bin_width": 1.0, "scale": "minus_one_one",
            "dequantize": True}
    params = {k: v for k, v in data.items() if k != "type"}
    shift, mult = get_registry().build("dataset", "array", **params).scaling
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(gmm_spec(WEIGHTS, (raw_means - shift) * mult, raw_variances * mult**2, data=data,
                                            likelihood={"dequantize": 8})))
    np.save(tmp_path / "x.npy", x)
    done = run_cli("likelihood", str(spec), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "ll.npy"),
                   "--json", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    summary, bound = json.loads(done.stdout), np.load(tmp_path / "ll.npy")
    exact = mixture_bin_log_prob(x, 1.0, WEIGHTS, raw_means, raw_variances)
    gap = (exact - bound) / 2  # nats per dimension; Jensen's gap is about E[u^2] / (2 var) = 1 / (24 var) per dim
    print(f"exact log P {exact.mean():.4f}, bound {bound.mean():.4f} (gap {gap.mean():.4f} nats/dim), "
          f"log-mean-exp bound bpd {summary['bpd_iw']:.4f} vs bound {summary['bpd']:.4f}, "
          f"exact bpd {-exact.mean() / (2 * math.log(2)):.4f}")
    se = gap.std() / math.sqrt(len(gap))
    assert gap.mean() > -3 * se  # a lower bound (up to Monte Carlo and solver error)
    assert gap.mean() < 1 / (24 * 4.0) + TOLERANCE  # and a close one: the largest Jensen gap plus the bar
    assert summary["bpd"] == pytest.approx(-bound.mean() / (2 * math.log(2)))
    assert summary["discrete"] and summary["dequantization_draws"] == 8 and summary["bin_width"] == 1.0
    assert summary["bpd_iw"] <= summary["bpd"] + 1e-12  # log-mean-exp >= mean, row by row
    assert summary["solves"] == 8


def test_hutchinson_and_draws_give_standard_errors() -> None:
    pipe = Pipeline.from_spec(gmm_spec(WEIGHTS, MEANS, VARIANCES))
    x = torch.from_numpy(draw_mixture(64, 4, WEIGHTS, MEANS, VARIANCES))
    exact = data_log_likelihood(pipe, x)
    assert exact.stderr is None
    config = LikelihoodConfig(trace="hutchinson", probes=8)
    first = data_log_likelihood(pipe, x, config=config, seed=3)
    again = data_log_likelihood(pipe, x, config=config, seed=3, batch_size=16)
    other = data_log_likelihood(pipe, x, config=config, seed=4)
    assert first.stderr is not None and bool((first.stderr > 0).all())
    z = (first.log_prob - exact.log_prob) / first.stderr
    print(f"Hutchinson K=8: mean z {float(z.mean()):.2f}, RMS z {float(z.pow(2).mean().sqrt()):.2f}")
    # unbiased: each z is Student-t with K - 1 = 7 degrees of freedom (variance 7/5), so their mean
    # has standard deviation sqrt(7/5 / n); and the standard errors are of the right size (RMS z ~ 1.18)
    assert abs(float(z.mean())) < 3 * math.sqrt(7 / 5 / len(z))
    assert 0.5 < float(z.pow(2).mean().sqrt()) < 2.0
    # seeded per row: chunking does not change which probes a row gets (the adaptive solver couples rows
    # within tolerance), another seed does
    torch.testing.assert_close(again.log_prob, first.log_prob, rtol=0, atol=1e-3)
    assert not torch.equal(other.log_prob, first.log_prob)


def test_bad_data_are_refused_with_the_fix(tmp_path: Path) -> None:
    pipe = Pipeline.from_spec(gmm_spec(WEIGHTS, MEANS, VARIANCES))
    with pytest.raises(UsageError, match=r"shape \(2,\)"):
        data_log_likelihood(pipe, torch.zeros(5, 3))
    with pytest.raises(UsageError, match="NaN or Inf"):
        data_log_likelihood(pipe, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(UsageError, match="not class-conditional"):
        data_log_likelihood(pipe, torch.zeros(2, 2), labels=torch.zeros(2, dtype=torch.long))
    spec = tmp_path / "gmm.yaml"
    spec.write_text(yaml.safe_dump(gmm_spec(WEIGHTS, MEANS, VARIANCES)))
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    done = run_cli("likelihood", str(spec), "--data", str(tmp_path / "x.npy"), "--set", "likelihood.probes=4")
    assert done.returncode != 0
    assert "likelihood" in done.stderr and "hutchinson" in done.stderr


def test_a_solve_past_its_step_limit_names_the_rows(tmp_path: Path) -> None:
    """Rows far outside the data's range make the ODE stiff: the solve stops at ``max_steps`` with an
    error naming the farthest rows, instead of running without bound; in-range data need far fewer
    (about 20 steps here, against over 200 for the scaled rows)."""
    example = ROOT / "examples" / "gmm2d.yaml"
    model = yaml.safe_load(example.read_text())["model"]
    x = draw_mixture(60, 0, *(np.array(model[k]) for k in ("weights", "means", "variances")))
    x[20:] *= 1e10
    data = tmp_path / "x.npy"
    np.save(data, x)
    proc = run_cli("likelihood", str(example), "--data", str(data), "--set", "likelihood.max_steps=40")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "rows 0 to 59: the adaptive ODE solve took 40 steps" in proc.stderr
    named = [int(row) for row in re.findall(r"row (\d+) \(largest \|value\| [0-9.]+e\+10\)", proc.stderr)]
    assert len(named) == 3 and min(named) >= 20, proc.stderr
    np.save(data, x[:20])
    proc = run_cli("likelihood", str(example), "--data", str(data), "--set", "likelihood.max_steps=40")
    assert proc.returncode == 0, proc.stderr
