"""Run directories cannot be corrupted or mixed up: one locked writer, resume into the run's own
directory, the positional spec checked against the saved one, ``latest`` confined, checksummed and
checked checkpoints, every random state saved, clean temporary folders, non-finite steps caught,
labels in range, bounded settings, and clean failures on every ``torchrun`` rank."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from diffcore import get_registry
from diffcore.cli import main
from diffcore.distributed import World
from diffcore.errors import SpecError, TrainingError, UsageError
from diffcore.limits import MAX_STEPS
from diffcore.spec import validate_spec
from diffcore.training import TrainConfig, Trainer
from diffcore.training import checkpoint as ckpt
from diffcore.training.checkpoint import FORMAT, latest_checkpoint, load_checkpoint
from diffcore.training.config import MAX_BATCH_SIZE, MAX_CONSECUTIVE_SKIPS
from diffcore.training.rundir import LOCK, hold_run_dir, sweep_stale
from diffcore.training.setup import check_labels, setup_training, summary_json

SPEC = """
process: {type: vp}
model: {type: mlp, shape: [2], hidden: 16, depth: 2, output: eps}
sampler: {type: euler_maruyama, steps: 5}
objective: {type: dsm}
data: {type: moons, num: 300, noise: 0.05, scale: standardize}
train: {steps: 8, batch_size: 32, lr: 0.003, warmup: 2, seed: 3}
"""
DROPOUT_SPEC = SPEC.replace("{type: mlp, shape: [2], hidden: 16, depth: 2, output: eps}",
                            "{type: resmlp, shape: [2], hidden: 16, blocks: 2, dropout: 0.2, output: eps}")
CPU = ["--device", "cpu", "--no-preview"]
FILES = ("model", "ema", "state")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def write_spec(folder: Path, text: str = SPEC, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """``(spec, run)``: 8 steps with checkpoints at 4 and 8."""
    spec = write_spec(tmp_path)
    code, _, err = cli(capsys, "train", str(spec), "--out", str(tmp_path / "run"), "--checkpoint-every", "4", *CPU)
    assert code == 0, err
    return spec, tmp_path / "run"


def tensors_of(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(checkpoint)[0]


def assert_bitwise_equal(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold the same tensors bit for bit, and the same losses."""
    files_a, meta_a = load_checkpoint(a)
    files_b, meta_b = load_checkpoint(b)
    assert meta_a["losses"] == meta_b["losses"] and meta_a["step"] == meta_b["step"]
    for name in FILES:
        assert files_a[name].keys() == files_b[name].keys(), name
        for key, value in files_a[name].items():
            assert torch.equal(value, files_b[name][key]), (name, key)


def resave(checkpoint: Path, name: str, *, metadata: dict[str, str] | None = None,
           edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> None:
    """Rewrite ``<name>.safetensors`` of ``checkpoint`` with raw ``metadata`` values replaced and the
    tensors edited, and record its new checksum, so that only the content checks can catch it."""
    file = checkpoint / f"{name}.safetensors"
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + size])["__metadata__"]
    meta.update(metadata or {})
    tensors = load_safetensors(data)
    if edit is not None:
        edit(tensors)
    new = save_safetensors(tensors, metadata=meta)
    file.write_bytes(new)
    manifest = json.loads((checkpoint / "checksums.json").read_text())
    manifest["files"][file.name] = {"sha256": hashlib.sha256(new).hexdigest(), "bytes": len(new)}
    (checkpoint / "checksums.json").write_text(json.dumps(manifest))


