"""Conditional generation, the contract: Condition, the guidance hooks, forward-pass counts, label
dropout, classifier specs, and the command line's --label/--labels/--mask/--observed.

The statistical checks against exact answers (cfg, classifier guidance, inpainting and DPS on
Gaussian mixtures) are in tests/test_guidance.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffcore import CompatibilityError, Condition, Pipeline, UsageError, get_registry
from diffcore.cli import main
from diffcore.noise import NoiseSource
from diffcore.training import TrainConfig, Trainer

WEIGHTS = [0.3, 0.3, 0.4]
MEANS = [[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]]
VARIANCES = [[0.5, 0.5]] * 3
LABELS = [0, 1, 0]
MIXTURE = {"weights": WEIGHTS, "means": MEANS, "variances": VARIANCES}


def spec(guidance: list[dict[str, object]], *, labels: bool = True, sampler: str = "ddim") -> dict[str, object]:
    model = {"type": "gmm", **MIXTURE, **({"labels": LABELS} if labels else {})}
    return {"process": {"type": "vp"}, "model": model, "sampler": {"type": sampler, "steps": 20},
            "guidance": guidance}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- Condition ------------------------------------------------------------------------------------


def test_condition_rows_concat_and_checks() -> None:
    cond = Condition(labels=torch.arange(4), mask=torch.zeros(4, 2, dtype=torch.bool), observed=torch.ones(4, 2))
    part = cond.rows(1, 3)
    assert part.labels.tolist() == [1, 2] and part.mask.shape == (2, 2)  # type: ignore[union-attr]
    joined = Condition.concat([part, part.with_labels(torch.tensor([9, 9]))])
    assert joined.labels.tolist() == [1, 2, 9, 9] and joined.observed.shape == (4, 2)  # type: ignore[union-attr]
    assert cond.given() == {"labels", "mask", "observed"} and Condition().given() == frozenset()
    cond.check(4, (2,))
    with pytest.raises(UsageError, match="one row each"):
        cond.check(5, (2,))
    with pytest.raises(UsageError, match="integers"):
        Condition(labels=torch.zeros(4)).check(4, (2,))
    with pytest.raises(UsageError, match="mask has shape"):
        Condition(mask=torch.zeros(4, 3, dtype=torch.bool)).check(4, (2,))
    with pytest.raises(UsageError, match="NaN"):
        Condition(observed=torch.full((4, 2), float("nan"))).check(4, (2,))
    with pytest.raises(ValueError, match="only some"):
        Condition.concat([Condition(labels=torch.zeros(1, dtype=torch.long)), Condition()])


# --- the pipeline's checks and counts ---------------------------------------------------------------


def test_cfg_refused_for_an_unconditional_model_at_assembly() -> None:
    with pytest.raises(CompatibilityError, match="class-conditional"):
        Pipeline.from_spec(spec([{"type": "cfg", "scale": 1.0}], labels=False))


def test_missing_or_bad_condition_is_refused_before_sampling() -> None:
    pipe = Pipeline.from_spec(spec([{"type": "cfg", "scale": 1.0}]))
    with pytest.raises(UsageError, match="--label"):
        pipe.sample(4, seed=0)
    with pytest.raises(UsageError, match="classes 0 to 1"):
        pipe.sample(4, seed=0, cond=torch.full((4,), 5))
    inpaint = Pipeline.from_spec(spec([{"type": "inpaint"}]))
    with pytest.raises(UsageError, match="mask and observed"):
        inpaint.sample(4, seed=0)
    clf = Pipeline.from_spec(spec([{"type": "classifier", "classifier": {"type": "gmm", **MIXTURE, "labels": LABELS}}],
                                  labels=False))
    with pytest.raises(UsageError, match="classes 0 to 1"):
        clf.sample(4, seed=0, cond=torch.full((4,), 2))


def test_forward_passes_show_the_doubled_batch() -> None:
    labels = torch.zeros(8, dtype=torch.long)
    plain = Pipeline.from_spec(spec([{"type": "cfg", "scale": 0.0}])).sample(8, seed=0, cond=labels)
    guided = Pipeline.from_spec(spec([{"type": "cfg", "scale": 2.0}])).sample(8, seed=0, cond=labels)
    assert plain.nfe == guided.nfe == 20
    assert plain.forward_passes == 20 and guided.forward_passes == 40
    clf = Pipeline.from_spec(spec([{"type": "classifier", "classifier": {"type": "gmm", **MIXTURE, "labels": LABELS}}],
                                  labels=False)).sample(8, seed=0, cond=labels)
    assert clf.nfe == 20 and clf.forward_passes == 40  # the model and the classifier, once each per evaluation
    chunked = Pipeline.from_spec(spec([{"type": "cfg", "scale": 2.0}])).sample(8, seed=0, cond=labels, batch_size=3)
    assert chunked.forward_passes == 40 and torch.equal(chunked.x, guided.x)


def test_guidance_interval_switches_guidance_off_outside() -> None:
    labels = torch.zeros(16, dtype=torch.long)
    plain = Pipeline.from_spec(spec([{"type": "cfg", "scale": 0.0}])).sample(16, seed=1, cond=labels)
    # between two of ddim's 20 grid times (1, 0.950, ...): the score is never evaluated inside it
    never = Pipeline.from_spec(spec([{"type": "cfg", "scale": 5.0, "interval": [0.96, 0.99]}])).sample(
        16, seed=1, cond=labels)
    assert torch.equal(never.x, plain.x) and never.forward_passes == 20
    always = Pipeline.from_spec(spec([{"type": "cfg", "scale": 5.0, "interval": [0.0, 1.0]}])).sample(
        16, seed=1, cond=labels)
    assert not torch.allclose(always.x, plain.x)
    with pytest.raises(Exception, match="interval"):
        Pipeline.from_spec(spec([{"type": "cfg", "interval": [0.5, 0.1]}]))


def test_inpainting_keeps_the_observation_exactly_for_every_sampler() -> None:
    observed = torch.tensor([[-3.0, 0.0]]).expand(6, 2).clone()
    mask = torch.tensor([[True, False]]).expand(6, 2).clone()
    for name in get_registry().names("sampler"):
        body = spec([{"type": "inpaint"}], labels=False, sampler=name)
        body["sampler"] = {"type": name}
        if "steps" in get_registry().get("sampler", name).Params.model_fields:
            body["sampler"] = {"type": name, "steps": 8}
        if name == "probability_flow":
            body["sampler"] = {"type": name, "method": "rk4", "steps": 8}
        if name == "langevin":  # Langevin at t_min: the observed coordinates' score has curvature 1/sigma(t_min)^2
            body["sampler"] = {"type": name, "step_size": 1e-7, "iterations": 20}
        pipe = Pipeline.from_spec(body)
        x = pipe.sample(6, seed=0, cond=Condition(mask=mask, observed=observed)).x
        assert torch.equal(x[:, 0], observed[:, 0]), name
        assert bool(torch.isfinite(x).all()), name


def test_dps_matrix_columns_must_match_the_data(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((1, 3)))
    with pytest.raises(CompatibilityError, match="3 columns"):
        Pipeline.from_spec(spec([{"type": "dps", "noise_std": 0.1, "matrix": str(tmp_path / "a.npy")}], labels=False))
    np.save(tmp_path / "a.npy", np.ones((1, 2)))
    pipe = Pipeline.from_spec(spec([{"type": "dps", "noise_std": 0.1, "matrix": str(tmp_path / "a.npy")}],
                                   labels=False))
    with pytest.raises(UsageError, match=r"\(num, 1\)"):
        pipe.sample(4, seed=0, cond=Condition(observed=torch.zeros(4, 2)))
    x = pipe.sample(4, seed=0, cond=Condition(observed=torch.zeros(4, 1))).x
    assert x.shape == (4, 2) and bool(torch.isfinite(x).all())


# --- training: label dropout and classifiers --------------------------------------------------------


def labelled_data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    model = get_registry().build("model", "gmm", **MIXTURE, labels=LABELS)
    x, component = model.sample_data(n, generator=torch.Generator().manual_seed(0))  # type: ignore[operator]
    return x.float(), torch.tensor(LABELS)[component]


def test_label_dropout_replaces_the_given_share_of_labels() -> None:
    registry = get_registry()
    net = registry.build("model", "mlp", shape=[2], hidden=16, depth=1, embedding_dim=8, num_classes=2)
    seen: list[torch.Tensor] = []

    class Recorder(registry.get("objective", "dsm")):  # type: ignore[misc]
        def loss(self, model, process, x0, noise, cond=None):  # type: ignore[no-untyped-def]
            seen.append(cond.clone())
            return super().loss(model, process, x0, noise, cond)

    x, labels = labelled_data()
    trainer = Trainer(net, Recorder(), registry.build("process", "vp"), x,
                      TrainConfig(steps=40, batch_size=128, label_dropout=0.25, warmup=1), labels=labels)
    trainer.run()
    dropped = torch.cat(seen) == 2
    assert abs(float(dropped.float().mean()) - 0.25) < 0.03  # 5120 draws: the standard error is 0.006
    with pytest.raises(UsageError, match="label_dropout"):
        Trainer(registry.build("model", "mlp", shape=[2], hidden=16, depth=1, embedding_dim=8), Recorder(),
                registry.build("process", "vp"), x, TrainConfig(label_dropout=0.1), labels=labels)


def test_a_classifier_spec_validates_trains_and_guides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = get_registry()
    if "mlp" not in registry.names("classifier"):
        pytest.skip("no trainable classifier registered")
    body = {"process": {"type": "vp"},
            "classifier": {"type": "mlp", "shape": [2], "hidden": 32, "depth": 2, "embedding_dim": 16,
                           "num_classes": 2},
            "data": {"type": "moons", "num": 512},
            "train": {"steps": 30, "batch_size": 64, "warmup": 1}}
    path = tmp_path / "clf.yaml"
    path.write_text(yaml.safe_dump(body))
    code, out, err = cli(capsys, "validate", str(path))
    assert code == 0 and "classifier spec" in out, err
    code, out, err = cli(capsys, "train", str(path), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 30
    code, out, err = cli(capsys, "sample", str(path), "--num", "2", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "classifier" in err
    guided = spec([{"type": "classifier", "scale": 1.0, "run": str(tmp_path / "run")}], labels=False)
    pipe = Pipeline.from_spec(guided)
    result = pipe.sample(8, seed=0, cond=torch.ones(8, dtype=torch.long))
    assert result.forward_passes == 40 and bool(torch.isfinite(result.x).all())
    with pytest.raises(UsageError, match="holds no trained classifier"):
        Pipeline.from_spec(spec([{"type": "classifier", "run": str(tmp_path)}], labels=False))


def test_an_analytic_classifier_is_not_trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"process": {"type": "vp"}, "classifier": {"type": "gmm", **MIXTURE, "labels": LABELS},
            "data": {"type": "moons"}, "train": {"steps": 5}}
    path = tmp_path / "clf.yaml"
    path.write_text(yaml.safe_dump(body))
    code, _, err = cli(capsys, "train", str(path), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and "no trainable parameters" in err


# --- the command line ---------------------------------------------------------------------------------


def test_sample_with_labels_mask_and_observed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(spec([{"type": "cfg", "scale": 0.0}])))
    out = tmp_path / "x.npy"
    code, text, err = cli(capsys, "sample", str(path), "--num", "200", "--out", str(out), "--label", "1",
                          "--set", "guidance.0.scale=3", "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["guidance"] == ["cfg"] and summary["forward_passes"] == 2 * summary["nfe"]
    assert float(np.load(out)[:, 0].mean()) > 2.5  # class 1 is the component at (3, 0)
    np.save(tmp_path / "labels.npy", np.array([0, 1] * 100))
    code, _, err = cli(capsys, "sample", str(path), "--num", "200", "--out", str(out), "--labels",
                       str(tmp_path / "labels.npy"))
    assert code == 0, err
    x = np.load(out)
    assert x[1::2, 0].mean() > 2.5 and x[0::2, 0].mean() < 0  # class 0: the components at (-3, 0) and (0, 3)
    np.save(tmp_path / "mask.npy", np.array([True, False]))
    np.save(tmp_path / "observed.npy", np.array([-3.0, 123.0]))
    code, _, err = cli(capsys, "sample", str(path), "--num", "50", "--out", str(out), "--label", "0",
                       "--mask", str(tmp_path / "mask.npy"), "--observed", str(tmp_path / "observed.npy"),
                       "--set", "guidance=[{type: cfg, scale: 0}, {type: inpaint}]")
    assert code == 0, err
    assert (np.load(out)[:, 0] == -3.0).all()


@pytest.mark.parametrize(("args", "message"), [
    (["--label", "0", "--labels", "L"], "not both"),
    (["--labels", "L"], "(200,)"),
    ([], "--label"),
    (["--label", "0", "--mask", "M"], "--mask"),
])
def test_sample_condition_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                 message: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(spec([{"type": "cfg", "scale": 1.0}])))
    np.save(tmp_path / "L.npy", np.zeros(7, dtype=np.int64))
    np.save(tmp_path / "M.npy", np.array([0.5, 1.0]))
    args = [str(tmp_path / f"{a}.npy") if a in ("L", "M") else a for a in args]
    code, _, err = cli(capsys, "sample", str(path), "--num", "200", "--out", str(tmp_path / "x.npy"), *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "x.npy").exists()


def test_sampling_with_noise_source_keeps_guided_samples_chunk_independent() -> None:
    pipe = Pipeline.from_spec(spec([{"type": "cfg", "scale": 1.5}], sampler="euler_maruyama"))
    labels = torch.tensor([0, 1] * 5)
    whole = pipe.sample(10, seed=3, cond=labels).x
    parts = torch.cat([r.x for _, r in pipe.iter_samples(10, seed=3, cond=labels, batch_size=4)])
    assert torch.equal(whole, parts)
    assert NoiseSource.range(3, 0, 10).batch_size == 10


# --- inputs nothing reads ---------------------------------------------------------------------------


def test_a_condition_nothing_reads_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Labels for an unconditional model, a mask or observed values with no guidance that reads them:
    refused before sampling, naming the field and what would read it (they used to be ignored)."""
    unconditional = Pipeline.from_spec(spec([], labels=False))
    with pytest.raises(UsageError, match=r"the condition has labels, but nothing in this pipeline reads it "
                       r"\(model 'gmm' is unconditional; guidance: none\)"):
        unconditional.sample(4, seed=0, cond=torch.zeros(4, dtype=torch.long))
    mask, observed = torch.ones(4, 2, dtype=torch.bool), torch.zeros(4, 2)
    with pytest.raises(UsageError, match=r"has mask and observed, but nothing .* guidance inpaint or dps"):
        Pipeline.from_spec(spec([])).sample(4, seed=0, cond=Condition(labels=torch.zeros(4, dtype=torch.long),
                                                                       mask=mask, observed=observed))
    # dps reads a mask when given (without a matrix it needs one); cfg reads labels: all accepted
    dps = Pipeline.from_spec(spec([{"type": "dps", "scale": 0.1, "noise_std": 0.5}]))
    assert dps.condition_reads() == {"labels", "mask", "observed"}
    assert dps.sample(4, seed=0, cond=Condition(mask=mask, observed=observed)).x.shape == (4, 2)

    np.save(tmp_path / "mask.npy", np.ones(2, bool))
    np.save(tmp_path / "observed.npy", np.zeros(2, np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    gmm = tmp_path / "gmm.yaml"
    gmm.write_text(yaml.safe_dump(spec([], labels=False)))
    for extra, field in ((["--label", "1"], "labels"), (["--labels", str(tmp_path / "labels.npy")], "labels"),
                         (["--mask", str(tmp_path / "mask.npy")], "mask"),
                         (["--observed", str(tmp_path / "observed.npy")], "observed")):
        out = tmp_path / "x.npy"
        code, _, err = cli(capsys, "sample", str(gmm), "--num", "3", "--out", str(out), *extra)
        assert code == 2 and f"the condition has {field}, but nothing in this pipeline reads it" in err, err
        assert not out.exists()


@pytest.mark.parametrize("guidance", [{"type": "cfg", "scale": 2.0}, {"type": "dps", "scale": 0.1, "noise_std": 0.5}])
def test_a_guidance_interval_outside_the_process_times_is_refused(guidance: dict[str, object]) -> None:
    """An interval that never meets [t_min, T] used to be accepted and never act: unguided samples."""
    with pytest.raises(CompatibilityError, match=r"`interval` \[5, 10\] does not meet the times of process 'vp', "
                       r"\[0.001, 1\], so the guidance would never act"):
        Pipeline.from_spec(spec([{**guidance, "interval": [5.0, 10.0]}]))
    assert Pipeline.from_spec(spec([{**guidance, "interval": [0.5, 10.0]}])).guidance  # overlapping: fine
