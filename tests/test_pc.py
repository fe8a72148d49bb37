"""Predictor-corrector sampling: the Langevin corrector's step size stays bounded near the modes.

With score_sde's step ``eps = 2 alpha (snr ||z|| / ||s||)^2`` taken per sample, a sample near the
centre of a mode (``s ~ 0``) gets a huge step and is thrown far out: on the reference mixture the
default ``pc`` sampler produced points at |x| = 347 at 250 steps (the data lie within about 8). The
corrector now uses the reference norms (``eps = 2 alpha snr^2 sigma(t)^2``).
"""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from conftest import DoubleWell, ZeroScore

from diffcore import CompatibilityError, Pipeline, get_registry
from diffcore.metrics import energy_distance, mode_weights
from diffcore.testing.conformance import REFERENCE_MIXTURE, energy_distance_floor, sample_mixture
from diffcore_samplers.common import PREDICTORS
from diffcore_samplers.pc import PC, PCParams


@pytest.mark.parametrize("process", ["vp", "ve", "subvp"])
def test_pc_samples_match_the_mixture_without_outliers(process: str) -> None:
    """4000 samples, 250 steps (500 NFE). Measured: ED -0.0017 (vp), -0.0020 (ve), -0.0012 (subvp)
    against a floor of about 0.0014; max |x| about 8.3 (the exact draws reach about 8)."""
    pipe = Pipeline.from_spec({"process": {"type": process}, "model": {"type": "gmm", **REFERENCE_MIXTURE},
                               "sampler": {"type": "pc", "steps": 250}})
    x = pipe.sample(4000, seed=0).x.double()
    reference = sample_mixture(REFERENCE_MIXTURE, 4000, torch.Generator().manual_seed(1))
    ed = energy_distance(x, reference)
    floor = energy_distance_floor(REFERENCE_MIXTURE, 4000)
    w = torch.tensor(REFERENCE_MIXTURE["weights"], dtype=torch.float64)
    weights = mode_weights(x, w.log(), torch.tensor(REFERENCE_MIXTURE["means"], dtype=torch.float64),
                           torch.tensor(REFERENCE_MIXTURE["variances"], dtype=torch.float64))
    assert float(x.abs().max()) < 12.0
    assert abs(ed) < 4 * floor, (ed, floor)
    assert float((weights - w).abs().max()) < 0.03, weights


def test_predictor_requirements_are_checked_at_assembly() -> None:
    """``pc`` needs what its predictor needs: ``ancestral`` a linear-Gaussian process, refused at assembly
    with the predictor named; the generic predictors run on any process."""
    registry = get_registry()
    with pytest.raises(CompatibilityError, match=r"with predictor 'ancestral' requires a process with linear_gaussian"):
        Pipeline(DoubleWell(), ZeroScore(), registry.build("sampler", "pc", predictor="ancestral", steps=4))
    for predictor in ("reverse_diffusion", "euler_maruyama", "none"):
        pc = registry.build("sampler", "pc", predictor=predictor, steps=4)
        result = Pipeline(DoubleWell(), ZeroScore(), pc).sample(8, seed=0)
        assert result.x.shape == (8, 2) and bool(torch.isfinite(result.x).all())


def test_predictors_state_the_requirements_of_their_samplers() -> None:
    """Each predictor choice of ``pc`` is the step of the registered sampler of that name, and its
    requirements are the ones that sampler declares (stated once, on the predictor)."""
    registry = get_registry()
    choices = set(get_args(PCParams.model_fields["predictor"].annotation)) - {"none"}
    assert choices == set(PREDICTORS)
    for name, predictor in PREDICTORS.items():
        assert registry.get("sampler", name).requires == predictor.requires
    assert PC(predictor="ancestral").requirements() == {"linear_gaussian": "PC ('pc') with predictor 'ancestral'"}
    assert PC(predictor="reverse_diffusion").requirements() == {}
