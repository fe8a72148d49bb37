"""The command line: every subcommand, exit codes, chunked and reproducible sampling."""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_cli

import diffcore
import diffcore.catalog
import diffcore.sampling
from diffcore.cli import main
from diffcore.sampling import load_for_sampling, sample_to_file
from diffcore.training.setup import run_training, setup_training

EXAMPLE = ROOT / "examples" / "gmm2d.yaml"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and diffcore.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_do_not_import_torch(args: list[str]) -> None:
    """The parser (built-in commands and every installed command plugin, ``demo`` included) is built
    without importing torch."""
    code = textwrap.dedent(f"""
        import contextlib, io, sys
        from diffcore.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main({args!r})
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
        print(out.getvalue())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("demo" in proc.stdout) if args == ["--help"] else (diffcore.__version__ in proc.stdout)


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "plugins", "--json")
    data = json.loads(out)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert code == 0 and by_name["processes"]["distribution"] == "diffcore-processes"
    assert "process:vp" in by_name["processes"]["components"] and by_name["processes"]["version"]
    assert data["errors"] == []
    commands = {p["name"]: p for p in data["commands"]}
    assert commands["demo"]["distribution"] == "diffcore-demo" and commands["demo"]["commands"] == ["demo"]


def test_list_shows_capabilities_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", "process", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) >= {"ve", "vp", "subvp"}
    assert rows["vp"]["capabilities"] == ["linear_gaussian"]
    assert rows["vp"]["params"]["beta_max"]["default"] == 20.0
    code, out, _ = cli(capsys, "list")
    assert code == 0 and "sampler euler_maruyama" in out and "steps: int, default 1000" in out
    code, _, err = cli(capsys, "list", "samplers")
    assert code == 2 and "did you mean 'sampler'" in err


def test_list_speaks_to_users(capsys: pytest.CaptureFixture[str]) -> None:
    """Each built-in component is summarised in user terms with a citation where it has one, its
    parameter types read plainly, and a requirement names the installed processes that meet it."""
    code, out, _ = cli(capsys, "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) >= 35
    for row in rows:
        assert row["summary"] and "docstring" not in row["summary"] and "seed" not in row["summary"].lower(), row
        assert not re.search(r"\bsection\b|\(\d+\.\d+\)", row["summary"]), row  # no course-note pointers
        for p in row["params"].values():
            assert "Annotated" not in p["type"] and "FieldInfo" not in p["type"] and p["type"] != "Optional", row
        if row["requires"] == ["linear_gaussian"]:
            assert set(row["processes"]) >= {"ve", "vp", "subvp"}, row
    by_name = {(r["kind"], r["name"]): r for r in rows}
    for kind, name in [("sampler", "ddim"), ("sampler", "heun"), ("process", "vp"), ("guidance", "cfg"),
                       ("objective", "dsm"), ("sampler", "unipc")]:
        assert re.search(r"et al\.|& \w+ 20\d\d", by_name[kind, name]["summary"]), (kind, name)
    assert by_name["model", "gmm"]["params"]["labels"]["type"] == "list of int or none"
    code, out, _ = cli(capsys, "list", "sampler")
    assert "[requires: linear_gaussian; works with: subvp, ve, vp]" in out


def test_schema_validates_the_examples_with_jsonschema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "schema.json"
    assert cli(capsys, "schema", "--out", str(out))[0] == 0
    schema = json.loads(out.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    examples = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.json"))
    assert len(examples) >= 3
    for path in examples:
        text = path.read_text()
        validator.validate(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text))
        assert cli(capsys, "validate", str(path))[0] == 0
    spec = yaml.safe_load(EXAMPLE.read_text())
    bad = [dict(spec, sampler={"type": "euler_maruyama", "steps": 0}),
           dict(spec, sampler={"type": "nope"}),
           dict(spec, process={"type": "vp", "beta_mx": 3.0}),
           dict(spec, extra=1)]
    for doc in bad:
        assert list(validator.iter_errors(doc)), doc


def test_validate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "validate", str(EXAMPLE))
    assert code == 0 and "ok" in out and "sampler euler_maruyama" in out
    code, out, _ = cli(capsys, "validate", str(EXAMPLE), "--set", "sampler.type=ddim")
    assert code == 0 and "sampler ddim" in out
    code, _, err = cli(capsys, "validate", str(EXAMPLE), "--set", "sampler.type=ddpm_plus_plus")
    assert code == 2 and "`sampler.type`" in err


def test_sample_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.npy"
    code, stdout, err = cli(capsys, "sample", str(EXAMPLE), "--num", "500", "--seed", "3", "--out", str(out),
                            "--steps", "50", "--json", "--device", "cpu")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["nfe"] == 50 and summary["num"] == 500 and summary["seconds"] > 0
    x = np.load(out)
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.isfinite(x).all()


def test_threads_apply_to_the_command_and_are_restored(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = diffcore.sampling.sample_to_file

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(diffcore.sampling, "sample_to_file", spy)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "20", "--steps", "5", "--threads", str(wanted),
                       "--out", str(tmp_path / "x.npy"), "--device", "cpu")
    assert code == 0, err
    assert seen == [wanted] and torch.get_num_threads() == before
    for command in ("train", "likelihood"):
        assert "--threads" in subprocess.run([sys.executable, "-m", "diffcore", command, "--help"],
                                             capture_output=True, text=True, check=True).stdout


def test_list_of_an_empty_kind_says_so(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diffcore.catalog, "describe_components", lambda kind=None: [])
    code, out, _ = cli(capsys, "list", "guidance")
    assert code == 0 and out.startswith("no guidance is registered; install a plugin")


def test_batch_size_does_not_change_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for batch in ("1000", "20000"):
        paths.append(tmp_path / f"b{batch}.npy")
        code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "20000", "--seed", "11", "--steps", "100",
                           "--batch-size", batch, "--out", str(paths[-1]))
        assert code == 0, err
    a, b = np.load(paths[0]), np.load(paths[1])
    assert a.shape == (20000, 2) and np.array_equal(a, b)


def test_swap_sampler_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.npy"
    code, stdout, err = cli(capsys, "sample", str(EXAMPLE), "--num", "100", "--out", str(out), "--json",
                            "--sampler", "probability_flow", "--set", "sampler.method=rk4", "--steps", "10")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["sampler"] == "probability_flow" and summary["nfe"] == 40  # rk4: 4 evaluations per step
    code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "10", "--out", str(out),
                       "--sampler", "probability_flow", "--steps", "10")
    assert code == 2 and "adaptive" in err and "`sampler`" in err


def test_latents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latents = tmp_path / "z.npy"
    np.save(latents, np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32))
    outs = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for seed, out in zip(("1", "2"), outs, strict=True):
        code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "64", "--seed", seed, "--out", str(out),
                           "--latents", str(latents), "--sampler", "probability_flow")
        assert code == 0, err
    assert np.array_equal(np.load(outs[0]), np.load(outs[1]))
    np.save(latents, np.zeros((64, 3)))
    code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "64", "--out", str(outs[0]), "--latents", str(latents))
    assert code == 2 and "latents have shape (64, 3)" in err


class Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path("/tmp/diffcore-unpickled-marker"),))


def test_pickled_latents_are_never_unpickled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = Path("/tmp/diffcore-unpickled-marker")
    marker.unlink(missing_ok=True)
    latents = tmp_path / "evil.npy"
    np.save(latents, np.array([Exploit()], dtype=object), allow_pickle=True)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(Exploit()))
    for path in (latents, raw):
        code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "1", "--out", str(tmp_path / "o.npy"),
                           "--latents", str(path))
        assert code == 2 and "--latents" in err
    assert not marker.exists()


def test_bad_options_exit_2_and_leave_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.npy"
    cases = [
        (["--num", "0"], "argument --num/--num-samples: 0 is out of range: use 1 to"),
        (["--num", "5", "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
        (["--num", "5", "--seed", "-1"], "argument --seed: -1 is out of range: use 0 to 18446744073709551615"),
        (["--num", "5", "--steps", "-2"], "argument --steps: -2 is out of range: use 1 to 1000000"),
        (["--num", "5", "--steps", "2000000000"], "argument --steps: 2000000000 is out of range"),
        (["--num", "5", "--steps", "9" * 5000], "(5000 digits) is out of range"),
        (["--num", "5x"], "argument --num/--num-samples: '5x' is not an integer"),
        (["--num", "5", "--sampler", "eulr"], "did you mean 'euler_maruyama'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--num", "5", "--device", "cuda"], "CUDA is not available"))
    for args, expected in cases:
        code, _, err = cli(capsys, "sample", str(EXAMPLE), "--out", str(out), *args)
        assert code == 2 and expected in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_readme_main_command_end_to_end(tmp_path: Path) -> None:
    """The README's sampling command, as a user runs it (a real subprocess)."""
    out = tmp_path / "samples.npy"
    proc = run_cli("sample", "examples/gmm2d.yaml", "--num", "2000", "--seed", "0", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nfe"] == 1000
    x = np.load(out)
    weights = np.array([0.2, 0.5, 0.3])
    means = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    assert np.abs(x.mean(0) - weights @ means).max() < 0.25


TRAIN_SPEC = ROOT / "examples" / "train_moons.yaml"


def test_train_resume_and_sample_from_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", str(TRAIN_SPEC), "--out", str(run), "--set", "train.steps=40",
                         "--checkpoint-every", "20", "--device", "cpu")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 40 and summary["final_loss"] < summary["first_loss"]
    assert (run / "latest").read_text().strip() == "step-00000040"
    # resuming a finished run trains nothing more and keeps the spec of the checkpoint; a spec file
    # that differs from it (here: train.steps) is refused, not silently ignored
    code, out, err = cli(capsys, "train", str(run), "--resume", str(run), "--device", "cpu")
    assert code == 0 and json.loads(out)["steps"] == 40, err
    code, out, err = cli(capsys, "train", str(TRAIN_SPEC), "--resume", str(run), "--device", "cpu")
    assert code == 2 and "train.steps: 1500 here, 40 saved" in err, err
    samples = tmp_path / "x.npy"
    code, out, err = cli(capsys, "sample", str(run), "--num", "200", "--steps", "20", "--out", str(samples), "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == "mlp" and np.load(samples).shape == (200, 2)
    # samples come back in the data's raw units (the scaling saved in the checkpoint); --model-range
    # keeps the model's standardised values
    assert json.loads(out)["range"] == "raw"
    scaled = tmp_path / "scaled.npy"
    code, out, err = cli(capsys, "sample", str(run), "--num", "200", "--steps", "20", "--out", str(scaled),
                         "--model-range", "--json")
    assert code == 0 and json.loads(out)["range"] == "model", err
    spec = yaml.safe_load(TRAIN_SPEC.read_text())["data"]
    dataset = diffcore.get_registry().build("dataset", spec.pop("type"), **spec)
    shift, mult = dataset.scaling  # type: ignore[attr-defined]
    assert mult != 1.0
    np.testing.assert_allclose(np.load(samples), np.load(scaled) / mult + shift, rtol=1e-5, atol=1e-5)
    x_raw, _ = dataset.arrays()  # type: ignore[attr-defined]
    raw_mean = x_raw.mean(0).numpy()
    assert np.abs(np.load(samples).mean(0) - raw_mean).max() < np.abs(np.load(scaled).mean(0) - raw_mean).max()


def test_train_without_objective_says_which_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "train", str(EXAMPLE), "--device", "cpu")
    assert code == 2 and "training needs `objective`" in err


# -- what the commands call, from Python ------------------------------------------------------


def test_sample_to_file_from_python(tmp_path: Path) -> None:
    """``load_for_sampling`` + ``sample_to_file`` write what ``diffcore sample`` writes."""
    pipe, _, meta = load_for_sampling(EXAMPLE, steps=5)
    assert meta == {} and pipe.sampler.name == "euler_maruyama"
    out = tmp_path / "x.npy"
    summary = sample_to_file(pipe, out, 12, seed=4, batch_size=5)
    assert summary is not None and summary["nfe"] == 5 and summary["chunks"] == 3 and summary["range"] == "model"
    x = np.load(out)
    assert x.shape == (12, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert not list(tmp_path.glob(".*tmp"))
    cli_out = tmp_path / "cli.npy"
    assert main(["sample", str(EXAMPLE), "--num", "12", "--seed", "4", "--steps", "5", "--out", str(cli_out),
                 "--device", "cpu"]) == 0
    assert np.array_equal(np.load(cli_out), x)  # sample i depends only on (seed, i)
    shifted = tmp_path / "shifted.npy"
    sample_to_file(pipe, shifted, 12, seed=4, scaling=(1.0, 2.0))
    np.testing.assert_allclose(np.load(shifted), x / 2.0 + 1.0, rtol=1e-6)


def test_setup_training_from_python(tmp_path: Path) -> None:
    """``setup_training`` assembles the trainer ``diffcore train`` runs: the same initial weights
    (``train.seed``) and the data scaling in the checkpoint."""
    overrides = ["train.steps=6", "train.batch_size=32", "model.hidden=16", "data.num=200"]
    setup = setup_training(TRAIN_SPEC, device="cpu", overrides=overrides)
    again = setup_training(TRAIN_SPEC, device="cpu", overrides=overrides)
    for (name, a), b in zip(setup.trainer.model.state_dict().items(), again.trainer.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert setup.pipe.model is setup.trainer.model and setup.trainer.data.device.type == "cpu"
    summary = run_training(setup, tmp_path / "run", preview=False)
    assert summary["steps"] == 6 and summary["processes"] == 1 and math.isfinite(summary["final_loss"])
    pipe, _, meta = load_for_sampling(tmp_path / "run")
    assert meta["scaling"] == list(setup.dataset.scaling) and meta["step"] == 6
    assert torch.equal(next(iter(pipe.model.parameters())), next(iter(setup.trainer.ema_model().parameters())))
    with pytest.raises(diffcore.UsageError, match="training needs `objective`"):
        setup_training(EXAMPLE, device="cpu")
    with pytest.raises(diffcore.UsageError, match="is not a device"):
        setup_training(TRAIN_SPEC, device="gpu0", overrides=overrides)


def test_a_run_trained_from_python_is_sampleable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python route: a ``Trainer`` without a spec saves its components' spec, so
    ``diffcore sample RUN`` rebuilds the model; it names no sampler, and the CLI says how to choose one."""
    from diffcore.training import TrainConfig, Trainer

    registry = diffcore.get_registry()
    data, _ = registry.build("dataset", "moons", num=500).split("train")  # type: ignore[attr-defined]
    trainer = Trainer(registry.build("model", "mlp", shape=[2], hidden=32, depth=2),  # type: ignore[arg-type]
                      registry.build("objective", "dsm"), registry.build("process", "vp"),  # type: ignore[arg-type]
                      data, TrainConfig(steps=20, batch_size=64))
    trainer.run(run_dir=tmp_path / "run", checkpoint_every=20)
    code, _, err = cli(capsys, "sample", str(tmp_path / "run"), "--num", "8", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "trained from Python" in err and "--sampler" in err
    code, _, err = cli(capsys, "sample", str(tmp_path / "run"), "--num", "8", "--sampler", "ddim", "--steps", "5",
                       "--out", str(tmp_path / "x.npy"), "--device", "cpu")
    assert code == 0, err
    assert np.load(tmp_path / "x.npy").shape == (8, 2)


@pytest.mark.parametrize(("option", "images"), [([], 1), (["--preview", "every"], 2), (["--no-preview"], 0)])
def test_previews_are_drawn_at_the_last_checkpoint_unless_asked(tmp_path: Path, option: list[str],
                                                                 images: int) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "process": {"type": "vp"}, "model": {"type": "mlp", "shape": [2], "hidden": 16, "depth": 1},
        "sampler": {"type": "ddim", "steps": 5}, "objective": {"type": "dsm"},
        "data": {"type": "moons", "num": 200}, "train": {"steps": 10, "batch_size": 32}}))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run), "--device", "cpu", "--checkpoint-every", "5", *option]) == 0
    assert len(list((run / "samples").glob("step-*.png"))) == images
    assert (run / "loss.png").is_file() == (images > 0)


def test_sample_shows_progress_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = cli(capsys, "sample", str(EXAMPLE), "--num", "30", "--steps", "7", "--batch-size", "10",
                       "--out", str(tmp_path / "x.npy"), "--device", "cpu")
    assert code == 0
    assert "sample: 100%" in err and "21/21" in err  # 3 chunks of 7 steps


def test_likelihood_shows_progress_on_a_terminal_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(12, 2)).astype(np.float32))
    args = ("likelihood", str(EXAMPLE), "--data", str(data), "--batch-size", "4", "--device", "cpu",
            "--set", "likelihood.rtol=1e-3", "--set", "likelihood.atol=1e-3")
    code, _, err = cli(capsys, *args)
    assert code == 0 and "likelihood:" not in err  # not a terminal: nothing on stderr
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = cli(capsys, *args)
    assert code == 0 and "likelihood: 100%" in err and "3/3" in err  # 3 chunks of 4 rows


def test_every_command_and_option_is_described() -> None:
    """``--help`` teaches: every built-in command has a description and examples, every option a line."""
    from diffcore.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("plugins", "list", "schema", "validate", "train", "sample", "likelihood"):
        command = sub.choices[name]
        assert command.description and command.epilog and f"diffcore {name}" in command.epilog, name
        for action in command._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest}"
