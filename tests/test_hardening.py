"""Hostile input, as a regression suite: every family a hostile tester found fails cleanly (exit 2
and one paragraph naming the file, the field and the fix) or works correctly, never with a
traceback, a hang, a silently wrong result or a replaced file.

Run directories and training (locks, checksums, resume, non-finite losses, RNG state) are covered
in ``test_run_dirs.py``; component parameter bounds in ``test_bounds.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli, write_distribution
from torch import Tensor

from diffcore import hookimpl
from diffcore.cli import main
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.registry import get_registry
from diffcore.sampler import Callback, Sampler, SampleResult

EXAMPLE = ROOT / "examples" / "gmm2d.yaml"
GMM = ("process: {type: vp}\nmodel: {type: gmm, weights: [1], means: [[0, 0]], variances: [[1, 1]]}\n"
       "sampler: {type: ddim, steps: 5}\n")


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM after ``seconds``."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(capsys: pytest.CaptureFixture[str], *args: str, expect: str = "", seconds: int = 120) -> str:
    """Run the CLI in-process; assert exit 2 with one paragraph (containing ``expect``); return it."""
    with deadline(seconds):
        code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 2, (args, out, err)
    assert err.startswith("diffcore: error: ") and len(err.strip().splitlines()) == 1, err
    assert expect in err, (expect, err)
    return err


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------------------------------------
# Paths and numbers on the command line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("out", "expect"), [(".", "does not name a file"), ("", "does not name a file"),
                                             ("/dev/null", "is a character device, which is never replaced")])
def test_out_that_is_not_a_file(capsys: pytest.CaptureFixture[str], out: str, expect: str) -> None:
    refused(capsys, "sample", str(EXAMPLE), "--num", "3", "--steps", "2", "--out", out, expect=expect)


def test_out_never_follows_or_replaces_a_symlink_or_a_folder(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "link.npy").symlink_to(target)
    (tmp_path / "folder.npy").mkdir()
    before = snapshot(tmp_path)
    refused(capsys, "sample", str(EXAMPLE), "--num", "3", "--steps", "2", "--out", str(tmp_path / "link.npy"),
            expect="is a symbolic link")
    refused(capsys, "sample", str(EXAMPLE), "--num", "3", "--steps", "2", "--out", str(tmp_path / "folder.npy"),
            expect="is a directory, which is never replaced")
    refused(capsys, "schema", "--out", str(tmp_path / "link.npy"), expect="is a symbolic link")
    assert snapshot(tmp_path) == before and target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["sample", "train"])
@pytest.mark.parametrize("device", ["tpu", "meta", "xla", "cuda:99"])
def test_unusable_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, device: str) -> None:
    spec = ROOT / "examples" / ("train_moons.yaml" if command == "train" else "gmm2d.yaml")
    extra = ["--num", "2", "--out", str(tmp_path / "x.npy")] if command == "sample" else ["--out", str(tmp_path / "r")]
    refused(capsys, command, str(spec), "--device", device, *extra, expect="--device")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("option", "value", "expect"), [
    ("--steps", "99999999999999999999", "out of range: use 1 to 1000000"),
    ("--steps", "2000000000", "out of range: use 1 to 1000000"),
    ("--steps", "9" * 4400, "(4400 digits) is out of range"),
    ("--num", "0", "out of range"),
    ("--num", "1e3", "'1e3' is not an integer"),
    ("--seed", str(2**64), "out of range"),
    ("--batch-size", "-1", "out of range"),
])
def test_cli_numbers_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str,
                                 expect: str) -> None:
    args = ["sample", str(EXAMPLE), "--out", str(tmp_path / "x.npy"), "--num", "3", option, value]
    refused(capsys, *args, expect=expect)


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------


def test_spec_that_is_not_a_regular_file_is_refused_before_reading(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    refused(capsys, "validate", "/dev/zero", expect="is a character device, not a regular file", seconds=10)
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    refused(capsys, "validate", str(fifo), expect="is a FIFO (named pipe), not a regular file", seconds=10)
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(3 << 30)  # a sparse 3 GiB file: refused from its size, never read
    refused(capsys, "validate", str(big), expect="has 3221225472 bytes, more than the 1048576 allowed", seconds=10)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(("text", "expect"), [
    (GMM.replace("[[1, 1]]", "[[1, 1" + "1" * 4400 + "]]"), "line 2: the integer 111111111111... has 4401 digits"),
    (GMM + "shape: " + "[" * 600 + "]" * 600, "nested"),
    ('{"process": {"type": "vp"}, "x": ' + "[" * 600 + "]" * 600 + "}", "nested more than 32 levels deep"),
])
def test_huge_numbers_and_deep_nesting(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                       expect: str) -> None:
    path = tmp_path / ("spec.json" if text.startswith("{") else "spec.yaml")
    path.write_text(text)
    err = refused(capsys, "validate", str(path), expect=expect)
    assert err.count(str(path)) == 1  # the file is named once


def test_deep_override_value(capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, "validate", str(EXAMPLE), "--set", "sampler.steps=" + "[" * 600 + "]" * 600, expect="nested")
    refused(capsys, "validate", str(EXAMPLE), "--set", "a." * 100 + "b=1", expect="nested more than 32 levels")


@pytest.mark.parametrize(("value", "parsed"), [("017", 17), ("0o17", 15), ("0x10", 16), ("1e3", 1000.0)])
def test_yaml_is_read_as_yaml_1_2(tmp_path: Path, value: str, parsed: float) -> None:
    """YAML 1.1 reads 017 as 15, 1:30 as 90 and `on` as true; specs are YAML 1.2, as documented."""
    from diffcore.spec import parse_text

    assert parse_text(f"a: {value}") == {"a": parsed}
    assert parse_text("a: 1:30\nb: on\nc: yes\nd: 1_000\ne: 2026-01-01") == {
        "a": "1:30", "b": "on", "c": "yes", "d": "1_000", "e": "2026-01-01"}
    path = tmp_path / "s.yaml"
    path.write_text(GMM.replace("steps: 5", "steps: 017"))
    pipe = __import__("diffcore").Pipeline.from_spec(path)
    assert pipe.sampler.params.steps == 17


# ---------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------


def _header_only(path: Path, shape: tuple[int, ...]) -> None:
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 64)


@pytest.mark.parametrize(("make", "expect"), [
    (lambda p: np.save(p, np.zeros((5, 2), dtype=np.longdouble)), "holds float128 values"),
    (lambda p: np.save(p, np.zeros((5, 2), dtype=np.int64)), "holds int64 values"),
    (lambda p: _header_only(p, (20_000_000_000_000,)), "header claims shape (20000000000000,)"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "is a .npz archive (zip)"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00{garbage"), "damaged .npy header"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00v\x00z'descr': '<f4', 'fortran_order': False, 'shape': (), }"
                             + b" " * 62 + b"\n"), "damaged .npy header (TokenError"),  # found by the fuzzer
    (lambda p: np.save(p, np.zeros((20, 2), dtype=np.float32)), "have shape (20, 2) but 10 samples"),
    (lambda p: np.save(p, np.full((10, 2), np.nan, dtype=np.float32)), "contains NaN or Inf"),
    (lambda p: os.mkfifo(p), "is a FIFO"),
])
def test_bad_latents(tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], None],
                     expect: str) -> None:
    latents = tmp_path / "z.npy"
    make(latents)
    out = tmp_path / "x.npy"
    refused(capsys, "sample", str(EXAMPLE), "--num", "10", "--steps", "2", "--latents", str(latents),
            "--out", str(out), expect=expect, seconds=30)
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_big_endian_latents_are_read_correctly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = np.random.default_rng(0).normal(size=(6, 2))
    np.save(tmp_path / "be.npy", start.astype(">f8"))
    np.save(tmp_path / "le.npy", start.astype("<f4"))
    for name in ("be", "le"):
        assert main(["sample", str(EXAMPLE), "--num", "6", "--sampler", "ddim", "--steps", "5", "--latents",
                     str(tmp_path / f"{name}.npy"), "--out", str(tmp_path / f"{name}-out.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "be-out.npy"), np.load(tmp_path / "le-out.npy"))


def test_training_data_of_the_wrong_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text("process: {type: vp}\nmodel: {type: mlp, shape: [3]}\nsampler: {type: ddim}\n"
                    "objective: {type: dsm}\ndata: {type: moons, num: 100}\ntrain: {steps: 2}\n")
    refused(capsys, "train", str(spec), "--out", str(tmp_path / "run"), "--device", "cpu",
            expect="dataset 'moons' gives samples of shape [2] but the model's samples have shape [3]")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Plugins: failures are reported, never fatal, silent or a traceback
# ---------------------------------------------------------------------------------------------


class _Base(Sampler):
    """A sampler whose :meth:`output` a subclass replaces with something wrong."""

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int | None]:
        return self.output(x_T), 1  # type: ignore[return-value]

    def output(self, x_T: Tensor) -> object:
        return x_T


def _sampler(name: str, output: Callable[[Tensor], object]) -> type[Sampler]:
    return type(f"Bad_{name}", (_Base,), {"name": name, "output": lambda self, x_T: output(x_T)})


def _raise(x_T: Tensor) -> object:
    raise RuntimeError("sampler exploded")


def _exit(x_T: Tensor) -> object:
    raise SystemExit(0)


class _Overriding(Sampler):
    """Overrides ``sample`` itself, bypassing the base class's checks: core still checks the result."""

    name = "bad_override"

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int | None]:
        raise AssertionError("not called")

    def sample(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource, *,
               callback: Callback | None = None) -> SampleResult:
        return SampleResult(x=x_T[:-1], nfe=1, steps=1)