def flip_bit(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x10
    file.write_bytes(bytes(data))


# -- 1. one writer per run directory ------------------------------------------------------------------

GATED_TRAIN = textwrap.dedent("""
    import sys, time, pathlib
    from diffcore.training import loop
    gate = pathlib.Path(sys.argv[1])
    real = loop.Trainer.train_step
    def gated(self):
        if self.step == 4:  # after the first checkpoint: tell the test, wait for its go
            (gate / "started").touch()
            deadline = time.monotonic() + 300
            while not (gate / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real(self)
    loop.Trainer.train_step = gated
    from diffcore.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first training never started"
        time.sleep(0.05)


def test_a_second_training_into_a_locked_run_directory_is_refused(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Two trainings into one ``--out``: the second is refused (exit 2, naming the holder's pid and
    command) while the first holds the lock; the first completes and its checkpoints load."""
    spec, run = write_spec(tmp_path), tmp_path / "run"
    script = tmp_path / "gated.py"
    script.write_text(GATED_TRAIN)
    args = ["train", str(spec), "--out", str(run), "--checkpoint-every", "4", *CPU]
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(tmp_path / "started", first)
        holder = json.loads((run / LOCK).read_text())
        assert holder["pid"] == first.pid and "train" in holder["command"]
        code, out, err = cli(capsys, *args)
        assert code == 2 and out == ""
        assert f"run directory {run} is in use by another training (pid {first.pid}" in err, err
        assert "wait for it to finish, or give another --out" in err
        # a resume into it is refused the same way, and a spec read from it still works
        code, _, err = cli(capsys, "train", str(spec), "--resume", str(run), *CPU)
        assert code == 2 and "is in use by another training" in err, err
    finally:
        (tmp_path / "go").touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads(stdout)["steps"] == 8
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step-00000004", "step-00000008"]  # lock released
    for step in ("step-00000004", "step-00000008"):
        files, meta = load_checkpoint(run / step)
        assert meta["step"] == int(step[5:]) and set(files) == set(FILES)
    assert latest_checkpoint(run).name == "step-00000008"


def test_the_lock_is_reentrant_within_a_process_and_released_on_exit(tmp_path: Path) -> None:
    world = World(0, 1, torch.device("cpu"))
    run = tmp_path / "run"
    with hold_run_dir(run, world):
        with hold_run_dir(run, world):  # run_training holds it around Trainer.run, which holds it per save
            assert (run / LOCK).exists()
        assert (run / LOCK).exists()
    assert not (run / LOCK).exists()
    (run / LOCK).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="lock file"), hold_run_dir(run, world):
        pass


# -- 2. resume into the run directory, bitwise --------------------------------------------------------


def interrupted_and_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[Path, Path]:
    """Train ``text`` for 8 steps into ``full``; copy its step-4 checkpoint into a run ``cut`` (as if
    stopped there) and resume ``--resume cut/step-00000004``. Returns ``(full, cut)``."""
    spec = write_spec(tmp_path, text)
    full, cut = tmp_path / "full", tmp_path / "cut"
    code, _, err = cli(capsys, "train", str(spec), "--out", str(full), "--checkpoint-every", "4", *CPU)
    assert code == 0, err
    cut.mkdir()
    shutil.copytree(full / "step-00000004", cut / "step-00000004")
    (cut / "latest").write_text("step-00000004\n")
    code, out, err = cli(capsys, "train", str(spec), "--resume", str(cut / "step-00000004"), "--checkpoint-every",
                         "4", *CPU)
    assert code == 0, err
    assert json.loads(out)["out"] == str(cut)
    return full, cut


def test_resume_from_a_step_folder_continues_its_run_directory(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``--resume RUN/step-N`` writes into ``RUN`` (not inside the step folder), moves ``RUN/latest`` on,
    and ends bitwise equal to the uninterrupted run."""
    full, cut = interrupted_and_resumed(tmp_path, capsys, SPEC)
    assert (cut / "latest").read_text() == "step-00000008\n"
    assert sorted(p.name for p in cut.iterdir()) == ["latest", "step-00000004", "step-00000008"]
    assert sorted(p.name for p in (cut / "step-00000004").iterdir()) == [
        "checksums.json", "ema.safetensors", "model.safetensors", "state.safetensors"]
    assert_bitwise_equal(full / "step-00000008", cut / "step-00000008")


def test_out_holding_another_run_is_refused(trained: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A new run into a directory with checkpoints would replace them step by step and move
    ``latest`` back; resuming one run into another's directory would mix them."""
    spec, run = trained
    code, _, err = cli(capsys, "train", str(spec), "--out", str(run), *CPU)
    assert code == 2 and f"{run} already holds the checkpoints of a run (latest: step-00000008)" in err, err
    assert f"diffcore train {run} --resume {run}" in err
    other = tmp_path / "other"
    assert cli(capsys, "train", str(spec), "--out", str(other), "--set", "train.steps=4", *CPU)[0] == 0
    code, _, err = cli(capsys, "train", str(spec), "--resume", str(run), "--out", str(other), *CPU)
    assert code == 2 and "already holds the checkpoints of another run" in err, err
    assert latest_checkpoint(run).name == "step-00000008" and latest_checkpoint(other).name == "step-00000004"
    code, _, err = cli(capsys, "train", str(spec), "--resume", str(run), "--out", str(run / "step-00000004"), *CPU)
    assert code == 2 and "is a checkpoint folder, not a run directory" in err, err
    assert sorted(p.name for p in (run / "step-00000004").iterdir()) == [
        "checksums.json", "ema.safetensors", "model.safetensors", "state.safetensors"]


# -- 3. the positional spec with --resume -------------------------------------------------------------


def test_the_positional_spec_must_be_the_resumed_runs(trained: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec, run = trained
    other = write_spec(tmp_path / "o", SPEC.replace("lr: 0.003", "lr: 0.01").replace("hidden: 16", "hidden: 32"))
    code, _, err = cli(capsys, "train", str(other), "--resume", str(run), *CPU)
    assert code == 2, err
    assert f"{other} is not the spec of the run resumed from {run / 'step-00000008'}" in err
    assert "model.hidden: 32 here, 16 saved" in err and "train.lr: 0.01 here, 0.003 saved" in err
    assert f"diffcore train {run} --resume {run}" in err
    # the same spec, the run directory, or its checkpoint folder are all fine
    for positional in (spec, run, run / "step-00000008"):
        code, out, err = cli(capsys, "train", str(positional), "--resume", str(run), *CPU)
        assert code == 0 and json.loads(out)["steps"] == 8, err


def test_errors_of_a_saved_spec_name_the_checkpoint_file(trained: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec, run = trained
    checkpoint = run / "step-00000008"
    meta = load_checkpoint(checkpoint, names=("model",))[1]
    broken = {**meta["spec"], "sampler": {"type": "euler_maruyama", "steps": -3}}
    resave(checkpoint, "model", metadata={"spec": json.dumps(broken)})
    code, _, err = cli(capsys, "train", str(spec), "--resume", str(run), *CPU)
    assert code == 2 and f"{checkpoint / 'model.safetensors'}" in err and "sampler.steps" in err, err
    assert f"{spec}:" not in err


# -- 4. `latest` confined and bounded -------------------------------------------------------------------


@pytest.mark.parametrize("pointer", ["../other/step-00000004", "ABSOLUTE", "step-00000004/../../other/step-00000004",
                                     "", "step-00000099", "step-4", "LINK"])
def test_latest_must_name_a_step_folder_of_the_run(trained: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], pointer: str) -> None:
    spec, run = trained
    elsewhere = tmp_path / "other" / "step-00000004"
    shutil.copytree(run / "step-00000004", elsewhere)
    if pointer == "LINK":  # a step folder that is a link to elsewhere
        shutil.rmtree(run / "step-00000008")
        (run / "step-00000008").symlink_to(elsewhere)
        pointer = "step-00000008"
    (run / "latest").write_text((str(elsewhere) if pointer == "ABSOLUTE" else pointer) + "\n")
    for args in (["sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy")],
                 ["train", str(spec), "--resume", str(run), *CPU]):
        code, _, err = cli(capsys, *args)
        assert code == 2 and str(run / "latest") in err, err
    assert not (tmp_path / "x.npy").exists()


def test_a_fifo_as_latest_is_refused_at_once(trained: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    (run / "latest").unlink()
    os.mkfifo(run / "latest")
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO as `latest` hung"))
    signal.alarm(60)
    try:
        code, _, err = cli(capsys, "sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 2 and "FIFO" in err and "latest" in err, err


# -- 5. checksums ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model", "ema", "state"])
def test_a_flipped_bit_is_refused_naming_the_file(trained: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], name: str) -> None:
    spec, run = trained
    file = run / "step-00000008" / f"{name}.safetensors"
    flip_bit(file, file.stat().st_size - 3)  # in the tensor data: the file still parses
    damaged = f"{file} is damaged"
    code, _, err = cli(capsys, "train", str(run), "--resume", str(run), *CPU)
    assert code == 2 and damaged in err and f"--resume {run}/step-N" in err and "step-00000004" in err, err
    if name != "state":  # sampling reads the spec (model file) and the EMA weights
        code, _, err = cli(capsys, "sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy"))
        assert code == 2 and damaged in err, err
    # the earlier checkpoint is the way out
    code, out, err = cli(capsys, "train", str(spec), "--resume", str(run / "step-00000004"), *CPU)
    assert code == 0 and json.loads(out)["steps"] == 8, err
    load_checkpoint(run / "step-00000008")  # rewritten whole


def test_older_and_foreign_formats_are_refused(trained: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    checkpoint = run / "step-00000008"
    manifest = json.loads((checkpoint / "checksums.json").read_text())
    (checkpoint / "checksums.json").write_text(json.dumps({**manifest, "format": "diffcore-checkpoint-1"}))
    code, _, err = cli(capsys, "sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "format 'diffcore-checkpoint-1', expected 'diffcore-checkpoint-2'" in err, err
    (checkpoint / "checksums.json").unlink()  # as format 1 wrote them
    code, _, err = cli(capsys, "sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "has no checksums.json" in err and FORMAT in err, err
    (checkpoint / "checksums.json").write_text(json.dumps(manifest))
    resave(checkpoint, "model", metadata={"format": "someone-else-1"})
    code, _, err = cli(capsys, "sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy"))
    assert code == 2 and "not a diffcore checkpoint" in err and "someone-else-1" in err, err


# -- 6. metadata and tensors checked -------------------------------------------------------------------


def _drop(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda tensors: tensors.__delitem__(key)


def _add(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda tensors: tensors.__setitem__(key, torch.zeros(3))


def _reshape(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda tensors: tensors.__setitem__(key, torch.zeros(7, 7))


def _nan(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda tensors: tensors[key].view(-1).__setitem__(0, math.nan)


METADATA_CASES: dict[str, tuple[str, dict[str, str], Any, str]] = {
    # id: (file, raw metadata replaced, tensor edit, expected in the message)
    "spec-not-json": ("model", {"spec": "{process: vp"}, None, "metadata field `spec` is not valid JSON"),
    "spec-not-a-mapping": ("model", {"spec": "[1, 2]"}, None, "metadata field `spec` must be a mapping"),
    "step-abc": ("model", {"step": "abc"}, None, "metadata field `step` is 'abc'"),
    "step-negative": ("model", {"step": "-5"}, None, "metadata field `step` is '-5'"),
    "step-other": ("model", {"step": "5"}, None, "holds step 5 but checksums.json says 8"),
    "scaling-nan": ("model", {"scaling": "[NaN, 1.0]"}, None, "metadata field `scaling` is not valid JSON"),
    "scaling-3-list": ("ema", {"scaling": "[0.0, 1.0, 2.0]"}, None, "metadata field `scaling` must be [shift, mult]"),
    "scaling-zero": ("model", {"scaling": "[0.0, 0]"}, None, "metadata field `scaling` must be [shift, mult]"),
    "losses": ("state", {"losses": "[1, \"x\"]"}, None, "metadata field `losses` must be a list"),
    "schedule": ("state", {"schedule": "{\"last_epoch\": -5}"}, None, "metadata field `schedule` must be a mapping"),
    "param-groups": ("state", {"param_groups": "[]"}, None, "metadata field `param_groups` must be a list of 1"),
    "rng": ("state", {"rng": "{}"}, None, "the saved random state (metadata field `rng`)"),
    "model-missing-key": ("model", {}, _drop("net.0.weight"), "(missing net.0.weight)"),
    "model-extra-key": ("model", {}, _add("intruder"), "(unexpected intruder)"),
    "model-shape": ("model", {}, _reshape("net.0.bias"), "wrong shape: net.0.bias [7, 7]"),
    "ema-missing-key": ("ema", {}, _drop("module.net.0.weight"), "(missing module.net.0.weight)"),
    "ema-shape": ("ema", {}, _reshape("module.net.0.bias"), "wrong shape: module.net.0.bias [7, 7]"),
    "ema-nan": ("ema", {}, _nan("module.net.0.weight"), "holds NaN or Inf in module.net.0.weight"),
    "optimiser-shape": ("state", {}, _reshape("optim.0.exp_avg"), "wrong shape: optim.0.exp_avg [7, 7]"),
    "optimiser-index": ("state", {}, _add("optim.99.exp_avg"), "tensor `optim.99.exp_avg` names no parameter"),
    "batches": ("state", {}, _drop("batches"), "tensor `batches`"),
    "rng-tensor": ("state", {}, _reshape("rng.torch"), "tensor `rng.torch` is missing or not torch.uint8"),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_metadata_and_tensors_are_checked(trained: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], case: str) -> None:
    """Checkpoints re-saved with a valid manifest (so the checksum does not catch them) but bad
    metadata or tensors are refused by ``train --resume`` and, for what sampling reads, ``sample``,
    naming the file and the field."""
    name, metadata, edit, expected = METADATA_CASES[case]
    _, run = trained
    checkpoint = run / "step-00000008"
    resave(checkpoint, name, metadata=metadata, edit=edit)
    file = checkpoint / f"{name}.safetensors"
    code, _, err = cli(capsys, "train", str(run), "--resume", str(run), *CPU)
    assert code == 2 and str(file) in err and expected in err, err
    if name == "ema" or (name == "model" and edit is None):  # what `diffcore sample RUN` reads
        code, _, err = cli(capsys, "sample", str(run), "--num", "4", "--out", str(tmp_path / "x.npy"))
        assert code == 2 and str(file) in err and expected in err, err


# -- 7. every random state ---------------------------------------------------------------------------


def test_dropout_resumes_bitwise(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A ResMLP with ``dropout: 0.2``: 8 steps equal 4 steps + resume + 4 steps bit for bit, because
    the checkpoint holds the global torch, numpy and Python random states; without restoring them
    the resumed run differs (the test would notice)."""
    full, cut = interrupted_and_resumed(tmp_path, capsys, DROPOUT_SPEC)
    assert_bitwise_equal(full / "step-00000008", cut / "step-00000008")
    state = tensors_of(full / "step-00000004")["state"]
    assert {"rng.torch", "rng.numpy", "rng.python"} <= set(state)
    from diffcore.training import loop

    monkeypatch.setattr(loop, "checked_rng_restore", lambda *args: (lambda: None))
    shutil.rmtree(cut / "step-00000008")
    (cut / "latest").write_text("step-00000004\n")
    torch.manual_seed(12345)
    spec = tmp_path / "spec.yaml"
    code, _, err = cli(capsys, "train", str(spec), "--resume", str(cut / "step-00000004"), *CPU)
    assert code == 0, err
    a, b = tensors_of(full / "step-00000008")["model"], tensors_of(cut / "step-00000008")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


# -- 8. temporary folders, fsync -----------------------------------------------------------------------


def small_trainer(steps: int = 4, data: torch.Tensor | None = None, **config: Any) -> Trainer:
    registry = get_registry()
    torch.manual_seed(0)
    return Trainer(registry.build("model", "mlp", shape=[2], hidden=8), registry.build("objective", "dsm"),
                   registry.build("process", "vp"), torch.randn(64, 2) if data is None else data,
                   TrainConfig(steps=steps, batch_size=8, warmup=1, **config), spec={"note": "test"})


def test_an_interrupted_checkpoint_write_leaves_no_temporary_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = small_trainer()
    run = tmp_path / "run"
    trainer.run(2, run_dir=run)
    real, calls = ckpt.write_file, []

    def interrupted(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what SIGTERM becomes in the CLI
        real(path, data)

    monkeypatch.setattr(ckpt, "write_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(4, run_dir=run)
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step-00000002"]
    assert latest_checkpoint(run).name == "step-00000002"


SLOW_WRITE = textwrap.dedent("""
    import sys, time, pathlib
    from diffcore.training import checkpoint
    gate, real, calls = pathlib.Path(sys.argv[1]), checkpoint.write_file, []
    def slow_write_file(path, data):
        real(path, data)
        calls.append(path)
        if len(calls) == 5:  # the first file of the second checkpoint is written: wait to be stopped
            (gate / "writing").touch()
            time.sleep(300)
    checkpoint.write_file = slow_write_file
    from diffcore.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigterm_during_a_checkpoint_write_leaves_no_temporary_folder(tmp_path: Path) -> None:
    """``diffcore train`` stopped by SIGTERM in the middle of a checkpoint write removes the temporary
    folder and the lock; ``latest`` still names the previous, complete checkpoint."""
    spec, run = write_spec(tmp_path), tmp_path / "run"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WRITE)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), "train", str(spec), "--out", str(run),
                             "--checkpoint-every", "4", *CPU], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        wait_for(tmp_path / "writing", proc)
        assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == [f".step-00000008.{proc.pid}.tmp"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step-00000004"]
    load_checkpoint(latest_checkpoint(run))


def test_stale_temporaries_are_swept_when_the_lock_is_taken(trained: tuple[Path, Path]) -> None:
    _, run = trained
    (run / ".step-00000012.4242.tmp").mkdir()
    (run / ".step-00000012.4242.tmp" / "model.safetensors").write_bytes(b"partial")
    (run / ".latest.4242.0123456789ab.tmp").write_text("step-0000")
    (run / ".loss.png.4242.0123456789ab.tmp").write_bytes(b"")
    # a crash between the two renames of a re-saved step: the complete copy is under the .old name
    os.replace(run / "step-00000008", run / ".step-00000008.4242.old")
    (run / "keep.txt").write_text("not ours")
    with hold_run_dir(run, World(0, 1, torch.device("cpu"))):
        assert sorted(p.name for p in run.iterdir()) == [LOCK, "keep.txt", "latest", "step-00000004",
                                                         "step-00000008"]
    load_checkpoint(latest_checkpoint(run))
    assert sweep_stale(run) == []


def test_renames_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory is fsynced before and after the checkpoint folder's rename and after ``latest``
    is replaced; each file is fsynced by ``atomic_write``."""
    events: list[str] = []
    real_replace = os.replace

    def replace(source: Path, target: Path) -> None:
        events.append(f"replace {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(ckpt, "fsync_dir", lambda path: events.append(f"fsync {Path(path).name}"))
    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    ckpt.save_checkpoint(run, 3, {"model": {"w": torch.ones(2)}}, {"spec": {}})
    folder = events.index("replace step-00000003")
    assert events[folder - 1] == "fsync run" and events[folder + 1] == "fsync run"
    assert events[-2:] == ["replace latest", "fsync run"]
    assert events[:3] == ["replace model.safetensors", "replace checksums.json", "fsync .step-00000003."
                          f"{os.getpid()}.tmp"]


# -- 9. non-finite training ---------------------------------------------------------------------------


def test_a_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, SPEC.replace("lr: 0.003, warmup: 2", "lr: 1.0e+30, warmup: 0, grad_clip: null"))
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", str(spec), "--out", str(run), "--checkpoint-every", "1", *CPU)
    assert code == 2 and out == "", out
    last = latest_checkpoint(run)
    step = int(last.name[5:])
    assert f"training stopped at step {step + 1}: the loss is" in err and "train.nonfinite: skip" in err, err
    files, _ = load_checkpoint(last)
    assert all(bool(v.isfinite().all()) for f in files.values() for v in f.values() if v.is_floating_point())
    assert sorted(p.name for p in run.iterdir()) == ["latest", *(f"step-{s:08d}" for s in range(1, step + 1))]
    resumed = setup_training(spec, device="cpu").trainer
    resumed.load(run)  # every tensor checked: keys, shapes, finite
    assert resumed.step == step


def test_non_finite_steps_are_skipped_when_asked(tmp_path: Path) -> None:
    """With ``nonfinite: skip``, exactly the steps whose batch holds the one NaN row are skipped: no
    optimiser, schedule or EMA update; they are counted, saved and restored."""
    data = torch.randn(64, 2)
    data[5] = math.nan
    trainer = small_trainer(40, data, nonfinite="skip", grad_clip=None)
    trainer.run(run_dir=tmp_path / "run")
    draws = torch.Generator().manual_seed(0)
    expected = sum(bool((torch.randint(0, 64, (8,), generator=draws) == 5).any()) for _ in range(40))
    assert 0 < trainer.skipped == expected
    assert len(trainer.losses) == 40 - expected and all(math.isfinite(x) for x in trainer.losses)
    assert trainer.schedule.last_epoch == 40 - expected and int(trainer.ema.n_averaged) == 40 - expected
    assert all(bool(p.isfinite().all()) for p in trainer.model.parameters())
    again = small_trainer(40, data, nonfinite="skip", grad_clip=None)
    again.load(tmp_path / "run")
    assert again.skipped == expected and again.step == 40 and again.losses == trainer.losses
    summary = json.loads(summary_json({"final_loss": math.nan, "first_loss": math.inf, "skipped_steps": 3}))
    assert summary == {"final_loss": None, "first_loss": None, "skipped_steps": 3}


def test_skipping_stops_after_too_many_in_a_row() -> None:
    trainer = small_trainer(500, torch.full((64, 2), math.nan), nonfinite="skip")
    with pytest.raises(TrainingError, match=f"the last {MAX_CONSECUTIVE_SKIPS} steps all had") as exc:
        trainer.run()
    assert exc.value.step == MAX_CONSECUTIVE_SKIPS == trainer.skipped and not trainer.losses


# -- 10. labels in range, 11. bounded settings -----------------------------------------------------------


def test_labels_outside_the_models_classes_are_refused() -> None:
    """The digits have labels 0..9; with ``num_classes: 9`` the label 9 would be the null label."""
    spec = {"process": {"type": "vp"}, "sampler": {"type": "euler_maruyama", "steps": 5},
            "model": {"type": "mlp", "shape": [1, 8, 8], "hidden": 16, "num_classes": 9, "output": "eps"},
            "objective": {"type": "dsm"}, "data": {"type": "digits"}, "train": {"steps": 2, "batch_size": 8}}
    with pytest.raises(UsageError, match=r"training labels lie outside \[0, 9\) \(e\.g\. \[9\]\)") as exc:
        setup_training(spec, device="cpu")
    assert "set model.num_classes to at least 10" in str(exc.value)
    spec["model"]["num_classes"] = 10  # type: ignore[index]
    setup_training(spec, device="cpu")
    with pytest.raises(UsageError, match=r"2 of the 3 training labels"):
        check_labels(torch.tensor([-1, 0, 3]), 3, "spec.yaml")


@pytest.mark.parametrize(("field", "value"), [("steps", MAX_STEPS + 1), ("batch_size", MAX_BATCH_SIZE + 1),
                                              ("warmup", MAX_STEPS + 1), ("seed", 2**64),
                                              ("nonfinite", "ignore")])
def test_train_settings_are_bounded(field: str, value: Any) -> None:
    spec = {"process": {"type": "vp"}, "model": {"type": "mlp", "shape": [2]},
            "sampler": {"type": "euler_maruyama"}, "train": {field: value}}
    with pytest.raises(SpecError, match=f"train.{field}"):
        validate_spec(spec)


# -- torchrun: a failure on rank 0 ends cleanly on every rank -------------------------------------------


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    with hold_run_dir(run, World(0, 1, torch.device("cpu"))):
        yield run


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_under_torchrun_a_refused_lock_ends_every_rank_cleanly(tmp_path: Path, locked: Path) -> None:
    """Rank 0 cannot take the lock (this test holds it): both ranks exit with status 2 and one line,
    no rank waits in a collective, no rank prints a traceback."""
    spec = write_spec(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFCORE_")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "diffcore", "train", str(spec), "--out", str(locked), *CPU],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    err = " ".join(proc.stderr.split())
    # the first rank to exit gets torchrun to SIGTERM the other, which may then print nothing
    rank0 = f"diffcore: error: run directory {locked} is in use by another training (pid {os.getpid()}"
    rank1 = f"diffcore: error: another process of this torchrun failed while locking the run directory {locked}"
    assert rank0 in err or rank1 in err, err
    assert "diffcore/training" not in proc.stderr  # no traceback through diffcore on any rank
    assert "exitcode : 2" in err or "exitcode: 2" in err
    assert not (locked / "latest").exists()
