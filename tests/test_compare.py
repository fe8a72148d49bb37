"""``diffcore compare`` and :mod:`diffcore.compare`: samplers at NFE budgets against a reference."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, DoubleWell, ZeroScore, run_main

from diffcore import hookimpl
from diffcore.budgets import budget_plan, fit_budget
from diffcore.compare import CompareResult, Reference, compare, exact_reference, save_compare_plot
from diffcore.errors import CompatibilityError, RegistryError
from diffcore.metrics import energy_distance
from diffcore.pipeline import Pipeline
from diffcore.registry import get_registry

EXAMPLE = ROOT / "examples" / "gmm2d.yaml"


@pytest.fixture(scope="module")
def result() -> CompareResult:
    """Two samplers at two budgets on the 2-D mixture, 500 samples each."""
    return compare(EXAMPLE, samplers=["dpm_solver", "heun"], budgets=(5, 10), num=500)


def test_rows_cover_every_sampler_and_budget_within_the_budget(result: CompareResult) -> None:
    assert [(r.sampler, r.budget) for r in result.rows] == [("dpm_solver", 5), ("dpm_solver", 10), ("heun", 5),
                                                            ("heun", 10)]
    for row in result.rows:
        assert row.nfe is not None and 1 <= row.nfe <= row.budget
        assert row.seconds is not None and row.seconds >= 0 and row.ed is not None and row.fd is None
    # dpm_solver spends one evaluation per step; heun two per step (its last step one), so it runs below 10
    assert {(r.sampler, r.budget): r.params for r in result.rows}[("dpm_solver", 10)] == {"steps": 10}
    heun10 = next(r for r in result.rows if r.sampler == "heun" and r.budget == 10)
    assert heun10.params["steps"] * 2 - 1 <= heun10.nfe <= 10


def test_a_bad_sampler_ranks_below_a_good_one(result: CompareResult) -> None:
    """At 10 NFE, dpm_solver (multistep, logsnr grid) is far better than heun (5 steps on the karras
    grid) on the mixture: 1.7e-2 against 4.6e-1 at 500 samples, the floor 3e-3."""
    at10 = {r.sampler: r for r in result.rows if r.budget == 10}
    assert at10["dpm_solver"].score("ed") * 5 < at10["heun"].score("ed")
    assert result.best_per_budget()[10].sampler == "dpm_solver"


def test_table_and_json(result: CompareResult) -> None:
    table = result.to_table()
    assert "NFE <= 5" in table and "NFE <= 10" in table and "noise floor" in table and "<- best" in table
    assert "best per budget:\n  NFE <= 5: " in table
    data = json.loads(result.to_json())
    assert data["metric"] == "ed" and data["budgets"] == [5, 10] and data["num"] == 500
    assert set(data["floor"]) == {"ed", "fd", "description"} and data["floor"]["ed"] > 0
    assert data["best"]["10"] == "dpm_solver" and "heun" not in data["tied"]["10"]
    assert {"sampler", "budget", "params", "nfe", "seconds", "ed", "fd", "note"} == set(data["rows"][0])
    assert CompareResult.from_dict(data).to_table() == table


def test_the_floor_comes_from_independent_exact_draws(result: CompareResult) -> None:
    pipe = Pipeline.from_spec(EXAMPLE)
    ref = exact_reference(pipe, 500, seed=0)
    assert ref.y.shape == (5000, 2) and len(ref.floor_sets) == 3
    for x in ref.floor_sets:
        assert x.shape == (500, 2)
        assert not bool((x[:, None, :] == ref.y[None]).all(-1).any())  # no row of the reference reused
    assert not torch.equal(ref.floor_sets[0], ref.floor_sets[1])
    eds = [energy_distance(x, ref.y) for x in ref.floor_sets]
    assert result.floor_ed == pytest.approx((sum(e**2 for e in eds) / 3) ** 0.5, rel=1e-9)
    assert ref.energy_distance(ref.floor_sets[0]) == pytest.approx(eds[0], rel=1e-9, abs=1e-12)
    # exact draws are at the floor; the samplers' rows are above it (the mean of the draws is 0)
    assert abs(eds[0]) < 5 * result.floor_ed and min(r.score("ed") for r in result.rows) > result.floor_ed


def test_plot_is_written(result: CompareResult, tmp_path: Path) -> None:
    out = save_compare_plot(result, tmp_path / "compare.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_plans_and_fit() -> None:
    assert budget_plan("ddim").size == "steps" and budget_plan("langevin").size == "iterations"
    assert budget_plan("annealed_langevin").params == {"steps_per_level": 1}
    assert budget_plan("probability_flow").params == {"method": "rk4"}
    assert fit_budget(lambda n: 4 * n, 10) == (2, 8)
    assert fit_budget(lambda n: 2 * n - 1, 10) == (5, 9)
    assert fit_budget(lambda n: n + 1, 1) is None
    with pytest.raises(RegistryError, match="euler_maruyama"):
        budget_plan("eular")


def test_unknown_and_incompatible_samplers_are_refused() -> None:
    with pytest.raises(RegistryError, match="did you mean 'euler_maruyama'"):
        compare(EXAMPLE, samplers=["eular"], budgets=(5,), num=10)
    pipe = Pipeline(DoubleWell(), ZeroScore(), get_registry().build("sampler", "euler_maruyama", steps=3))
    ref = Reference(torch.randn(50, 2), [torch.randn(20, 2)], "noise", "noise")
    with pytest.raises(CompatibilityError, match=r"cannot compare sampler 'ddim'.*linear_gaussian.*euler_maruyama"):
        compare(pipe, samplers=["ddim"], budgets=(5,), num=20, reference=ref)
    # by default the incompatible ones are left out, with why
    out = compare(pipe, budgets=(3,), num=20, reference=ref)
    assert "ddim" in out.skipped and "linear_gaussian" in out.skipped["ddim"]
    assert "euler_maruyama" in out.samplers and "ddim" not in out.samplers


@pytest.fixture
def double_well_plugin() -> Iterator[None]:
    registry = get_registry()
    module = types.ModuleType("compare_double_well")

    @hookimpl
    def diffcore_register(register):  # type: ignore[no-untyped-def]
        register(DoubleWell)
        register(ZeroScore)

    module.diffcore_register = diffcore_register  # type: ignore[attr-defined]
    registry.register_plugin(module, "compare_double_well")
    yield
    registry.unregister_plugin("compare_double_well")


def test_cli(tmp_path: Path, double_well_plugin: None) -> None:
    plot = tmp_path / "c.png"
    code, out, err = run_main("compare", str(EXAMPLE), "--samplers", "ddim,euler_maruyama", "--budgets", "5",
                              "--num", "200", "--json", "--plot", str(plot))
    assert code == 0, err
    data = json.loads(out)
    assert data["samplers"] == ["ddim", "euler_maruyama"] and data["plot"] == str(plot) and plot.exists()
    assert all(r["nfe"] <= 5 for r in data["rows"])
    code, out, err = run_main("compare", str(EXAMPLE), "--samplers", "ddim", "--budgets", "4", "--num", "100")
    assert code == 0 and "NFE <= 4" in out and "best per budget" in out
    # every run failed: the table says why, and the exit status is not success
    code, out, err = run_main("compare", str(EXAMPLE), "--samplers", "heun", "--budgets", "1", "--num", "50")
    assert code == 2 and "its smallest size needs more than 1 NFE" in out
    assert "no sampler produced samples at any budget (1 runs)" in err
    code, _, err = run_main("compare", str(EXAMPLE), "--samplers", "eular")
    assert code == 2 and "no sampler named 'eular'" in err and "euler_maruyama" in err and "\n" not in err.strip()
    code, _, err = run_main("compare", str(EXAMPLE), "--budgets", "0,5")
    assert code == 2 and "--budgets" in err
    spec = tmp_path / "dw.yaml"
    spec.write_text(yaml.safe_dump({"process": {"type": "double_well"}, "model": {"type": "zero"},
                                    "sampler": {"type": "euler_maruyama", "steps": 3}}))
    code, _, err = run_main("compare", str(spec), "--samplers", "ddim")
    assert code == 2 and "cannot compare sampler 'ddim'" in err and "linear_gaussian" in err
