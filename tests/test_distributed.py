"""``torchrun`` with 2 CPU processes (gloo): DDP training follows the single-process run and the loss
falls; distributed sampling returns exactly the single-process samples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli

from diffcore.training.checkpoint import latest_checkpoint, load_checkpoint

SPEC = """
process: {type: vp}
model: {type: mlp, shape: [2], hidden: 64, depth: 2, output: eps}
sampler: {type: euler_maruyama, steps: 40}
objective: {type: dsm}
data: {type: moons, num: 4000, noise: 0.05, scale: standardize}
train: {steps: 80, batch_size: 128, lr: 0.003, warmup: 10, seed: 3}
"""

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFCORE_")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "diffcore", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    single = run_cli("train", str(spec), "--out", str(root / "single"), "--no-preview", "--device", "cpu",
                     env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    ddp = torchrun("train", str(spec), "--out", str(root / "ddp"), "--device", "cpu", "--checkpoint-every", "40")
    assert ddp.returncode == 0, ddp.stderr
    return {"spec": spec, "single": root / "single", "ddp": root / "ddp"}


def test_two_process_training_follows_the_single_process_run(runs: dict[str, Path]) -> None:
    single, single_meta = load_checkpoint(latest_checkpoint(runs["single"]))
    ddp, ddp_meta = load_checkpoint(latest_checkpoint(runs["ddp"]))
    assert ddp_meta["step"] == single_meta["step"] == 80
    losses, ddp_losses = np.array(single_meta["losses"]), np.array(ddp_meta["losses"])
    # the loss falls: last 20 steps well below the first 20
    assert ddp_losses[-20:].mean() < 0.6 * ddp_losses[:20].mean(), ddp_losses
    # same batches, same noise, gradients averaged over the two halves: equal up to summation order
    # (measured: max |loss difference| 9e-7, max weight difference 3e-7 after 80 Adam steps)
    np.testing.assert_allclose(ddp_losses, losses, rtol=1e-4, atol=1e-5)
    for name in ("model", "ema"):
        for key, value in single[name].items():
            torch.testing.assert_close(ddp[name][key], value, rtol=1e-4, atol=1e-4, msg=f"{name}.{key}")
    # rank 0 alone wrote: exactly the checkpoints asked for, and previews
    names = sorted(p.name for p in runs["ddp"].iterdir())
    assert names == ["latest", "loss.png", "samples", "step-00000040", "step-00000080"], names


@pytest.mark.parametrize("batch", ["50", None], ids=["batch-50", "default-batch"])
def test_two_process_sampling_equals_single_process(runs: dict[str, Path], tmp_path: Path, batch: str | None) -> None:
    # single-process chunks of --batch-size; torchrun's default batch is an equal share per rank (300)
    common = ["--num-samples", "600", "--seed", "11", "--device", "cpu", "--json"]
    ddp = torchrun("sample", str(runs["ddp"]), "--out", str(tmp_path / "ddp.npy"), *common,
                   *(["--batch-size", batch] if batch else []))
    assert ddp.returncode == 0, ddp.stderr
    single = run_cli("sample", str(runs["ddp"]), "--out", str(tmp_path / "single.npy"), *common,
                     "--batch-size", batch or "300")
    assert single.returncode == 0, single.stderr
    a, b = np.load(tmp_path / "ddp.npy"), np.load(tmp_path / "single.npy")
    assert a.shape == (600, 2) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert '"processes": 2' in ddp.stdout and '"range": "raw"' in ddp.stdout


def test_two_process_likelihood_equals_single_process(runs: dict[str, Path], tmp_path: Path) -> None:
    # adaptive dopri5 on a network model: chunk c is solved by rank c mod 2 with no collective inside the
    # solve (the ranks take different numbers of steps), then gathered once; each chunk is solved as the
    # single process solves it, so the rows are equal exactly. The data: 250 rows in the raw units.
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).normal(size=(250, 2)) * [1.0, 0.5])
    common = ["--data", str(data), "--batch-size", "100", "--device", "cpu", "--json",
              "--set", "likelihood.trace=hutchinson", "--set", "likelihood.probes=2"]
    ddp = torchrun("likelihood", str(runs["ddp"]), "--out", str(tmp_path / "ddp.npy"), *common)
    assert ddp.returncode == 0, ddp.stderr
    single = run_cli("likelihood", str(runs["ddp"]), "--out", str(tmp_path / "single.npy"), *common,
                     env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    a, b = np.load(tmp_path / "ddp.npy"), np.load(tmp_path / "single.npy")
    assert a.shape == (250,) and a.dtype == np.float64 and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert '"processes": 2' in ddp.stdout and '"solves": 3' in ddp.stdout
