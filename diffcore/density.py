"""Log-likelihood of a data set under a pipeline's model: raw units, dequantisation, bits per dimension,
chunks and ranks. The mathematics is :func:`diffcore.likelihood.log_likelihood`; this module is what
``diffcore likelihood`` and :func:`data_log_likelihood` add around it.

**Units.** A model trained on scaled data (``x_model = (x_raw - shift) * mult``, the data section's
scaling) has density ``p_model``; the data's own density is

    log p_raw(x) = log p_model((x - shift) * mult) + D log |mult|,

the change of variables of the affine map (``D`` values per sample). Results are reported in raw
units, so they do not depend on how the model was trained to see the data.

**Discrete data.** Data on a grid of spacing ``b`` (``bin_width``: 1 for integer pixel levels) have
probabilities, not densities. Uniform dequantisation (Theis et al. 2016, "A note on the evaluation of
generative models"; Ho et al. 2019, "Flow++", Sec. 3.1) bounds the probability of a bin ``B(x)``
(the cube of side ``b`` centred on ``x``) by Jensen's inequality:

    log P(x) = log int_{B(x)} p_raw(v) dv >= E_{u ~ U(-1/2, 1/2)^D} [log p_raw(x + b u)] + D log b.

With ``K`` draws ``u_k`` per sample the reported ``log P(x)`` is the mean of the ``K`` terms (an unbiased
estimate of that bound); the log-mean-exp of the terms, ``log (1/K sum_k p_raw(x + b u_k) b^D)``, is
also reported (``log_prob_iw``): a tighter bound in expectation (the importance-weighted bound of
Burda et al. 2016 with the uniform as proposal), equal to the first at ``K = 1``. Bits per dimension
are ``bpd = -log P(x) / (D log 2)``: for 8-bit images (``b = 1`` on ``0..255``) this is the usual
figure, whatever scaling the model was trained with (the ``D log |mult|`` term carries it).

**Chunks and ranks.** Rows are solved in chunks of ``batch_size`` (default :data:`DEFAULT_BATCH_SIZE`,
independent of the number of processes); under ``torchrun`` chunk ``c`` is solved by rank ``c mod N``
with no communication at all during the solves (an adaptive solver takes a different number of steps
on each rank, so a collective inside it would hang), and one all-reduce at the end gathers the rows.
Each chunk is computed as a single process computes it (its probes and dequantisation noise depend
only on the seed and the row index), so the result equals the single-process one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from diffcore.condition import Condition
from diffcore.distributed import World, current_world
from diffcore.errors import StepLimitError, UsageError
from diffcore.inputs import load_npy
from diffcore.likelihood import LikelihoodConfig, LikelihoodResult, log_likelihood
from diffcore.model import score_function
from diffcore.noise import NoiseSource
from diffcore.pipeline import Pipeline
from diffcore.utils import atomic_write, progress_bar

if TYPE_CHECKING:
    from diffcore.spec import PipelineSpecBase

DEFAULT_BATCH_SIZE = 256
"""Rows per solve when none is given: the same for any number of processes, so that a ``torchrun``
result equals the single-process one (an adaptive solver's steps depend on the rows it solves together)."""
LOG2 = math.log(2.0)


@dataclass(frozen=True)
class DataLikelihood:
    """What :func:`data_log_likelihood` returns for ``n`` rows of ``D`` values.

    - ``log_prob`` ``(n,)`` float64 nats in the data's raw units: ``log p(x)`` (continuous data), or
      the dequantisation bound on ``log P(x)`` (discrete data; the mean over the ``K`` draws);
    - ``log_prob_iw`` ``(n,)``: the log-mean-exp over the draws (discrete data), else ``None``;
    - ``stderr`` ``(n,)``: the standard error of ``log_prob`` over Hutchinson's probes and the
      dequantisation draws together (``std / sqrt(K * probes)``) when there are several, else ``None``;
    - ``bpd`` ``(n,)``: ``-log_prob / (D log 2)`` for discrete data, else ``None``;
    - ``nfe``: the most score evaluations of one solve; ``solves``: the ODE solves run (all ranks);
      ``seconds``: wall time; ``bin_width``, ``scaling``, ``draws`` as used.
    """

    log_prob: Tensor
    log_prob_iw: Tensor | None
    stderr: Tensor | None
    bpd: Tensor | None
    dim: int
    nfe: int
    solves: int
    seconds: float
    draws: int
    bin_width: float | None
    scaling: tuple[float, float] | None
    config: LikelihoodConfig

    def summary(self) -> dict[str, Any]:
        """The JSON summary of ``diffcore likelihood --json``: means over the rows."""
        n = self.log_prob.shape[0]
        out: dict[str, Any] = {
            "num": n, "dim": self.dim, "mean_log_prob": float(self.log_prob.mean()),
            "nats_per_dim": float(-self.log_prob.mean() / self.dim),
            "standard_error_of_mean": float(self.log_prob.std() / math.sqrt(n)) if n > 1 else None,
            "bpd": float(self.bpd.mean()) if self.bpd is not None else None,
            "bpd_iw": float(-self.log_prob_iw.mean() / (self.dim * LOG2)) if self.log_prob_iw is not None else None,
            "discrete": self.bin_width is not None, "bin_width": self.bin_width, "dequantization_draws": self.draws,
            "scaling": list(self.scaling) if self.scaling is not None else None,
            "trace": self.config.trace, "probes": self.config.probes if self.config.trace == "hutchinson" else 0,
            "method": self.config.method, "rtol": self.config.rtol, "atol": self.config.atol,
            "nfe": self.nfe, "solves": self.solves, "seconds": round(self.seconds, 4),
        }
        return out


def _dequantization_noise(seed: int, lo: int, hi: int, shape: tuple[int, ...], draw: int,
                          device: torch.device) -> Tensor:
    """Uniforms ``(hi - lo, *shape)`` in ``(-1/2, 1/2)`` for rows ``lo .. hi - 1``, draw ``draw``: a
    row's noise depends only on ``(seed, row, draw)``."""
    noise = NoiseSource.range(seed, lo, hi, device=device)
    return noise.uniform(shape, step=draw, stream="dequantize", dtype=torch.float64) - 0.5


def _chunks(n: int, batch: int, world: World) -> Iterator[tuple[int, int]]:
    for c, lo in enumerate(range(0, n, batch)):
        if c % world.size == world.rank:
            yield lo, min(n, lo + batch)


def data_log_likelihood(pipe: Pipeline, x: Tensor, *, config: LikelihoodConfig | None = None, seed: int = 0,
                        batch_size: int | None = None, scaling: tuple[float, float] | None = None,
                        bin_width: float | None = None, labels: Tensor | None = None, world: World | None = None,
                        progress: bool = False) -> DataLikelihood:
    """``log p(x)`` per row of the data ``x`` ``(n, *pipe.shape)`` in raw units under ``pipe``'s model
    (its own score: guidance does not define a density and is not applied), by the probability-flow
    ODE (module docstring and :func:`diffcore.likelihood.log_likelihood`).

    Args:
        pipe: the pipeline (process and model; a trained checkpoint's, or an analytic one).
        x: ``(n, *shape)`` raw data (the model sees ``(x - shift) * mult``).
        config: trace, probes, solver and dequantisation draws (:class:`LikelihoodConfig`);
            ``config.bin_width`` overrides ``bin_width``.
        seed: seeds Hutchinson's probes and the dequantisation noise (a row's depend only on the
            seed and the row index).
        batch_size: rows per ODE solve (default :data:`DEFAULT_BATCH_SIZE`).
        scaling: ``(shift, mult)`` of the data to the model's range (``None``: the identity).
        bin_width: the spacing of discrete data in raw units (``None``: continuous data).
        labels: ``(n,)`` class labels for a class-conditional model (``log p(x | y)``); ``None``: its
            null label (the unconditional density it learned with label dropout).
        world: the ranks (default: the current process group, if any, on the model's device).
        progress: show a progress bar over the solves on stderr (main process).
    """
    cfg = config if config is not None else LikelihoodConfig()
    bin_width = cfg.bin_width if cfg.bin_width is not None else bin_width
    if world is None:
        world = current_world(next((p.device for p in pipe.model.parameters()), torch.device("cpu")))
    _check_data(pipe, x, labels)
    n, dim = x.shape[0], math.prod(x.shape[1:])
    shift, mult = scaling if scaling is not None else (0.0, 1.0)
    log_det = dim * math.log(abs(mult))
    discrete = bin_width is not None
    width = bin_width if bin_width is not None else 0.0
    bin_log_volume = dim * math.log(width) if discrete else 0.0  # log b^D: densities to bin probabilities
    draws = cfg.dequantize if discrete else 1
    batch = batch_size or DEFAULT_BATCH_SIZE
    process, device = pipe.process, world.device
    conditional = score_function(pipe.model, process)
    dtype = _model_dtype(pipe)

    per_draw = torch.zeros(n, draws, dtype=torch.float64, device=device)
    spread = torch.zeros(n, dtype=torch.float64, device=device)  # sum of squared deviations over draws x probes
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # most NFE of one solve, solves
    mine = list(_chunks(n, batch, world))
    todo = len(mine) * draws
    bar = progress_bar(todo, "likelihood", "solve", enabled=progress and world.is_main and todo > 1)
    began = time.perf_counter()
    for lo, hi in mine:
        rows = x[lo:hi].to(device=device, dtype=torch.float64)
        cond = Condition.of(labels[lo:hi].to(device) if labels is not None else None)
        values: list[Tensor] = []
        for k in range(draws):
            raw = rows + width * _dequantization_noise(seed, lo, hi, tuple(x.shape[1:]), k, device) \
                if discrete else rows
            model_x = (raw - shift) * mult
            try:
                result = log_likelihood(lambda z, t, c=cond: conditional(z, t, c), process, model_x.to(dtype),
                                        options=cfg, seed=seed, start=lo, draw=k)
            except StepLimitError as exc:
                raise StepLimitError(f"rows {lo} to {hi - 1}: {exc}. {_largest_rows(model_x, lo)}", t=exc.t) from exc
            counts[0] = max(int(counts[0]), result.nfe)
            counts[1] += 1
            values.append(_per_probe(result) + log_det + bin_log_volume)
            if bar is not None:
                bar.update(1)
        every = torch.cat(values, dim=1)  # (rows, draws * probes)
        per_draw[lo:hi] = torch.stack([v.mean(1) for v in values], dim=1)
        spread[lo:hi] = ((every - every.mean(1, keepdim=True)) ** 2).sum(1) if every.shape[1] > 1 else 0.0
    if bar is not None:
        bar.close()
    if world.distributed:  # one collective, after every solve: each row was filled by exactly one rank
        dist.all_reduce(per_draw)
        dist.all_reduce(spread)
        nfe = counts[:1].clone()
        dist.all_reduce(nfe, op=dist.ReduceOp.MAX)
        solves = counts[1:].clone()
        dist.all_reduce(solves)
        counts = torch.cat([nfe, solves])
    per_draw, spread = per_draw.cpu(), spread.cpu()
    samples = draws * (cfg.probes if cfg.trace == "hutchinson" else 1)
    log_prob = per_draw.mean(1)
    stderr = (spread / (samples - 1)).sqrt() / math.sqrt(samples) if samples > 1 else None
    iw = torch.logsumexp(per_draw, dim=1) - math.log(draws) if discrete else None
    return DataLikelihood(
        log_prob=log_prob, log_prob_iw=iw, stderr=stderr, bpd=-log_prob / (dim * LOG2) if discrete else None,
        dim=dim, nfe=int(counts[0]), solves=int(counts[1]), seconds=time.perf_counter() - began, draws=draws,
        bin_width=bin_width, scaling=scaling, config=cfg)


def _per_probe(result: LikelihoodResult) -> Tensor:
    """``(rows, probes)``: each Hutchinson probe's estimate, or the exact value as one column."""
    return result.per_probe if result.per_probe is not None else result.log_prob[:, None]


def _model_dtype(pipe: Pipeline) -> torch.dtype:
    """The floating dtype of the model's parameters or buffers (float32 when it has none)."""
    tensors = [*pipe.model.parameters(), *pipe.model.buffers()]
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _largest_rows(model_x: Tensor, lo: int, count: int = 3) -> str:
    """The rows of ``model_x`` (model range, first row ``lo``) farthest from the origin, named for an
    error: the usual cause of a stiff solve is a row far outside the data's range."""
    norms = model_x.reshape(model_x.shape[0], -1).abs().amax(1)
    top = torch.topk(norms, min(count, norms.numel())).indices.tolist()
    named = ", ".join(f"row {lo + i} (largest |value| {float(norms[i]):.3g})" for i in top)
    return (f"Farthest from the data's range (the model's range, where data lie within a few units): {named}; "
            "drop or fix such rows, or set likelihood.max_steps")


def _check_data(pipe: Pipeline, x: Tensor, labels: Tensor | None) -> None:
    if not isinstance(x, Tensor) or x.ndim < 1 or tuple(x.shape[1:]) != tuple(pipe.shape):
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise UsageError(f"the data have {got} but the model's samples have shape {tuple(pipe.shape)}; give an "
                         f"array (n, {', '.join(map(str, pipe.shape))}), one sample per row")
    if x.shape[0] == 0:
        raise UsageError("the data have no rows")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        raise UsageError(f"{bad} of the {x.shape[0]} data rows hold NaN or Inf")
    if labels is not None:
        if not pipe.model.conditional:
            raise UsageError(f"labels were given but model {pipe.model.name!r} is not class-conditional; drop them")
        if tuple(labels.shape) != (x.shape[0],):
            raise UsageError(f"labels have shape {tuple(labels.shape)}; give one label per data row, ({x.shape[0]},)")


def load_data(data: Path, labels: Path | None = None) -> tuple[Tensor, Tensor | None]:
    """The rows of a ``.npy`` data file ``(n, *shape)`` (numbers; never unpickled) as float64, and the
    ``(n,)`` integer labels of an optional ``.npy``, for ``diffcore likelihood``."""
    x = torch.from_numpy(load_npy(data, what="--data", kinds="fiub").astype(np.float64))
    if labels is None:
        return x, None
    return x, torch.from_numpy(load_npy(labels, what="--labels", kinds="iu").astype(np.int64))


def save_log_prob(out: Path, log_prob: Tensor) -> Path:
    """Write ``log p(x)`` ``(n,)`` float64 to the ``.npy`` file ``out``, atomically."""
    return atomic_write(out, lambda handle: np.save(handle, log_prob.numpy(), allow_pickle=False))


def data_bin_width(spec: PipelineSpecBase) -> float | None:
    """The bin width (raw units) of the spec's data set when its data are discrete, else ``None``."""
    if getattr(spec, "data", None) is None:
        return None
    from diffcore.registry import get_registry

    kind, params = spec.component("data")
    width = getattr(get_registry().build("dataset", kind, **params), "bin_width", None)
    return float(width) if width is not None else None
