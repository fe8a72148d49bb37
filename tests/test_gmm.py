"""The analytic Gaussian-mixture model and the output-kind adapter, against independent formulas."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from torch import distributions as D

from diffcore import get_registry
from diffcore.errors import CompatibilityError, SpecError
from diffcore.model import to_score
from diffcore.testing.conformance import REFERENCE_MIXTURE
from diffcore_models import GaussianMixture

PROCESSES = get_registry().names("process")


def torch_mixture(process, t: float) -> D.MixtureSameFamily:  # type: ignore[no-untyped-def]
    """p_t built with torch.distributions, independently of the gmm model's own code."""
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = float(process.alpha(tt)), float(process.sigma(tt))
    w = torch.tensor(REFERENCE_MIXTURE["weights"], dtype=torch.float64)
    mu = torch.tensor(REFERENCE_MIXTURE["means"], dtype=torch.float64)
    var = torch.tensor(REFERENCE_MIXTURE["variances"], dtype=torch.float64)
    comps = D.Independent(D.Normal(alpha * mu, (alpha**2 * var + sigma**2).sqrt()), 1)
    return D.MixtureSameFamily(D.Categorical(probs=w / w.sum()), comps)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_score_is_the_gradient_of_the_exact_log_density(name: str, t: float) -> None:
    process = get_registry().build("process", name)
    model = GaussianMixture(**REFERENCE_MIXTURE)
    model.bind(process)
    x = (torch.randn(256, 2, dtype=torch.float64) * 4).requires_grad_(True)
    log_p = torch_mixture(process, t).log_prob(x)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    tt = torch.full((256,), t, dtype=torch.float64)
    torch.testing.assert_close(model(x.detach(), tt), grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.log_prob(x.detach(), tt), log_p.detach(), rtol=1e-9, atol=1e-9)


def posterior_mean(process, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """E[x0 | x_t] for the mixture, from the Gaussian conditioning formula per component."""
    alpha, sigma = process.alpha(t)[:, None, None], process.sigma(t)[:, None, None]
    mu = torch.tensor(REFERENCE_MIXTURE["means"], dtype=torch.float64)
    var = torch.tensor(REFERENCE_MIXTURE["variances"], dtype=torch.float64)
    w = torch.tensor(REFERENCE_MIXTURE["weights"], dtype=torch.float64)
    var_t = alpha**2 * var + sigma**2
    log_r = torch.log(w) + D.Normal(alpha * mu, var_t.sqrt()).log_prob(x[:, None, :]).sum(-1)
    r = torch.softmax(log_r, dim=1)[:, :, None]
    cond_mean = mu + alpha * var / var_t * (x[:, None, :] - alpha * mu)
    return (r * cond_mean).sum(1)


@pytest.mark.parametrize("name", PROCESSES)
def test_output_kinds_convert_to_the_exact_score(name: str) -> None:
    """A perfect x0-, eps- or v-prediction model yields the exact score through to_score."""
    process = get_registry().build("process", name)
    model = GaussianMixture(**REFERENCE_MIXTURE)
    model.bind(process)
    t = torch.full((128,), 0.4, dtype=torch.float64)
    x = torch.randn(128, 2, dtype=torch.float64) * 3
    alpha, sigma = process.alpha(t)[:, None], process.sigma(t)[:, None]
    x0 = posterior_mean(process, x, t)
    eps = (x - alpha * x0) / sigma
    v = alpha * eps - sigma * x0
    exact = model(x, t)
    for kind, output in [("x0", x0), ("eps", eps), ("v", v), ("score", exact)]:
        torch.testing.assert_close(to_score(output, kind, x, t, process), exact, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_any_data_shape_and_device(device: str) -> None:
    process = get_registry().build("process", "vp")
    model = GaussianMixture(weights=[1.0, 2.0], means=[[0.0] * 12, [1.0] * 12], variances=[[1.0] * 12] * 2)
    model.bind(process)
    model.to(device)
    x = torch.randn(5, 3, 2, 2, device=device)
    t = torch.full((5,), 0.5, device=device)
    out = model(x, t)
    assert out.shape == x.shape and out.device.type == device
    torch.testing.assert_close(out.reshape(5, 12).cpu(), model.cpu()(x.reshape(5, 12).cpu(), t.cpu()))


def test_validation_and_binding() -> None:
    with pytest.raises(SpecError, match="one entry per component"):
        GaussianMixture(weights=[1.0], means=[[0.0], [1.0]], variances=[[1.0]])
    with pytest.raises(SpecError, match="component 1"):
        GaussianMixture(weights=[1.0, 1.0], means=[[0.0, 0.0], [1.0]], variances=[[1.0, 1.0], [1.0]])
    with pytest.raises(SpecError, match="greater than 0"):
        GaussianMixture(weights=[1.0], means=[[0.0]], variances=[[-1.0]])
    with pytest.raises(CompatibilityError, match="not bound"):
        GaussianMixture(weights=[1.0], means=[[0.0]], variances=[[1.0]])(torch.zeros(1, 1), torch.ones(1))


@pytest.mark.parametrize(("field", "value"), [("means", 1e20), ("means", 1e6), ("variances", 1e30),
                                              ("variances", 1e39)])
def test_a_component_the_prior_never_reaches_is_refused(field: str, value: float) -> None:
    """Means of 1e20 or variances of 1e30 (1e39: past float32) used to drop that component from the
    samples silently: under vp its marginal at T lies thousands of prior standard deviations away.
    The pipeline refuses it, naming the field; the same mixture under a ve process that does carry it
    to the prior (sigma_max far above its spread) is accepted."""
    mixture = {"weights": [0.5, 0.5], "means": [[0.0], [0.0]], "variances": [[1.0], [1.0]]}
    mixture[field] = [[1.0 if field == "variances" else 0.0], [value]]
    spec = {"process": {"type": "vp"}, "model": {"type": "gmm", **mixture}, "sampler": {"type": "ddim", "steps": 5}}
    from diffcore import Pipeline

    with pytest.raises(CompatibilityError, match=rf"model.{field}: component 1 reaches .* standard deviations "
                       r"of the prior of process 'vp' at T \(the limit is 10\)"):
        Pipeline.from_spec(spec)
    if value == 1e6:
        spec["process"] = {"type": "ve", "sigma_max": 1e7}
        x = Pipeline.from_spec(spec).sample(400, seed=0).x
        assert 0.4 < float((x > value / 2).float().mean()) < 0.6  # both components, in their weights
