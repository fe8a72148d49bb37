"""CPU threads: each command's wall time with the default (``--threads auto``) against one thread and
against torch's own default (one thread per core), on an idle machine and with one core kept busy by
another process, all measured in one run.

The targets (issue 22): with one core busy, every command within 1.3x of its ``--threads 1`` time; on
an idle machine, the digits U-Net's training and sampling within 1.1x of torch's default. Each cell
is the best of ``--repeats`` runs of ``python -m diffcore ...`` (a fresh process, as a user runs it);
the busy core is a second Python process spinning in a loop.

    python benchmarks/threads.py                 # the table, about ten minutes on two CPU cores
    python benchmarks/threads.py --quick         # shorter commands, one repeat: a smoke run
    python benchmarks/threads.py --torch-busy    # also torch's default with a core busy (slow: minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IDLE_TARGET = 1.1
"""On an idle machine the default's time over torch's default, for the U-Net rows."""
BUSY_TARGET = 1.3
"""With one core busy, the default's time over one thread's, for every row."""


def diffcore(*args: str, threads: str | None, cwd: Path) -> float:
    """Seconds one ``python -m diffcore ARGS`` takes, with ``--threads`` when given (``None``: the
    default, with ``DIFFCORE_THREADS`` unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFCORE_THREADS", "OMP_NUM_THREADS")}
    argv = [sys.executable, "-m", "diffcore", *args] + (["--threads", threads] if threads else [])
    began = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return seconds


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """Another process keeping one core busy for the duration of the block."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let the scheduler see it
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def commands(work: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """``(row name, argv)`` of each measured command; the files they read are made by :func:`prepare`."""
    n = 2000 if quick else 10000
    return [
        ("sample gmm2d", ["sample", str(ROOT / "examples/gmm2d.yaml"), "--num", str(n), "--seed", "0",
                          "--out", "s.npy"]),
        ("likelihood gmm2d", ["likelihood", str(ROOT / "examples/gmm2d.yaml"), "--data", "data.npy"]),
        ("compare gmm2d", ["compare", str(ROOT / "examples/gmm2d.yaml"), "--budgets", "5,10,20",
                           "--num", "500" if quick else "1000",
                           "--samplers", "euler_maruyama,ddim,dpm_solver_pp,heun"]),
        ("train moons MLP", ["train", str(ROOT / "examples/train_moons.yaml"), "--out", "moons-bench", "--no-preview",
                             "--set", f"train.steps={100 if quick else 500}"]),
        ("sample moons MLP", ["sample", "moons", "--num", "1000", "--out", "m.npy"]),
        ("train digits U-Net", ["train", str(ROOT / "examples/train_digits.yaml"), "--out", "digits-bench",
                                "--no-preview", "--set", f"train.steps={20 if quick else 100}"]),
        ("sample digits U-Net", ["sample", "digits", "--num", "64" if quick else "256", "--steps", "100",
                                 "--out", "d.npy"]),
    ]


def prepare(work: Path, quick: bool) -> None:
    """The data and trained runs the commands read (trained briefly: the cost of sampling does not
    depend on how well the network learned)."""
    diffcore("sample", str(ROOT / "examples/gmm2d.yaml"), "--num", "2000" if quick else "10000", "--seed", "1",
             "--out", "data.npy", threads="1", cwd=work)
    diffcore("train", str(ROOT / "examples/train_moons.yaml"), "--out", "moons", "--no-preview",
             "--set", "train.steps=50", threads="1", cwd=work)
    diffcore("train", str(ROOT / "examples/train_digits.yaml"), "--out", "digits", "--no-preview",
             "--set", "train.steps=10", threads="1", cwd=work)


def clear_runs(work: Path) -> None:
    """Remove the benchmark's own training runs, so each training starts from step 0."""
    for name in ("moons-bench", "digits-bench"):
        shutil.rmtree(work / name, ignore_errors=True)


def best(argv: list[str], threads: str | None, work: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        clear_runs(work)
        times.append(diffcore(*argv, threads=threads, cwd=work))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter commands and one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell, the best kept (default 2)")
    parser.add_argument("--torch-busy", action="store_true", help="also torch's default with a core busy")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch_default = str(cores)  # torch's default intra-op count is one thread per core
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.quick)
        rows = []
        for name, argv in commands(work, args.quick):
            idle = {label: best(argv, threads, work, repeats)
                    for label, threads in (("auto", None), ("1", "1"), ("torch", torch_default))}
            with busy_core():
                busy = {label: best(argv, threads, work, repeats) for label, threads in (("auto", None), ("1", "1"))}
                if args.torch_busy:
                    busy["torch"] = best(argv, torch_default, work, 1)
            rows.append((name, idle, busy))
            print(f"  {name}: idle {idle}, busy {busy}", file=sys.stderr, flush=True)

    print(f"\nwall seconds, best of {repeats}; {cores} CPUs; torch's default = {torch_default} threads; "
          "busy = another process spinning on one core\n")
    header = "| command | idle: auto | idle: 1 | idle: torch | auto / torch | busy: auto | busy: 1 | auto / 1 |"
    if args.torch_busy:
        header += " busy: torch |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    failures = []
    for name, idle, busy in rows:
        idle_ratio, busy_ratio = idle["auto"] / idle["torch"], busy["auto"] / busy["1"]
        line = (f"| {name} | {idle['auto']:.2f} | {idle['1']:.2f} | {idle['torch']:.2f} | {idle_ratio:.2f} | "
                f"{busy['auto']:.2f} | {busy['1']:.2f} | {busy_ratio:.2f} |")
        if args.torch_busy:
            line += f" {busy['torch']:.2f} |"
        print(line)
        if busy_ratio > BUSY_TARGET:
            failures.append(f"{name}: busy auto / 1 = {busy_ratio:.2f} > {BUSY_TARGET}")
        if "U-Net" in name and idle_ratio > IDLE_TARGET:
            failures.append(f"{name}: idle auto / torch = {idle_ratio:.2f} > {IDLE_TARGET}")
    print("\n" + ("targets met" if not failures else "targets missed:\n  " + "\n  ".join(failures)))


if __name__ == "__main__":
    main()
