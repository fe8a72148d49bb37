"""Loop overhead: diffcore's ``euler_maruyama`` through ``Pipeline.sample`` against a hand-written
PyTorch loop of the same algorithm, timed in interleaved rounds.

The hand-written loop (:func:`hand_written_em`) is Euler-Maruyama on the reverse VP SDE of the
``gmm`` model's exact score (``common.py``) as a user would write it, once with diffcore's
counter-based noise (the same samples as the pipeline up to float rounding, so the time ratio is the
framework's loop overhead alone, against the target :data:`LOOP_TARGET`) and once with
``torch.randn``. Each line also gives the energy distance of both to ``p_0`` in units of its floor.

    python benchmarks/sampler_loop.py            # 200 steps, 7 rounds
    python benchmarks/sampler_loop.py --quick    # 100 steps, 3 rounds, fewer samples
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence

import torch
from common import (
    REFERENCE_2D,
    SEED,
    Mixture,
    Reference,
    Setup,
    interleaved,
    make_mixtures,
    run_script,
    timed,
)
from torch import Tensor

from diffcore.noise import NoiseSource

LOOP_TARGET = 1.05
"""Our Euler-Maruyama time over the hand-written loop's must be at most this."""


def hand_written_em(setup: Setup, num: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Euler-Maruyama on the reverse VP SDE as a user would write it: the VP ``beta`` inline, the
    ``gmm`` module as the score, no noise on the last step. With a ``generator``: ``torch.randn``
    prior and noise. Without: diffcore's counter-based noise, the same prior draw and step noise as
    ``euler_maruyama`` through the pipeline, so the two give the same samples up to float rounding
    and their time ratio is the framework's loop overhead alone."""
    model = setup.pipe.model
    params = setup.process.params
    beta_min, beta_max = params.beta_min, params.beta_max  # type: ignore[attr-defined]
    grid = torch.linspace(setup.process.T, setup.process.t_min, steps + 1, dtype=torch.float64).tolist()
    event = (setup.mixture.dim,)
    noise = None if generator is not None else NoiseSource.range(SEED, 0, num)

    def normal(step: int) -> Tensor:
        if noise is None:
            return torch.randn((num, *event), generator=generator)
        return noise.normal(event, step=step)

    if noise is None:
        x = torch.randn((num, *event), generator=generator)
    else:
        x = setup.process.prior_sample(noise, event, dtype=torch.float32)
    with torch.no_grad():
        for i in range(steps):
            t, h = grid[i], grid[i] - grid[i + 1]
            beta = beta_min + t * (beta_max - beta_min)
            score = model(x, torch.full((num,), t))
            x = x + (0.5 * beta * h) * x + (beta * h) * score
            if i < steps - 1:
                x = x + math.sqrt(beta * h) * normal(i)
    return x


def time_loops(mixture: Mixture, *, num: int, steps: int, rounds: int) -> None:
    """One line of :func:`run_loop_timing`."""
    setup = Setup.build(mixture)
    pipe = setup.pipe.with_sampler("euler_maruyama", steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    outputs: dict[str, Tensor] = {}

    def ours() -> None:
        outputs["ours"] = pipe.sample(num, seed=SEED).x

    def theirs() -> None:
        outputs["theirs"] = hand_written_em(setup, num, steps, generator)

    def same_noise() -> None:
        outputs["same_noise"] = hand_written_em(setup, num, steps)

    ours()  # warm-up
    theirs()
    same_noise()
    loops: list[Callable[[], None]] = [ours, theirs, same_noise]
    t_ours, t_theirs, t_same = interleaved([functools.partial(timed, fn) for fn in loops], rounds)
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_theirs, strict=True))
    overhead = statistics.median(a / b for a, b in zip(t_ours, t_same, strict=True))
    gap = float((outputs["ours"] - outputs["same_noise"]).abs().max())
    noise = NoiseSource.range(SEED, 0, num)
    noise_time = timed(lambda: [noise.normal((mixture.dim,), step=i) for i in range(steps)])
    ref = Reference(mixture, 2000)
    floor = ref.floor(num)
    ed_ours, ed_theirs = ref.energy_distance(outputs["ours"]), ref.energy_distance(outputs["theirs"])
    verdict = "ok" if overhead <= LOOP_TARGET else "SLOWER than target"
    print(f"  {mixture.name:<13} {num:>5} samples: ours {statistics.median(t_ours):.3f}s; hand-written with "
          f"the same counter-based noise {statistics.median(t_same):.3f}s, ratio {overhead:.3f} "
          f"({verdict}; max |difference| {gap:.1e}); hand-written with torch.randn "
          f"{statistics.median(t_theirs):.3f}s, ratio {ratio:.3f} "
          f"(counter-based noise alone {noise_time:.3f}s); "
          f"ED/floor vs p_0: ours {ed_ours / floor:.1f}, hand-written {ed_theirs / floor:.1f}")


def run_loop_timing(*, num: int, steps: int, rounds: int) -> None:
    """``euler_maruyama`` through ``Pipeline.sample`` against :func:`hand_written_em`, interleaved
    (A B, B A, ...); prints the median per-round time ratio (ours over hand-written)."""
    print(f"\n== Euler-Maruyama: Pipeline.sample vs a hand-written loop ({steps} steps, {rounds} interleaved rounds, "
          f"median of the per-round time ratios ours / hand-written; target <= {LOOP_TARGET} against the same "
          "algorithm with the same noise)")
    time_loops(REFERENCE_2D, num=num, steps=steps, rounds=rounds)
    time_loops(make_mixtures()[-1], num=num // 4, steps=steps, rounds=rounds)


def section(*, quick: bool) -> None:
    """:func:`run_loop_timing` at the sizes of ``--quick`` or of the full run."""
    run_loop_timing(num=2048 if quick else 4096, steps=100 if quick else 200, rounds=3 if quick else 7)


def main(argv: Sequence[str] | None = None) -> None:
    run_script(__doc__, "100 steps, 3 rounds, fewer samples", section, argv)


if __name__ == "__main__":
    main()
