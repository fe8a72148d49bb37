"""Thresholding of the data prediction (static clipping and Imagen's dynamic thresholding, Saharia et
al. 2022, Sec. 2.3) in ``ddim``, ``dpm_solver_pp``, ``unipc`` and ``heun``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffcore import Pipeline
from diffcore.errors import SpecError
from diffcore_samplers.common import ThresholdParams, threshold_x0

# ---------------------------------------------------------------------------------------------
# threshold_x0 against hand-computed values
# ---------------------------------------------------------------------------------------------


def test_none_returns_the_prediction_itself() -> None:
    x0 = torch.tensor([[-3.0, 0.5, 2.0]])
    assert threshold_x0(x0, ThresholdParams()) is x0


def test_clip_is_static_clipping_to_the_range() -> None:
    x0 = torch.tensor([[-3.0, 0.5, 2.0], [0.25, -0.75, 1.0]])
    assert torch.equal(threshold_x0(x0, ThresholdParams(thresholding="clip")),
                       torch.tensor([[-1.0, 0.5, 1.0], [0.25, -0.75, 1.0]]))
    assert torch.equal(threshold_x0(x0, ThresholdParams(thresholding="clip", clip_range=2.5)),
                       torch.tensor([[-2.5, 0.5, 2.0], [0.25, -0.75, 1.0]]))


def test_dynamic_uses_the_per_sample_quantile_of_the_absolute_values() -> None:
    """200 values 0.02, 0.04, ..., 4.0 (alternating signs): the 0.995 quantile of their absolute
    values lies at position 0.995 * 199 = 198.005 of the sorted list, s = 3.98 + 0.005 * 0.02 = 3.9801."""
    values = torch.arange(1, 201, dtype=torch.float64) / 50.0
    x0 = (values * torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(100)).reshape(1, 200)
    s = 3.9801
    assert float(np.quantile(x0.abs().numpy(), 0.995)) == pytest.approx(s, abs=1e-12)
    out = threshold_x0(x0, ThresholdParams(thresholding="dynamic"))
    torch.testing.assert_close(out, x0.clamp(-s, s) / s, rtol=0.0, atol=1e-12)
    assert out.abs().max() == pytest.approx(1.0) and out[0, 0] == pytest.approx(0.02 / s)
    # data range r: s = max(quantile, r), x0 = clamp(x0, -s, s) * r / s, so the result lies in [-r, r]
    out = threshold_x0(x0, ThresholdParams(thresholding="dynamic", clip_range=2.0, percentile=0.5))
    q = float(np.quantile(x0.abs().numpy(), 0.5))  # 2.01: above the floor 2
    assert q == pytest.approx(2.01)
    torch.testing.assert_close(out, x0.clamp(-q, q) * (2.0 / q), rtol=0.0, atol=1e-12)
    # percentile 1: s is the largest |x0|, a pure rescaling into the range
    torch.testing.assert_close(threshold_x0(x0, ThresholdParams(thresholding="dynamic", percentile=1.0)),
                               x0 / 4.0, rtol=0.0, atol=1e-12)


def test_dynamic_leaves_samples_within_the_range_unchanged() -> None:
    """``s`` is floored at ``clip_range``: a sample whose values all lie in the range is not rescaled,
    even where its quantile is far below the range."""
    x0 = torch.tensor([[0.1, -0.2, 0.05, 0.3], [1.0, -1.0, 0.0, 0.5]])
    assert torch.equal(threshold_x0(x0, ThresholdParams(thresholding="dynamic")), x0)
    assert torch.equal(threshold_x0(3.0 * x0, ThresholdParams(thresholding="dynamic", clip_range=3.0)), 3.0 * x0)


def test_dynamic_thresholds_each_sample_on_its_own() -> None:
    """One sample's outliers do not change another's threshold; the quantile runs over all event dims."""
    gen = torch.Generator().manual_seed(0)
    calm = 0.5 * torch.rand(1, 3, 4, 4, generator=gen)
    wild = 20.0 * torch.randn(1, 3, 4, 4, generator=gen)
    params = ThresholdParams(thresholding="dynamic", percentile=0.9)
    both = threshold_x0(torch.cat([calm, wild, calm]), params)
    assert both.shape == (3, 3, 4, 4)
    assert torch.equal(both[0], calm[0]) and torch.equal(both[2], calm[0])
    assert torch.equal(both[1:2], threshold_x0(wild, params))
    s = float(np.quantile(wild.abs().numpy(), 0.9))
    torch.testing.assert_close(both[1], (wild[0].clamp(-s, s) / s), rtol=1e-6, atol=1e-6)


def test_dynamic_keeps_the_dtype_of_half_precision_predictions() -> None:
    x0 = torch.tensor([[4.0, -2.0, 0.5, 1.0]], dtype=torch.float16)
    out = threshold_x0(x0, ThresholdParams(thresholding="dynamic", percentile=1.0))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, x0 / 4.0)


# ---------------------------------------------------------------------------------------------
# The samplers
# ---------------------------------------------------------------------------------------------

SAMPLERS: list[tuple[str, dict[str, object]]] = [
    ("ddim", {"steps": 30}),
    ("ddim", {"steps": 30, "eta": 1.0}),
    ("dpm_solver_pp", {}),
    ("dpm_solver_pp", {"order": 3}),
    ("dpm_solver_pp", {"method": "singlestep", "order": 3, "steps": 10}),
    ("unipc", {}),
    ("unipc", {"order": 3, "variant": "bh2"}),
    ("heun", {"steps": 15}),
    ("heun", {"steps": 15, "churn": 10.0}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items())}" for name, params in SAMPLERS]

FAR = {"weights": [0.5, 0.5], "means": [[5.0, -5.0], [-5.0, 5.0]], "variances": [[0.1, 0.1], [0.1, 0.1]]}
"""Data far outside [-1, 1]: every late data prediction must be thresholded."""
NEAR = {"weights": [0.5, 0.5], "means": [[0.3, -0.3], [-0.3, 0.3]], "variances": [[0.01, 0.01], [0.01, 0.01]]}
"""Data well inside [-1, 1] (5 standard deviations reach 0.8): the data predictions along the way
stay inside, and thresholding changes nothing but the rounding."""
NUM = 1000


def sample(mixture: dict[str, object], name: str, params: dict[str, object], **extra: object) -> torch.Tensor:
    pipe = Pipeline.from_spec({"process": {"type": "vp"}, "model": {"type": "gmm", **mixture},
                               "sampler": {"type": name, **params, **extra}})
    return pipe.sample(NUM, seed=0).x


@pytest.mark.parametrize(("name", "params"), SAMPLERS, ids=IDS)
def test_thresholding_keeps_far_off_data_in_range(name: str, params: dict[str, object]) -> None:
    """Data at +-5: unthresholded samples reach beyond 4, thresholded ones end within the range up
    to the last step's remaining noise (for DDIM with eta = 0 at most ``sigma(t_min) / sigma(T)``
    times the prior draw, about 0.01 * 4 on vp)."""
    assert sample(FAR, name, params).abs().max() > 4.0
    for thresholding in ("clip", "dynamic"):
        x = sample(FAR, name, params, thresholding=thresholding)
        assert torch.isfinite(x).all()
        assert x.abs().max() < 1.1, thresholding
        assert x.abs().max() > 0.9, thresholding  # pushed to the edge of the range, not collapsed
        wide = sample(FAR, name, params, thresholding=thresholding, clip_range=2.0)
        assert 1.8 < wide.abs().max() < 2.1, thresholding


@pytest.mark.parametrize(("name", "params"), SAMPLERS, ids=IDS)
def test_thresholding_leaves_in_range_data_alone(name: str, params: dict[str, object]) -> None:
    plain = sample(NEAR, name, params)
    for thresholding in ("clip", "dynamic"):
        assert (sample(NEAR, name, params, thresholding=thresholding) - plain).abs().max() < 1e-4


@pytest.mark.parametrize(("name", "params"), SAMPLERS, ids=IDS)
def test_dynamic_rescales_where_clip_clips(name: str, params: dict[str, object]) -> None:
    """One mode at (4, 0.5): clipping keeps the second coordinate at 0.5; dynamic thresholding
    divides the whole sample by s = quantile(|x0|, 0.995) = 0.5 + 0.995 * 3.5 = 3.9825, so the
    second coordinate ends near 0.5 / 3.9825 = 0.126, while the first is 1 either way."""
    mode = {"weights": [1.0], "means": [[4.0, 0.5]], "variances": [[0.01, 0.01]]}
    clipped = sample(mode, name, params, thresholding="clip").mean(0)
    dynamic = sample(mode, name, params, thresholding="dynamic").mean(0)
    assert clipped[0] == pytest.approx(1.0, abs=0.05) and dynamic[0] == pytest.approx(1.0, abs=0.05)
    assert clipped[1] == pytest.approx(0.5, abs=0.05)
    assert dynamic[1] == pytest.approx(0.5 / 3.9825, abs=0.05)


@pytest.mark.parametrize("name", ["ddim", "dpm_solver_pp", "unipc"])
def test_the_final_tweedie_step_is_thresholded(name: str) -> None:
    x = sample(FAR, name, {"final_denoise": True}, thresholding="clip")
    assert x.abs().max() <= 1.0
    x = sample(FAR, name, {"final_denoise": True}, thresholding="dynamic", clip_range=0.5)
    assert x.abs().max() <= 0.5 * (1 + 1e-6)


@pytest.mark.parametrize(("name", "params"), SAMPLERS, ids=IDS)
def test_none_is_the_default_and_ignores_the_other_fields(name: str, params: dict[str, object]) -> None:
    plain = sample(FAR, name, params)
    assert torch.equal(plain, sample(FAR, name, params, thresholding="none"))
    assert torch.equal(plain, sample(FAR, name, params, thresholding="none", clip_range=0.1, percentile=0.5))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def build(name: str, **params: object) -> Pipeline:
    return Pipeline.from_spec({"process": {"type": "vp"}, "model": {"type": "gmm", **NEAR},
                               "sampler": {"type": name, **params}})


@pytest.mark.parametrize("name", ["ddim", "dpm_solver_pp", "unipc", "heun"])
@pytest.mark.parametrize(("params", "field", "message"), [
    ({"thresholding": "dynamic", "percentile": 1.5}, "percentile", "less than or equal to 1"),
    ({"thresholding": "dynamic", "percentile": 0.0}, "percentile", "greater than 0"),
    ({"thresholding": "soft"}, "thresholding", "'none', 'clip' or 'dynamic'"),
    ({"thresholding": "clip", "clip_range": 0.0}, "clip_range", r"greater than or equal to 0\.000001"),
    ({"thresholding": "clip", "clip_range": 1e7}, "clip_range", "less than or equal to"),
    ({"thresholding": "clip", "clip_range": "1"}, "clip_range", "valid number"),
    ({"thresholding": True}, "thresholding", "'none', 'clip' or 'dynamic'"),
])
def test_bad_values_name_the_field(name: str, params: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(SpecError, match=rf"`sampler\.{field}`: .*{message}"):
        build(name, **params)


def test_dpm_solver_has_no_thresholding() -> None:
    """Noise prediction forms no x0: ``dpm_solver`` does not have the fields at all."""
    for field, value in (("thresholding", "clip"), ("clip_range", 1.0), ("percentile", 0.9)):
        with pytest.raises(SpecError, match=rf"`sampler\.{field}`: unknown field"):
            build("dpm_solver", **{field: value})
    build("dpm_solver_pp", thresholding="clip")
