"""Training throughput: diffcore's :class:`~diffcore.training.Trainer` against a hand-written PyTorch loop.

Both sides train the same network (built by the registry from the same seed, so the modules and
initial weights are identical) with the same AdamW settings, linear warm-up, gradient clipping,
EMA of the weights (with the same decay warm-up) and batch size, on the denoising score-matching
loss of the VP SDE. The hand-written loop is what a user would write without the framework:
``torch.randint`` batches, ``torch.rand``/``torch.randn`` times and noise, the VP ``alpha``/``sigma``
inline, the eps-prediction form of the loss and ``torch._foreach_lerp_`` for the EMA. Our side is
:meth:`Trainer.train_step` with the ``dsm`` objective (counter-based noise, ``to_score``,
``AveragedModel``).

After a warm-up the two loops run in interleaved blocks of ``N`` steps (A B, B A, A B, ...) so that
drifting machine load hits both alike; the table gives the median steps per second of each side
and the median of the per-round ratios, against the target of 0.95.

    python benchmarks/training.py            # every configuration, about two minutes on two CPU cores
    python benchmarks/training.py --quick    # fewer and shorter blocks, a smoke run
    python benchmarks/training.py --profile  # also print where each loop spends its time
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from common import interleaved
from torch import Tensor, nn

from diffcore import get_registry
from diffcore.model import ScoreModel
from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture
from diffcore.training import TrainConfig, Trainer

TARGET = 0.95
"""Our steps per second over the hand-written loop's must be at least this."""

REGISTRY = get_registry()


@dataclass(frozen=True)
class BenchConfig:
    """One row of the table: a network (registry params), its data and the batch size."""

    name: str
    model: dict[str, Any]
    data: Callable[[], Tensor]
    batch_size: int


def mixture_data() -> Tensor:
    """20 000 draws ``(N, 2)`` of the reference 2-D Gaussian mixture."""
    return sample_mixture(REFERENCE_MIXTURE, 20_000, torch.Generator().manual_seed(0)).float()


def digits_data() -> Tensor:
    """The scikit-learn 8x8 digits ``(1797, 1, 8, 8)`` scaled to ``[-1, 1]``."""
    data, _ = REGISTRY.build("dataset", "digits", scale="minus_one_one").split("train")  # type: ignore[attr-defined]
    assert isinstance(data, Tensor)
    return data


MLP_2D = {"type": "mlp", "shape": [2], "hidden": 128, "depth": 3, "output": "eps"}
DIGITS_UNET = {"type": "unet", "in_channels": 1, "image_size": 8, "channels": 16, "output": "eps"}
CONFIGS = [
    BenchConfig("mlp-2d b256", MLP_2D, mixture_data, 256),
    BenchConfig("mlp-2d b4096", MLP_2D, mixture_data, 4096),
    BenchConfig("unet-digits b128", DIGITS_UNET, digits_data, 128),
]


def build_model(params: dict[str, Any], device: torch.device) -> ScoreModel:
    """The network of ``params``, initialised from seed 0 (both loops get identical weights)."""
    params = dict(params)
    torch.manual_seed(0)
    model = REGISTRY.build("model", params.pop("type"), **params)
    assert isinstance(model, ScoreModel)
    return model.to(device)