class _OverridingNaN(_Overriding):
    """Overrides ``sample`` and returns NaN: the base class's finiteness check is bypassed, core's is not."""

    name = "bad_override_nan"

    def sample(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource, *,
               callback: Callback | None = None) -> SampleResult:
        return SampleResult(x=x_T * float("nan"), nfe=1, steps=1)


BAD_SAMPLERS = {
    "bad_list": (lambda x: x.tolist(), "returned a list as samples"),
    "bad_rows": (lambda x: x[:-1], "returned samples of shape (4, 2)"),
    "bad_broadcast": (lambda x: x[:1, :], "returned samples of shape (1, 2)"),
    "bad_dtype": (lambda x: x.double(), "torch.float64"),
    "bad_nan": (lambda x: x * float("nan"), "NaN or Inf in the final samples of sampler"),
    "bad_raise": (_raise, "failed while sampling: RuntimeError: sampler exploded"),
    "bad_exit": (_exit, "failed while sampling: SystemExit: 0"),
}


@pytest.fixture
def bad_samplers() -> Iterator[None]:
    registry = get_registry()
    module = types.ModuleType("bad_samplers")
    classes = [_sampler(name, fn) for name, (fn, _) in BAD_SAMPLERS.items()] + [_Overriding, _OverridingNaN]

    @hookimpl
    def diffcore_register(register):  # type: ignore[no-untyped-def]
        for cls in classes:
            register(cls)

    module.diffcore_register = diffcore_register  # type: ignore[attr-defined]
    registry.register_plugin(module, "bad_samplers")
    yield
    registry.unregister_plugin("bad_samplers")


