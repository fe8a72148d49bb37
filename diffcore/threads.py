"""How many CPU threads torch uses for diffcore's work: one rule for the command line and Python.

torch's default intra-op thread count is one per core. On a machine where another process keeps a
core busy, the threads of each parallel operation wait for the one that shares a core with that
process, for up to a scheduler time slice per operation. Measured on two cores at a load of 3 to 4,
torch's default against one thread: sampling the two-dimensional example 44.5 s against 3.8 s, its
likelihood 196 s against 7.6 s, sampling a small trained MLP 41 s against 0.9 s. With no other load,
a convolutional network gains from every core.

So the default, ``auto``, uses at most the cores that other processes leave idle when a call starts,
measured over :data:`PROBE_SECONDS` from the kernel's CPU counters (``/proc/stat`` on Linux; the
one-minute load average elsewhere), and never more than torch is set to (``torch.set_num_threads``,
``OMP_NUM_THREADS``, or torchrun's one thread per process). A number fixes the count; the
environment variable :data:`THREADS_ENV` sets the default for every call, and every entry point
(``Pipeline.sample``, :func:`diffcore.likelihood.log_likelihood`, the ``Trainer`` and each command's
``--threads``) takes the same values. Calls nested inside one that chose already keep its choice, and
a long training run measures again every :data:`RECHECK_SECONDS`.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Literal

from diffcore.errors import UsageError

Threads = int | Literal["auto"] | None
"""A thread request: a count, ``"auto"`` (see the module docstring) or ``None`` (the default:
:data:`THREADS_ENV`, else ``"auto"``)."""

THREADS_ENV = "DIFFCORE_THREADS"
"""Environment variable with the default thread request: a positive count or ``auto``."""
PROBE_SECONDS = 0.05
"""How long the CPU counters are watched to see which cores other processes use."""
CACHE_SECONDS = 2.0
"""A measurement is reused for this long, so many short calls measure once."""
RECHECK_SECONDS = 30.0
"""A long run (training) measures again after this long, and follows the machine's load."""

_state = threading.local()
_cache: tuple[float, float] | None = None  # (when, cores other processes kept busy)


def parse_threads(value: str | int | None) -> Threads:
    """A thread request from a command line or environment string: a positive count or ``auto``."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return _check(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"threads must be a positive number or 'auto', got {value!r}") from None
    return _check(count)


def _check(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 1024:
        raise UsageError(f"threads must be from 1 to 1024 or 'auto', got {value}")
    return value


def requested(threads: Threads = None) -> int | Literal["auto"]:
    """What ``threads`` asks for, with ``None`` read from :data:`THREADS_ENV` (default ``auto``)."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        try:
            threads = parse_threads(env) if env else "auto"
        except UsageError as exc:
            raise UsageError(f"{THREADS_ENV}: {exc}") from None
    result = parse_threads(threads)
    assert result is not None
    return result


def _torch_threads() -> int:
    import torch  # here, not at the top: the command line parses --threads before it imports torch

    return torch.get_num_threads()


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_ticks() -> tuple[int, int] | None:
    """``(busy, total)`` ticks since boot of the CPUs this process may run on (``/proc/stat``'s
    ``cpuN`` lines: on a shared host, other CPUs' load is not this process's business); ``None`` where
    unreadable."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = total = 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if allowed is not None and int(name[3:]) not in allowed:
                    continue
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(values) - values[3] - values[4]
                total += sum(values)
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


def busy_elsewhere(seconds: float = PROBE_SECONDS) -> float:
    """Cores' worth of CPU time that other processes used over the last ``seconds`` on the CPUs this
    process may run on (0 to :func:`cpu_count`): their busy time minus this process's own (its
    threads included)."""
    before, own_before, began = _cpu_ticks(), time.process_time(), time.monotonic()
    if before is None:
        return min(float(cpu_count()), os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    after, own_after, ended = _cpu_ticks(), time.process_time(), time.monotonic()
    if after is None or after[1] <= before[1]:
        return 0.0
    busy_share = (after[0] - before[0]) / (after[1] - before[1])  # of the allowed CPUs' time
    own = (own_after - own_before) / max(ended - began, 1e-9)  # cores' worth used by this process
    return max(0.0, busy_share * cpu_count() - own)


def auto_threads(ceiling: int | None = None, *, fresh: bool = False) -> int:
    """The ``auto`` count: the cores other processes leave idle (rounded to the nearest whole core),
    at least 1 and at most ``ceiling`` (default: torch's current setting). A measurement is reused for
    :data:`CACHE_SECONDS` unless ``fresh``."""
    global _cache
    ceiling = _torch_threads() if ceiling is None else ceiling
    if ceiling <= 1:
        return 1
    now = time.monotonic()
    if fresh or _cache is None or now - _cache[0] > CACHE_SECONDS:
        _cache = (now, busy_elsewhere())
    idle = cpu_count() - _cache[1]
    return max(1, min(ceiling, math.floor(idle + 0.5)))


@contextlib.contextmanager
def cpu_threads(threads: Threads = None) -> Iterator[int]:
    """Run the block with torch on the threads ``threads`` asks for, restoring torch's setting after.

    Inside another ``cpu_threads`` block (a ``Pipeline.sample`` inside ``diffcore sample`` or a
    training preview), ``None`` keeps the outer block's choice. Yields the count.
    """
    depth = getattr(_state, "depth", 0)
    if threads is None and depth:
        yield _torch_threads()
        return
    before = _torch_threads()
    request = requested(threads)
    count = auto_threads(before) if request == "auto" else request
    if count != before:
        _set_torch_threads(count)
    saved = (depth, getattr(_state, "ceiling", before), getattr(_state, "auto", False))
    _state.depth, _state.ceiling, _state.auto = depth + 1, before, request == "auto"
    try:
        yield count
    finally:
        _state.depth, _state.ceiling, _state.auto = saved
        if _torch_threads() != before:
            _set_torch_threads(before)


class Recheck:
    """Inside a :func:`cpu_threads` block that chose ``auto``, measures again every
    :data:`RECHECK_SECONDS` when called (a training step calls it), so a run that outlasts another
    process's load uses the cores it frees, and one that meets new load steps back."""

    def __init__(self, every: float = RECHECK_SECONDS) -> None:
        self.every = every
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every or not getattr(_state, "auto", False) or not getattr(_state, "depth", 0):
            return
        self.last = now
        count = auto_threads(_state.ceiling, fresh=True)
        if count != _torch_threads():
            _set_torch_threads(count)
