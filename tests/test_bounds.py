"""Every component parameter is bounded to where the components are valid (diffcore.limits).

- Specs that asked for crashes, hangs or terabytes (``shape: [-2]``, ``steps: 2000000000``,
  ``beta_max: 1e300``, ``t_min: 1e-300``) are refused with a spec error that names the field and the
  range;
- every integer field of every registered component has an upper bound (and every list of them a
  longest length), visible in the JSON Schema;
- building any registered component from parameters within the bounds, at their edges and at random
  (Hypothesis), either works or raises a diffcore error: never a bare Python or torch exception.
  Networks are built on the ``meta`` device: only their sizes are exercised, nothing is allocated;
- the closed-form parameter counts the networks are bounded by match the networks they build.

The process bounds (the half log-SNR range) and the samplers at their extremes are tested in
tests/test_processes.py and tests/test_samplers.py.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from diffcore import NoiseClassifier, Pipeline, get_registry
from diffcore.component import Component
from diffcore.errors import DiffcoreError, SpecError
from diffcore.limits import MAX_CLASSES, MAX_EVENT_VALUES, MAX_PARAMETERS, MAX_STEPS
from diffcore.model import ScoreModel
from diffcore.testing.conformance import REFERENCE_MIXTURE
from diffcore_backbones import MLP, ResMLP, UNet
from diffcore_backbones import mlp as mlp_module
from diffcore_backbones import resmlp as resmlp_module
from diffcore_backbones import unet as unet_module

REGISTRY = get_registry()
COMPONENTS = [(kind, name) for kind in ("process", "model", "objective", "sampler", "guidance", "dataset", "classifier")
              for name in REGISTRY.names(kind)]
GMM = {"type": "gmm", **REFERENCE_MIXTURE}

NOT_YET_BOUNDED: set[tuple[str, str]] = set()
"""Integer fields awaiting a bound (none)."""


@pytest.fixture(scope="module")
def array_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bounds") / "x.npy"
    np.save(path, np.zeros((8, 2), dtype=np.float32))
    return path


def required(kind: str, name: str, array_file: Path) -> dict[str, Any]:
    """Values for the fields without a default."""
    labelled = {**REFERENCE_MIXTURE, "labels": list(range(len(REFERENCE_MIXTURE["weights"])))}
    if kind == "classifier":
        return {"gmm": labelled, "mlp": {"shape": [2], "num_classes": 2}, "unet": {"num_classes": 2}}.get(name, {})
    if kind == "guidance":
        return {"classifier": {"classifier": {"type": "gmm", **labelled}}, "dps": {"noise_std": 0.1}}.get(name, {})
    return {"mlp": {"shape": [2]}, "resmlp": {"shape": [2]}, "gmm": dict(REFERENCE_MIXTURE),
            "gmm_samples": dict(REFERENCE_MIXTURE), "array": {"path": str(array_file)}}.get(name, {})


# ---------------------------------------------------------------------------------------------
# The hostile specs
# ---------------------------------------------------------------------------------------------


def spec(**parts: Any) -> dict[str, Any]:
    return {"process": {"type": "vp"}, "model": GMM, "sampler": {"type": "ddim"}, **parts}


@pytest.mark.parametrize(("document", "expected"), [
    (spec(model={"type": "mlp", "shape": [-2]}), ["`model.shape.0`", "greater than 0"]),
    (spec(model={"type": "mlp", "shape": [4096, 4096, 2]}), ["`model.shape`", f"at most {MAX_EVENT_VALUES}"]),
    (spec(model={"type": "mlp", "shape": [2], "hidden": 65536, "depth": 1024}),
     ["`model`", "number of parameters", f"at most {MAX_PARAMETERS}", "lower hidden"]),
    (spec(model={"type": "unet", "num_classes": MAX_CLASSES + 1}), ["`model.num_classes`", str(MAX_CLASSES)]),
    (spec(sampler={"type": "euler_maruyama", "steps": 2_000_000_000}), ["`sampler.steps`", str(MAX_STEPS)]),
    (spec(sampler={"type": "ddim", "steps": 99999999999999999999}), ["`sampler.steps`", str(MAX_STEPS)]),
    (spec(sampler={"type": "pc", "steps": 1000, "corrector_steps": 10_000}),
     ["`sampler`", "steps x corrector_steps", str(MAX_STEPS)]),
    (spec(sampler={"type": "langevin", "iterations": 10**12}), ["`sampler.iterations`", str(MAX_STEPS)]),
    (spec(sampler={"type": "probability_flow", "rtol": 1e-300}),
     ["`sampler.rtol`", "greater than or equal to 0.0000000001"]),
    (spec(sampler={"type": "reverse_sde", "adaptive": True, "rtol": 1e-300, "atol": 1e-300}),  # hung
     ["`sampler.rtol`", "`sampler.atol`", "greater than or equal to 0.0000000001"]),
    (spec(process={"type": "vp", "beta_max": 1e300}), ["`process`", "lower beta_max to at most 79.8"]),
    (spec(process={"type": "ve", "sigma_max": 1e300}), ["`process`", "lower sigma_max to at most 4.85e+08"]),
    (spec(process={"type": "vp", "t_min": 1e-300}), ["`process`", "raise t_min to at least 4.25e-17"]),
    (spec(process={"type": "vp", "T": 1e300}), ["`process`", "lower T to at most 1.99"]),
])
def test_hostile_specs_are_refused_with_the_field_and_range(document: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        Pipeline.from_spec(document)
    for text in expected:
        assert text in str(info.value), str(info.value)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "unipc"])
def test_the_garbage_t_min_is_refused_for_the_samplers_that_returned_garbage(sampler: str) -> None:
    """``t_min: 1e-300`` made these return finite garbage with exit status 0."""
    with pytest.raises(SpecError, match=r"lambda\(t_min\) must be at most 20"):
        Pipeline.from_spec(spec(process={"type": "vp", "t_min": 1e-300}, sampler={"type": sampler}))


# ---------------------------------------------------------------------------------------------
# Every integer field bounded
# ---------------------------------------------------------------------------------------------


def integer_schemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The integer (sub)schemas of a field's JSON Schema, through ``anyOf`` (``int | None``)."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            yield option


def unbounded(schema: dict[str, Any]) -> list[str]:
    """What of a field's JSON Schema lacks an upper bound: an integer, a list or a list's items."""
    missing = [f"{option}" for option in integer_schemas(schema) if "maximum" not in option
               and "exclusiveMaximum" not in option]
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "array":
            items = option.get("items", {})
            if "maxItems" not in option:
                missing.append("list length")
            if any(integer_schemas(items)) or items.get("type") == "array":
                missing += [f"items {m}" for m in unbounded(items)]
    return missing


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_every_integer_and_size_field_has_an_upper_bound(kind: str, name: str) -> None:
    schema = REGISTRY.get(kind, name).Params.model_json_schema()
    problems = {field: missing for field, sub in schema.get("properties", {}).items()
                if (kind, field) not in NOT_YET_BOUNDED and (missing := unbounded(sub))}
    assert not problems, f"{kind} {name!r}: fields without an upper bound: {problems}"


# ---------------------------------------------------------------------------------------------
# Building at the bounds never raises anything but a diffcore error
# ---------------------------------------------------------------------------------------------

Bounds = tuple[float | None, float | None, bool, bool]  # low, high, low excluded, high excluded


def bounds(field: FieldInfo) -> Bounds:
    low = high = None
    low_open = high_open = False
    for item in field.metadata:
        if isinstance(item, at.Ge):
            low = item.ge  # type: ignore[assignment]
        elif isinstance(item, at.Gt):
            low, low_open = item.gt, True  # type: ignore[assignment]
        elif isinstance(item, at.Le):
            high = item.le  # type: ignore[assignment]
        elif isinstance(item, at.Lt):
            high, high_open = item.lt, True  # type: ignore[assignment]
    return low, high, low_open, high_open


def multiple_of(field: FieldInfo) -> int:
    return next((int(item.multiple_of) for item in field.metadata if isinstance(item, at.MultipleOf)), 1)


def inner(annotation: Any) -> tuple[Any, bool]:
    """``(type, optional)`` with ``None`` taken out of ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def int_edges(field: FieldInfo) -> tuple[int, int]:
    low, high, low_open, high_open = bounds(field)
    lo = -(2**70) if low is None else math.floor(low) + (1 if low_open else 0)
    hi = 2**70 if high is None else math.ceil(high) - (1 if high_open else 0)
    step = multiple_of(field)
    return -(-lo // step) * step, hi // step * step


def float_edges(field: FieldInfo) -> tuple[float, float]:
    low, high, low_open, high_open = bounds(field)
    lo = -1e300 if low is None else (math.nextafter(low, math.inf) if low_open else float(low))
    hi = 1e300 if high is None else (math.nextafter(high, -math.inf) if high_open else float(high))
    return lo, hi


def value_strategy(field: FieldInfo) -> st.SearchStrategy[Any] | None:
    """Values within the field's bounds, its edges included; ``None`` for fields drawn elsewhere."""
    annotation, optional = inner(field.annotation)
    strategy: st.SearchStrategy[Any] | None
    if annotation is bool:
        strategy = st.booleans()
    elif get_origin(annotation) is Literal:
        strategy = st.sampled_from(get_args(annotation))
    elif annotation is int:
        lo, hi = int_edges(field)
        step = multiple_of(field)
        strategy = st.one_of(st.sampled_from([lo, hi]), st.integers(0, 12).map(lambda b: 2**b * step)
                             .filter(lambda v: lo <= v <= hi), st.integers(lo, hi).map(lambda v: v - v % step))
    elif annotation is float:
        lo, hi = float_edges(field)
        strategy = st.one_of(st.sampled_from([lo, hi]), st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    else:
        return None
    return st.one_of(st.none(), strategy) if optional else strategy


def params_strategy(cls: type[Component], fixed: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Every numeric, boolean and literal field drawn within its bounds (others at their default or
    in ``fixed``); list-of-int fields as short lists of sizes."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in cls.Params.model_fields.items():
        strategy = value_strategy(field)
        if strategy is None and name in ("shape", "channel_mults", "attention_resolutions"):
            strategy = st.lists(st.sampled_from([1, 2, 3, 4, 8, 64, 4096]), min_size=1, max_size=4)
        if strategy is not None:
            fields[name] = strategy
    given = {k: st.one_of(st.just(v), fields.pop(k)) if k in fields else st.just(v) for k, v in fixed.items()}
    return st.fixed_dictionaries(given, optional=fields)


def build(cls: type[Component], params: dict[str, Any]) -> Component | None:
    """Build ``cls`` from ``params`` (networks on the meta device); ``None`` when a diffcore error with
    a message refuses them. Any other exception fails the test."""
    try:
        if issubclass(cls, ScoreModel | NoiseClassifier):
            with torch.device("meta"):
                return cls(**params)
        return cls(**params)
    except DiffcoreError as exc:
        assert str(exc).strip(), f"{cls.__name__}: a diffcore error without a message"
        return None


def edge_cases(cls: type[Component], fixed: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every bounded numeric field at its smallest and at its largest value, one at a time, and
    every field at its smallest value at once."""
    smallest = dict(fixed)
    for name, field in cls.Params.model_fields.items():
        annotation, _ = inner(field.annotation)
        if annotation not in (int, float) or name in fixed:
            continue
        lo, hi = int_edges(field) if annotation is int else float_edges(field)
        smallest[name] = lo
        yield f"{name}={lo}", {**fixed, name: lo}
        yield f"{name}={hi}", {**fixed, name: hi}
    yield "all smallest", smallest


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_building_at_the_edges_of_the_bounds_works_or_raises_a_diffcore_error(
        kind: str, name: str, array_file: Path) -> None:
    cls = REGISTRY.get(kind, name)
    for _, params in edge_cases(cls, required(kind, name, array_file)):
        build(cls, params)
    build(cls, required(kind, name, array_file))  # the defaults always build
    assert build(cls, required(kind, name, array_file)) is not None


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_building_from_random_params_within_bounds_works_or_raises_a_diffcore_error(
        kind: str, name: str, array_file: Path) -> None:
    cls = REGISTRY.get(kind, name)

    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(params_strategy(cls, required(kind, name, array_file)))
    def check(params: dict[str, Any]) -> None:
        build(cls, params)

    check()


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------

NETWORKS: list[tuple[type[ScoreModel], Callable[[Any], int], dict[str, Any]]] = [
    (MLP, mlp_module.parameter_count, {"shape": [2]}),
    (MLP, mlp_module.parameter_count, {"shape": [1, 8, 8], "hidden": 64, "depth": 1, "num_classes": 10,
                                       "embedding_dim": 2}),
    (ResMLP, resmlp_module.parameter_count, {"shape": [3]}),
    (ResMLP, resmlp_module.parameter_count, {"shape": [1, 8, 8], "hidden": 64, "blocks": 1, "expansion": 3,
                                             "num_classes": 10}),
    (UNet, unet_module.parameter_count, {}),
    (UNet, unet_module.parameter_count, {"image_size": 16, "channel_mults": [1, 2, 2], "attention_resolutions": [8, 4],
                                         "num_classes": 10, "in_channels": 3, "channels": 32, "embedding_dim": 6}),
    (UNet, unet_module.parameter_count, {"image_size": 8, "channel_mults": [1], "attention_resolutions": [8],
                                         "channels": 1, "num_res_blocks": 1}),
]


@pytest.mark.parametrize(("cls", "count", "params"), NETWORKS)
def test_closed_form_parameter_counts_match_the_networks(cls: type[ScoreModel], count: Callable[[Any], int],
                                                         params: dict[str, Any]) -> None:
    with torch.device("meta"):
        net = cls(**params)
    assert count(net.params) == sum(p.numel() for p in net.parameters())


@settings(max_examples=20, deadline=None, database=None, derandomize=True)
@given(channels=st.integers(1, 40), mults=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       blocks=st.integers(1, 2), classes=st.none() | st.integers(1, 12), attention=st.booleans(),
       in_channels=st.integers(1, 4))
def test_unet_parameter_count_matches_for_random_layouts(channels: int, mults: list[int], blocks: int,
                                                         classes: int | None, attention: bool,
                                                         in_channels: int) -> None:
    size = 2 ** (len(mults) - 1) * 2
    with torch.device("meta"):
        net = UNet(image_size=size, channels=channels, channel_mults=mults, num_res_blocks=blocks,
                   num_classes=classes, attention_resolutions=[size // 2] if attention and len(mults) > 1 else [],
                   in_channels=in_channels)
    assert unet_module.parameter_count(net.params) == sum(p.numel() for p in net.parameters())
