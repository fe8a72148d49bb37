"""Multi-process runs under ``torchrun``: ``torch.distributed`` with gloo on CPU and nccl on CUDA.

``torchrun --nproc_per_node=N -m diffcore train SPEC`` trains with DistributedDataParallel: every rank
draws the same global batch indices and takes its own contiguous slice, so N processes see exactly the
batch (and the per-sample noise) of a single-process run and the averaged gradient is the same up to
floating-point summation order. Rank 0 alone writes checkpoints and images.

``torchrun ... -m diffcore sample`` splits the samples into chunks of ``--batch-size`` (default: an
equal share per rank); chunk ``c`` is drawn by rank ``c mod N`` and sent to rank 0, which writes the
file. Sample ``i`` depends only on ``(seed, i)`` and each chunk is computed as a single-process run
with the same ``--batch-size`` computes it, so the output is identical.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

from diffcore.errors import DiffcoreError, UsageError

if TYPE_CHECKING:
    from diffcore.condition import Condition
    from diffcore.pipeline import Pipeline
    from diffcore.sampler import Callback

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, on ``device``."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world(device: torch.device | None = None) -> World:
    """The world of an initialised process group (or a single process)."""
    device = device or torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), device)
    return World(0, 1, device)


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``WORLD_SIZE`` > 1) is set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the ``torchrun`` process group for the duration of a command (single process otherwise).

    The backend is nccl when ``device`` is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield current_world(device)
        return
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed; run a single process instead of torchrun")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield current_world(device)
    except BaseException:
        _settle(backend)
        raise
    finally:
        dist.destroy_process_group()


SETTLE_SECONDS = 30


def _settle(backend: str) -> None:
    """On the way out of a failed command, wait (at most :data:`SETTLE_SECONDS`) for the other ranks
    to leave too, so that no rank tears the group down under another one still using it: gloo then
    aborts the late rank ("terminate called without an active exception", exit by SIGABRT) after
    its clear message. When every rank fails together (the ranks agree on a failure, see
    :mod:`diffcore.training.rundir`), they meet here at once; a rank whose peers are gone or busy
    elsewhere gives up after the timeout."""
    if backend != "gloo":
        return  # nccl has no barrier with a timeout; a peer busy elsewhere would make it wait forever
    with contextlib.suppress(Exception):  # a peer that already left: nothing to wait for
        dist.monitored_barrier(timeout=timedelta(seconds=SETTLE_SECONDS))


def all_ranks_ok(ok: bool, world: World) -> bool:
    """Whether ``ok`` holds on every rank (an all-reduce of a flag; ``ok`` itself in one process).

    Every rank must call it at the same point: it is a collective, and it doubles as a barrier."""
    if not world.distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=world.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def on_every_rank(world: World, step: Callable[[], T], what: str) -> T:
    """Run ``step`` on every rank and agree on the outcome: if it raised a
    :class:`~diffcore.errors.DiffcoreError` or ``OSError`` on any rank, every rank raises (the rank
    that failed its own error; the others a :class:`~diffcore.errors.UsageError` pointing at it).
    ``what`` names the step in that message (``"reading the checkpoint"``)."""
    error: BaseException | None = None
    result: T | None = None
    try:
        result = step()
    except (DiffcoreError, OSError) as exc:
        error = exc
    if not all_ranks_ok(error is None, world):
        if error is not None:
            raise error
        raise UsageError(f"another process of this torchrun failed while {what}; its message (above) says why")
    return result  # type: ignore[return-value]


def on_main_rank(world: World, step: Callable[[], T], what: str) -> T | None:
    """Run ``step`` on rank 0 only (writes, the lock) and agree on the outcome as
    :func:`on_every_rank` does; returns its result on rank 0, ``None`` elsewhere."""
    return on_every_rank(world, step if world.is_main else (lambda: None), what)


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world.distributed:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over all ranks (the tensor itself in a single process)."""
    if not world.distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world.size


MAX_CHUNK_VALUES = 1 << 24
"""Most values (samples x values per sample) in one default chunk: about 64 MiB per float32 state,
so ``--num`` alone never asks for more memory than a machine has."""


def default_batch_size(num: int, shape: tuple[int, ...], world: World) -> int:
    """Samples per chunk when none is given: an equal share per rank, at most
    :data:`MAX_CHUNK_VALUES` values per chunk."""
    values = 1
    for size in shape:
        values *= size
    return max(1, min(-(-num // world.size), MAX_CHUNK_VALUES // values))


def sample_chunks(pipe: Pipeline, num: int, *, seed: int, world: World, batch_size: int | None = None,
                  latents: torch.Tensor | None = None, t_start: float | None = None,
                  cond: Condition | None = None,
                  callback: Callback | None = None) -> Iterator[tuple[int, torch.Tensor, int, int]]:
    """Yield ``(first index, samples on CPU, NFE, forward passes per sample)`` per chunk of ``num``
    samples, on the main process (other ranks yield nothing).

    Chunk ``c`` (of ``batch_size``, default :func:`default_batch_size`) is drawn by rank ``c mod N`` and
    sent to rank 0; each chunk is computed exactly as a single process with the same ``batch_size``
    computes it. ``latents`` ``(num, *shape)`` (states at ``T``, or at ``t_start``) and ``cond`` (``num``
    rows): sliced per chunk. ``callback`` sees every solver step of this rank's chunks.
    """
    batch = batch_size or default_batch_size(num, tuple(pipe.shape), world)
    for c, lo in enumerate(range(0, num, batch)):
        hi, owner = min(num, lo + batch), c % world.size
        if owner == world.rank:
            _, result = next(pipe.iter_samples(hi - lo, seed=seed, start=lo, device=world.device,
                                               latents=latents[lo:hi] if latents is not None else None,
                                               t_start=t_start, callback=callback,
                                               cond=cond.rows(lo, hi) if cond is not None else None))
            x, nfe, passes = result.x.detach(), result.nfe, result.forward_passes or 0
            if not world.is_main:
                dist.send(x.contiguous(), dst=0)
                dist.send(torch.tensor([nfe, passes], device=x.device), dst=0)
                continue
        elif world.is_main:
            x = torch.empty((hi - lo, *pipe.shape), device=world.device)
            counts = torch.zeros(2, dtype=torch.int64, device=world.device)
            dist.recv(x, src=owner)
            dist.recv(counts, src=owner)
            nfe, passes = (int(v) for v in counts.tolist())
        else:
            continue
        yield lo, x.cpu(), nfe, passes
