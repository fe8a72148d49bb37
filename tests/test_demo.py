"""``diffcore demo``: a short run end to end, its report, its checkpoint, and its refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_main

from diffcore.spec import validate_spec
from diffcore_demo import demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

STEPS, NUM = 300, 2000
ENERGY_DISTANCE_BOUND = 0.03
"""Upper bound on the energy distance (raw units) between the samples of the 300-step demo model and
the held-out moons. Measured (seed 0, 2000 samples against the 3000 held-out points): the 300-step
model scores 0.014 with Euler-Maruyama and 0.010 with the probability-flow ODE; the untrained model
(--steps 1) scores 116 and 82; a standard normal in the model's (standardised) range, mapped back,
matches the data's mean and variance but not its shape and scores 0.058; real data scores
-5e-4 +- 2e-4 (the report's floor). The bound sits between the trained model and the Gaussian blob."""
MOONS_MEAN = np.array([0.5, 0.25])
"""Mean of two moons in raw units: ``(0, 2 / pi)`` and ``(1, 0.5 - 2 / pi)`` averaged."""




@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A short demo run: its output folder and what it printed."""
    out = tmp_path_factory.mktemp("demo")
    code, stdout, stderr = run_main("demo", "--out", str(out), "--steps", str(STEPS), "--num", str(NUM),
                                    "--device", "cpu")
    assert code == 0, stderr
    return out, stdout


def finite_numbers(node: Any) -> list[float]:
    """Every int or float in a JSON document."""
    if isinstance(node, dict):
        return [v for value in node.values() for v in finite_numbers(value)]
    if isinstance(node, list):
        return [v for value in node for v in finite_numbers(value)]
    return [float(node)] if isinstance(node, int | float) and not isinstance(node, bool) else []


def test_demo_writes_pictures_and_report(demo_run: tuple[Path, str]) -> None:
    out, stdout = demo_run
    for name in ("data_vs_samples.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "report.txt").read_text() == stdout
    report = json.loads((out / "report.json").read_text())
    assert all(math.isfinite(v) for v in finite_numbers(report))
    assert report["data"] == "moons" and report["train"]["steps"] == STEPS
    assert report["train"]["final_loss"] < report["train"]["first_loss"]
    assert report["heldout_points"] == 3000 and report["floor"]["n"] == NUM
    assert [s["name"] for s in report["samplers"]] == ["euler_maruyama", "probability_flow"]
    for row in report["samplers"]:
        assert row["num"] == NUM and row["nfe"] > 0 and row["seconds"] > 0
        assert row["energy_distance"] < ENERGY_DISTANCE_BOUND, row
        assert row["ratio"] == pytest.approx(row["energy_distance"] / report["floor"]["energy_distance_rms"])
    assert report["samplers"][0]["nfe"] == demo.DEMO_SPEC["sampler"]["steps"]
    assert 0 < report["floor"]["energy_distance_rms"] < ENERGY_DISTANCE_BOUND / 10
    assert set(report["files"]) >= {"samples_png", "loss_png", "report_txt", "report_json", "run"}
    for line in ("euler_maruyama", "probability_flow", "energy distance", "floor", "report.json"):
        assert line in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_demo_run_folder_samples_with_the_cli(demo_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = demo_run
    samples = tmp_path / "x.npy"
    code, _, err = run_main("sample", str(out / "run"), "--num", "500", "--steps", "50", "--out", str(samples))
    assert code == 0, err
    x = np.load(samples)
    assert x.shape == (500, 2) and np.isfinite(x).all()
    # in raw units like the report (the model's standardised range has mean 0); measured: 0.022
    assert np.abs(x.mean(0) - MOONS_MEAN).max() < 0.15


def test_example_file_is_the_default_spec() -> None:
    path = ROOT / "examples" / "demo_moons.yaml"
    assert yaml.safe_load(path.read_text()) == demo.DEMO_SPEC
    validate_spec(demo.DEMO_SPEC)


def test_demo_spec_replaces_the_data_set() -> None:
    spec = demo.demo_spec("swiss_roll", steps=10, seed=3)
    assert spec["data"] == {"type": "swiss_roll", "num": 10000, "holdout": 0.3, "scale": "standardize"}
    assert spec["train"]["steps"] == 10 and spec["train"]["seed"] == 3
    spec = demo.demo_spec("gmm_samples", overrides=["data.num=500", "train.steps=7"])
    assert spec["data"]["weights"] == [0.2, 0.5, 0.3] and spec["data"]["num"] == 500
    assert spec["train"]["steps"] == 7
    validate_spec(spec)
    assert demo.demo_spec() == demo.DEMO_SPEC


def test_demo_on_another_data_set(tmp_path: Path) -> None:
    code, stdout, err = run_main("demo", "--out", str(tmp_path), "--data", "rings", "--steps", "5", "--num", "50",
                                 "--device", "cpu", "--set", "sampler.steps=10", "--set", "data.num=500")
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"] == "rings" and report["heldout_points"] == 150 and report["samplers"][0]["nfe"] == 10
    assert "rings" in stdout


def test_demo_refuses_unknown_and_non_2d_data(tmp_path: Path) -> None:
    code, _, err = run_main("demo", "--out", str(tmp_path / "a"), "--data", "moonz")
    assert code == 2 and "did you mean 'moons'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main("demo", "--out", str(tmp_path / "b"), "--data", "digits")
    assert code == 2 and "2-D points (N, 2)" in err and "(1, 8, 8)" in err, err
    points = tmp_path / "points3d.npy"
    np.save(points, np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32))
    code, _, err = run_main("demo", "--out", str(tmp_path / "c"), "--data", "array", "--set", f"data.path={points}")
    assert code == 2 and "2-D points (N, 2)" in err and "(3,)" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--steps", "0"], "argument --steps: 0 is out of range: use 1 to 1000000"),
    (["--num", "1"], "argument --num: 1 is out of range: use 2 to 100000"),
    (["--num", "10000000"], "argument --num: 10000000 is out of range"),
    (["--seed", "-1"], "argument --seed: -1 is out of range"),
    (["--threads", "0"], "argument --threads: threads must be from 1 to 1024 or 'auto', got 0"),
    (["--set", "train.lr=-1"], "`train.lr`"),
    (["--set", "model.hiden=64"], "did you mean 'hidden'"),
])
def test_demo_bad_arguments_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    code, _, err = run_main("demo", "--out", str(tmp_path / "out"), *args)
    assert code == 2 and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