OVERRIDING = {"bad_override": "returned samples of shape (4, 2)",
              "bad_override_nan": "returned NaN or Inf samples without raising NonFiniteError"}


@pytest.mark.parametrize("name", [*BAD_SAMPLERS, *OVERRIDING])
def test_a_plugin_sampler_returning_garbage_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        bad_samplers: None, name: str) -> None:
    expect = BAD_SAMPLERS[name][1] if name in BAD_SAMPLERS else OVERRIDING[name]
    out = tmp_path / "x.npy"
    err = refused(capsys, "sample", str(EXAMPLE), "--num", "5", "--sampler", name, "--out", str(out), expect=expect)
    assert repr(name) in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


SYSTEM_EXIT_AT_IMPORT = "import sys\nsys.exit(0)\n"
INTERRUPT_AT_IMPORT = "raise KeyboardInterrupt\n"


def test_a_plugin_exiting_at_import_is_a_reported_error(tmp_path: Path) -> None:
    """A plugin calling sys.exit(0) at import made `validate` pass an invalid spec, silently."""
    site = tmp_path / "site"
    write_distribution(site, "diffcore-quitter", "1.0", {"quitter": "quitter_mod"},
                       {"quitter_mod": SYSTEM_EXIT_AT_IMPORT})
    write_distribution(site, "diffcore-interrupter", "1.0", {"interrupter": "interrupter_mod"},
                       {"interrupter_mod": INTERRUPT_AT_IMPORT})
    bad = tmp_path / "bad.yaml"
    bad.write_text(GMM.replace("ddim", "ddimm"))
    proc = run_cli("validate", str(bad), extra_paths=[site])
    assert proc.returncode == 2 and "did you mean 'ddim'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GMM)
    proc = run_cli("validate", str(good), extra_paths=[site])
    assert proc.returncode == 0 and "ok" in proc.stdout
    assert "warning: 2 plugin error(s)" in proc.stderr, proc.stderr
    proc = run_cli("plugins", "--json", extra_paths=[site])
    errors = __import__("json").loads(proc.stdout)["errors"]
    assert any("quitter" in e and "SystemExit: 0" in e for e in errors), errors
    assert any("interrupter" in e and "KeyboardInterrupt" in e for e in errors), errors


