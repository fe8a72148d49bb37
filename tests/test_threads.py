"""The CPU thread rule (diffcore.threads): ``auto`` takes the cores other processes leave idle, never
more than torch is set to; a count fixes it; the same rule on the command line and from Python."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_main

from diffcore import threads
from diffcore.errors import UsageError
from diffcore.pipeline import Pipeline

EXAMPLE = ROOT / "examples" / "gmm2d.yaml"


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A machine of two CPUs whose other processes keep ``load[0]`` cores busy; no cached measurement."""
    load = [0.0]
    monkeypatch.setattr(threads, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda seconds=threads.PROBE_SECONDS: load[0])
    monkeypatch.setattr(threads, "_cache", None)
    return load


@pytest.mark.parametrize(("busy", "ceiling", "expected"), [
    (0.0, 2, 2), (0.3, 2, 2), (1.0, 2, 1), (0.8, 2, 1), (2.0, 2, 1), (0.0, 1, 1), (0.0, 8, 2)])
def test_auto_takes_the_idle_cores_within_torchs_setting(two_cpus: list[float], busy: float, ceiling: int,
                                                        expected: int) -> None:
    two_cpus[0] = busy
    assert threads.auto_threads(ceiling, fresh=True) == expected


def test_a_measurement_is_reused_briefly_then_taken_again(two_cpus: list[float],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert threads.auto_threads(2) == 2
    two_cpus[0] = 1.0
    assert threads.auto_threads(2) == 2  # within CACHE_SECONDS
    monkeypatch.setattr(threads, "CACHE_SECONDS", 0.0)
    assert threads.auto_threads(2) == 1


def test_the_probe_sees_another_process_keeping_a_core_busy() -> None:
    """Ground truth: a second process spinning on one core is at least most of a core's worth of load
    (more when the machine is busier still)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_elsewhere(0.5) > 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_requests_from_the_environment_and_their_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.requested() == 3 and threads.requested(2) == 2
    monkeypatch.setenv(threads.THREADS_ENV, " AUTO ")
    assert threads.requested() == "auto"
    monkeypatch.delenv(threads.THREADS_ENV)
    assert threads.requested() == "auto"
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(UsageError, match="DIFFCORE_THREADS: threads must be a positive number or 'auto'"):
        threads.requested()
    for bad in (0, "0", 5000, "-1"):
        with pytest.raises(UsageError, match="threads must be"):
            threads.parse_threads(bad)


def test_a_block_sets_torch_restores_it_and_nested_calls_keep_its_choice() -> None:
    before = torch.get_num_threads()
    with threads.cpu_threads(2) as outer:
        assert outer == torch.get_num_threads() == 2
        with threads.cpu_threads() as inner:  # the default inside a block that chose: keep it
            assert inner == 2
        with threads.cpu_threads(1):  # an explicit count still applies
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_a_long_run_follows_the_load(two_cpus: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.THREADS_ENV)
    torch_setting = [2]  # torch's thread count, as the module sees it
    monkeypatch.setattr(threads, "_torch_threads", lambda: torch_setting[0])
    monkeypatch.setattr(threads, "_set_torch_threads", lambda n: torch_setting.__setitem__(0, n))
    recheck = threads.Recheck(every=0.0)
    with threads.cpu_threads():  # auto, two idle cores: torch keeps its 2
        assert torch_setting == [2]
        two_cpus[0] = 1.0  # another process takes a core: step back to one thread
        recheck()
        assert torch_setting == [1]
        two_cpus[0] = 0.0  # and frees it: back up to torch's own setting, no further
        recheck()
        assert torch_setting == [2]
        two_cpus[0] = 1.0
        recheck()
    assert torch_setting == [2]  # leaving the block restored torch's setting
    recheck()  # outside a block nothing changes
    assert torch_setting == [2]


def test_the_python_entry_points_apply_the_rule() -> None:
    """``Pipeline.sample(threads=)``, ``log_likelihood(threads=)`` and the ``Trainer`` run on the threads
    asked for (seen from inside the score function and a training step) and restore torch's setting."""
    from diffcore.likelihood import log_likelihood
    from diffcore.registry import get_registry
    from diffcore.training.config import TrainConfig
    from diffcore.training.loop import Trainer

    pipe = Pipeline.from_spec(EXAMPLE).with_sampler("ddim", steps=3)
    seen: list[int] = []
    score = pipe.score_fn()

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return score(x, t)

    before = torch.get_num_threads()
    pipe.sample(4, seed=0, threads=2)
    log_likelihood(spy, pipe.process, torch.zeros(3, 2), threads=2)
    assert set(seen) == {2} and torch.get_num_threads() == before
    registry = get_registry()
    process, dsm = registry.build("process", "vp"), registry.build("objective", "dsm")
    model = registry.build("model", "mlp", shape=[2], hidden=8, depth=1)
    trainer = Trainer(model, dsm, process, torch.randn(64, 2), TrainConfig(steps=2, batch_size=8), threads=2)
    real_step = trainer.train_step
    during: list[int] = []

    def step() -> float:
        during.append(torch.get_num_threads())
        return real_step()

    trainer.train_step = step  # type: ignore[method-assign]
    trainer.run()
    assert during == [2, 2] and torch.get_num_threads() == before
    with pytest.raises(UsageError, match="threads must be"):
        Trainer(model, dsm, process, torch.randn(64, 2), TrainConfig(steps=2, batch_size=8), threads=0)


def test_the_command_line_takes_auto_and_refuses_nonsense(tmp_path: Path) -> None:
    out = tmp_path / "x.npy"
    code, _, err = run_main("sample", str(EXAMPLE), "--num", "10", "--steps", "3", "--threads", "auto",
                            "--out", str(out), "--device", "cpu")
    assert code == 0, err
    code, _, err = run_main("sample", str(EXAMPLE), "--num", "10", "--threads", "0", "--out", str(out))
    assert code == 2 and "argument --threads: threads must be from 1 to 1024 or 'auto', got 0" in err
