"""Spec reading, overrides and the registry-built spec model (the error cases are in test_spec_errors)."""

from __future__ import annotations

import pytest

from diffcore import Registry, get_registry
from diffcore.errors import SpecError
from diffcore.spec import apply_overrides, parse_text, pipeline_spec_model, validate_spec

SPEC = {
    "process": {"type": "vp"},
    "model": {"type": "gmm", "weights": [1.0], "means": [[0.0, 0.0]], "variances": [[1.0, 1.0]]},
    "sampler": {"type": "euler_maruyama"},
}


def test_exponent_floats_are_numbers_as_in_yaml_1_2() -> None:
    assert parse_text("rtol: 1e-5\nbig: 2E+3\nquoted: '1e-5'") == {"rtol": 1e-5, "big": 2000.0, "quoted": "1e-5"}


def test_overrides_parse_values_and_create_paths() -> None:
    out = apply_overrides(SPEC, ["sampler.steps=250", "model.weights=[2.0]", "sampler.denoise_last=false",
                                 "process.type=subvp"])
    assert out["sampler"] == {"type": "euler_maruyama", "steps": 250, "denoise_last": False}
    assert out["model"]["weights"] == [2.0] and out["process"]["type"] == "subvp"
    assert SPEC["sampler"] == {"type": "euler_maruyama"}  # the input is not modified
    spec = validate_spec(out)
    assert spec.component("sampler") == ("euler_maruyama", {"steps": 250, "denoise_last": False})


def test_defaults_are_filled_in() -> None:
    spec = validate_spec(SPEC)
    assert spec.component("process")[1] == {"t_min": 1e-3, "T": 1.0, "beta_min": 0.1, "beta_max": 20.0}
    assert spec.guidance == [] and spec.shape == []  # type: ignore[attr-defined]


def test_spec_model_is_cached_per_registry_generation() -> None:
    registry = get_registry()
    assert pipeline_spec_model(registry) is pipeline_spec_model(registry)
    empty = Registry()
    model = pipeline_spec_model(empty)
    assert model is not pipeline_spec_model(registry)
    with pytest.raises(SpecError, match="no process is registered"):
        validate_spec(SPEC, registry=empty)


def test_one_member_kind_validates_and_reports_unknown_names() -> None:
    """A kind with a single registered member: no discriminated union, same messages."""
    registry = Registry()
    registry.load_entry_points()
    registry.unregister_plugin("backbones")
    assert registry.names("model") == ["gmm"]
    with pytest.raises(SpecError) as exc:
        validate_spec({**SPEC, "model": {**SPEC["model"], "type": "gm"}}, registry=registry)
    assert "`model.type`: no model named 'gm'; did you mean 'gmm'?" in str(exc.value)


def test_yaml_merge_keys_still_work() -> None:
    text = "base: &b {type: vp, beta_min: 0.2}\nprocess:\n  <<: *b\n  beta_max: 10.0\n"
    assert parse_text(text)["process"] == {"type": "vp", "beta_min": 0.2, "beta_max": 10.0}