# ---------------------------------------------------------------------------------------------
# Signals: temporary files are removed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_sampling_leaves_no_temporary_file(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "x.npy"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFCORE_")}
    proc = subprocess.Popen([sys.executable, "-m", "diffcore", "sample", str(EXAMPLE), "--num", "20000",
                             "--steps", "1000000", "--sampler", "euler_maruyama", "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait for the temporary file: sampling is under way
            if list(tmp_path.glob(".x.npy.*.tmp")):
                break
            time.sleep(0.1)
        assert list(tmp_path.glob(".x.npy.*.tmp")), "sampling never started"
        time.sleep(0.5)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_stale_temporary_file_of_a_dead_writer_is_swept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.npy.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"\0" * 1000)
    other = tmp_path / ".y.npy.1.tmp"  # another output's, and its writer (pid 1) runs: kept
    other.write_bytes(b"")
    assert main(["sample", str(EXAMPLE), "--num", "3", "--steps", "2", "--out", str(tmp_path / "x.npy")]) == 0
    assert not stale.exists() and other.exists() and (tmp_path / "x.npy").exists()


def test_default_chunks_bound_memory() -> None:
    from diffcore.distributed import MAX_CHUNK_VALUES, World, default_batch_size

    world = World(0, 1, torch.device("cpu"))
    assert default_batch_size(1000, (2,), world) == 1000
    assert default_batch_size(10**9, (3, 64, 64), world) == MAX_CHUNK_VALUES // (3 * 64 * 64)
    assert default_batch_size(10, (1 << 24,), World(0, 4, torch.device("cpu"))) == 1


def test_another_rank_failing_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun, when rank 0 stops (and says why), the other ranks lose their connection: they
    say so in one line instead of printing a traceback."""
    import torch.distributed as dist

    import diffcore.cli

    def lost(args: object) -> int:
        raise dist.DistBackendError("[gloo] Connection closed by peer [127.0.0.1]:29500\nmore detail")

    monkeypatch.setattr(diffcore.cli, "cmd_validate", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    err = refused(capsys, "validate", str(EXAMPLE), expect="rank 1 stopped because another process of the run failed")
    assert "Connection closed by peer" in err
    monkeypatch.setenv("RANK", "0")  # rank 0 has no one to blame: a genuine error stays visible
    with pytest.raises(dist.DistBackendError):
        main(["validate", str(EXAMPLE)])
