"""CPU threads: each command's wall time with the default (``--threads auto``) against one thread and
against torch's own default (one thread per core), on an idle machine and with one core kept busy by
another process, all measured in one run.

The targets (issue 22): with one core busy, every command within 1.3x of its ``--threads 1`` time; on
an idle machine, the digits U-Net's training and sampling within 1.1x of torch's default. Each cell
is the median of ``--repeats`` interleaved runs of ``python -m diffcore ...`` (a fresh process, as a user runs it);
the busy core is a second Python process spinning in a loop.

    python benchmarks/threads.py                 # the table, about 20 minutes on two CPU cores
    python benchmarks/threads.py --quick         # shorter commands, one repeat: a smoke run
    python benchmarks/threads.py --torch-busy    # also torch's default with a core busy (slow: minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
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


def diffcore(*args: str, threads: str | None, cwd: Path) -> tuple[float, int | None]:
    """Seconds one ``python -m diffcore ARGS`` takes, with ``--threads`` when given (``None``: the
    default, with ``DIFFCORE_THREADS`` unset), and the thread count its JSON summary reports."""
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFCORE_THREADS", "OMP_NUM_THREADS")}
    argv = [sys.executable, "-m", "diffcore", *args] + (["--threads", threads] if threads else [])
    began = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    try:
        chosen = json.loads(proc.stdout.strip().splitlines()[-1]).get("threads")
    except (ValueError, IndexError, AttributeError):
        chosen = None
    return seconds, chosen


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
                          "--out", "s.npy", "--json"]),
        ("likelihood gmm2d", ["likelihood", str(ROOT / "examples/gmm2d.yaml"), "--data", "data.npy", "--json"]),
        ("compare gmm2d", ["compare", str(ROOT / "examples/gmm2d.yaml"), "--budgets", "5,10,20",
                           "--num", "500" if quick else "1000",
                           "--samplers", "euler_maruyama,ddim,dpm_solver_pp,heun"]),
        ("train moons MLP", ["train", str(ROOT / "examples/train_moons.yaml"), "--out", "moons-bench", "--no-preview",
                             "--set", f"train.steps={100 if quick else 500}"]),
        ("sample moons MLP", ["sample", "moons", "--num", "1000", "--out", "m.npy", "--json"]),
        ("train digits U-Net", ["train", str(ROOT / "examples/train_digits.yaml"), "--out", "digits-bench",
                                "--no-preview", "--set", f"train.steps={20 if quick else 100}"]),
        ("sample digits U-Net", ["sample", "digits", "--num", "64" if quick else "256", "--steps", "100",
                                 "--out", "d.npy", "--json"]),
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


def measure(argv: list[str], settings: dict[str, str | None], work: Path, repeats: int) -> dict[str, float]:
    """Median seconds of each setting (label -> ``--threads`` value), the settings interleaved round by
    round, each first in turn, so that drifting load and warm caches favour none; ``auto`` also
    reports the count it chose (``chosen``; NaN when it varied)."""
    times: dict[str, list[float]] = {label: [] for label in settings}
    chosen: set[int] = set()
    order = list(settings.items())
    for r in range(repeats):
        for label, threads in order[r % len(order):] + order[:r % len(order)]:  # each setting goes first in turn
            clear_runs(work)
            seconds, count = diffcore(*argv, threads=threads, cwd=work)
            times[label].append(seconds)
            if label == "auto" and count is not None:
                chosen.add(count)
    result = {label: statistics.median(values) for label, values in times.items()}
    result["chosen"] = float(min(chosen)) if len(chosen) == 1 else math.nan
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter commands and one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell, the median kept (default 3)")
    parser.add_argument("--torch-busy", action="store_true", help="also torch's default with a core busy")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch_default = str(cores)  # torch's default intra-op count is one thread per core
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.quick)
        rows = []
        for name, argv in commands(work, args.quick):
            idle = measure(argv, {"auto": None, "1": "1", "torch": torch_default}, work, repeats)
            with busy_core():
                busy = measure(argv, {"auto": None, "1": "1"}, work, repeats)
                if args.torch_busy:
                    busy["torch"] = measure(argv, {"torch": torch_default}, work, 1)["torch"]
            rows.append((name, idle, busy))
            print(f"  {name}: idle {idle}, busy {busy}", file=sys.stderr, flush=True)

    print(f"\nwall seconds, median of {repeats} interleaved runs; {cores} CPUs; torch's default = {torch_default} "
          "threads; busy = another process spinning on one core; (n): the count auto chose\n")
    header = "| command | idle: auto | idle: 1 | idle: torch | auto / torch | busy: auto | busy: 1 | auto / 1 |"
    if args.torch_busy:
        header += " busy: torch |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    failures = []
    for name, idle, busy in rows:
        idle_ratio, busy_ratio = idle["auto"] / idle["torch"], busy["auto"] / busy["1"]
        line = (f"| {name} | {idle['auto']:.2f}{_chosen(idle)} | {idle['1']:.2f} | {idle['torch']:.2f} | "
                f"{idle_ratio:.2f} | {busy['auto']:.2f}{_chosen(busy)} | {busy['1']:.2f} | {busy_ratio:.2f} |")
        if args.torch_busy:
            line += f" {busy['torch']:.2f} |"
        print(line)
        if busy_ratio > BUSY_TARGET:
            failures.append(f"{name}: busy auto / 1 = {busy_ratio:.2f} > {BUSY_TARGET}")
        if "U-Net" in name and idle_ratio > IDLE_TARGET:
            failures.append(f"{name}: idle auto / torch = {idle_ratio:.2f} > {IDLE_TARGET}")
    print("\n" + ("targets met" if not failures else "targets missed:\n  " + "\n  ".join(failures)))


def _chosen(cell: dict[str, float]) -> str:
    return "" if math.isnan(cell["chosen"]) else f" ({int(cell['chosen'])})"


if __name__ == "__main__":
    main()