class HandWrittenLoop:
    """Denoising score matching on the VP SDE written out in plain PyTorch.

    One :meth:`train_step` does the same work as :meth:`Trainer.train_step`: draw a batch, draw
    times ``t ~ U[t_min, T]`` and noise, regress the network's eps on the noise (the sigma^2-weighted
    DSM loss of an eps network), AdamW with linear warm-up and gradient clipping, then the EMA
    update ``ema <- d ema + (1 - d) w`` with ``d = min(decay, (1 + n) / (10 + n))``.
    """

    def __init__(self, model: nn.Module, data: Tensor, config: TrainConfig, *, beta_min: float = 0.1,
                 beta_max: float = 20.0, t_min: float = 1e-3, T: float = 1.0) -> None:
        self.model, self.data, self.config = model, data, config
        model.train()
        self.beta_min, self.beta_max, self.t_min, self.T = beta_min, beta_max, t_min, T
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(config.warmup, 1)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, lambda k: min(1.0, (k + 1) / warmup))
        self.params: list[Tensor] = list(model.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.num_averaged = 1
        self.losses: list[float] = []

    def train_step(self) -> float:
        """One optimiser step on a fresh batch; returns the loss."""
        cfg, data = self.config, self.data
        x0 = data[torch.randint(0, data.shape[0], (cfg.batch_size,), device=data.device)]
        t = torch.rand(cfg.batch_size, device=data.device) * (self.T - self.t_min) + self.t_min
        eps = torch.randn_like(x0)
        integrated_beta = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        shape = (-1,) + (1,) * (x0.ndim - 1)
        alpha = torch.exp(-0.5 * integrated_beta).view(shape)
        sigma = torch.sqrt(-torch.expm1(-integrated_beta)).view(shape)
        prediction = self.model(alpha * x0 + sigma * eps, t)
        loss = (prediction - eps).square().flatten(1).sum(1).mean()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimiser.step()
        self.schedule.step()
        n = self.num_averaged
        decay = min(cfg.ema_decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - decay)
        self.num_averaged += 1
        self.losses.append(loss.item())
        return self.losses[-1]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(step: Callable[[], float], steps: int, device: torch.device) -> float:
    """Run ``steps`` calls of ``step`` and return their rate."""
    _synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronise(device)
    return steps / (time.perf_counter() - start)


@dataclass
class Row:
    """Measured rates (steps/s) of both loops, one entry per block."""

    name: str
    steps: int
    ours: list[float]
    baseline: list[float]

    @property
    def ratio(self) -> float:
        """Median over rounds of ours / baseline (each round pairs two adjacent blocks)."""
        return statistics.median(a / b for a, b in zip(self.ours, self.baseline, strict=True))

    @property
    def passed(self) -> bool:
        return self.ratio >= TARGET


def make_loops(cfg: BenchConfig, device: torch.device) -> tuple[Trainer, HandWrittenLoop]:
    """Both loops on their own copy of the network, data and optimiser."""
    data = cfg.data().to(device)
    train = TrainConfig(steps=10**9, batch_size=cfg.batch_size, lr=2e-3, warmup=100)
    process = REGISTRY.build("process", "vp")
    objective = REGISTRY.build("objective", "dsm")
    ours = Trainer(build_model(cfg.model, device), objective, process, data, train)  # type: ignore[arg-type]
    p = process.params
    baseline = HandWrittenLoop(build_model(cfg.model, device), data, train, beta_min=p.beta_min,  # type: ignore[attr-defined]
                               beta_max=p.beta_max, t_min=p.t_min, T=p.T)  # type: ignore[attr-defined]
    return ours, baseline


def measure(cfg: BenchConfig, device: torch.device, *, block_seconds: float, rounds: int) -> Row:
    """Warm both loops up, size the blocks to about ``block_seconds``, then time ``rounds``
    interleaved blocks of each."""
    ours, baseline = make_loops(cfg, device)
    loops = (ours.train_step, baseline.train_step)
    for step in loops:  # first steps: allocations, optimiser state
        steps_per_second(step, 3, device)
    rate = min(steps_per_second(step, 3, device) for step in loops)
    steps = max(3, round(rate * block_seconds))
    for step in loops:
        steps_per_second(step, steps, device)
    ours_rates, baseline_rates = interleaved([functools.partial(steps_per_second, step, steps, device)
                                              for step in loops], rounds)
    return Row(cfg.name, steps, ours_rates, baseline_rates)


def profile(cfg: BenchConfig, device: torch.device, *, steps: int, top: int = 15) -> None:
    """Print the functions where each loop spends most of its own time (cProfile, ``tottime``)."""
    ours, baseline = make_loops(cfg, device)
    for label, step in (("diffcore Trainer", ours.train_step), ("hand-written", baseline.train_step)):
        steps_per_second(step, 10, device)
        profiler = cProfile.Profile()
        profiler.enable()
        steps_per_second(step, steps, device)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
        print(f"\n--- {cfg.name}: {label}, {steps} steps ---")
        print(out.getvalue().strip())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; the exit status is 1 if a configuration misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter blocks (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", default=None, help="run only the configurations whose name contains this")
    parser.add_argument("--profile", action="store_true", help="also profile both loops on every configuration")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds, block_seconds = (4, 0.3) if args.quick else (10, 1.0)
    configs = [c for c in CONFIGS if args.only is None or args.only in c.name]
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{rounds} interleaved rounds of blocks of about {block_seconds:g} s per loop and configuration")
    rows = []
    for cfg in configs:
        rows.append(measure(cfg, device, block_seconds=block_seconds, rounds=rounds))
        if args.profile:
            profile(cfg, device, steps=rows[-1].steps)
    print(f"\n{'config':<18} {'ours steps/s':>13} {'baseline steps/s':>17} {'ratio':>7}  target {TARGET}")
    for row in rows:
        print(f"{row.name:<18} {statistics.median(row.ours):>13.1f} {statistics.median(row.baseline):>17.1f} "
              f"{row.ratio:>7.3f}  {'PASS' if row.passed else 'FAIL'}  ({row.steps} steps per block)")
    return 0 if all(row.passed for row in rows) else 1

if __name__ == "__main__":
    raise SystemExit(main())
