"""Guidance against exact answers: the errors of ``cfg``, ``classifier``, ``inpaint`` and ``dps`` on
Gaussian mixtures, whose class conditionals and posteriors under a linear observation are known in
closed form (``diffcore/testing/mixtures.py``).

The model is the analytic ``gmm`` (exact score), so every error is the guidance method's (plus the
sampler's discretisation and Monte-Carlo noise, shown by the ``exact`` rows). Problems:

- ``class 0``: ``p(x | y = 0)`` of the labelled 2-D mixture (``LABELLED_MIXTURE``), by ``cfg`` at
  ``w = 0`` over the labelled model and by ``classifier`` at scale 1 (the exact ``gmm`` classifier)
  over the unlabelled one: both exact in theory;
- ``inpaint``: the first coordinate of a 2-D mixture, the first 8 of a 16-D one, observed exactly
  (the replacement method: an approximation);
- ``dps``: the same observations read as noisy (``noise_std`` s), and ``y = A x + n`` with a random
  ``A`` (4 x 16) (Chung et al. 2023: an approximation);
- ``cfg+inpaint``: class 0 of the labelled mixture with its second coordinate observed.

Each is run under ``vp`` and ``ve`` (``sigma_max`` 100) with a stochastic sampler
(``euler_maruyama``) and a deterministic one (``ddim``). Columns: ``ED`` the energy distance to as
many exact draws, ``ED/fl`` in units of its floor (the RMS energy distance between two exact draw
sets: about 1 for an exact sampler), ``wErr`` the largest error of the component weights, ``meanErr``
the norm of the mean's error, ``fit`` the RMS of ``A x - y``. The ``exact`` row is fresh exact draws;
``unconditional`` the prior's exact draws (what ignoring the condition gives; for ``cfg+inpaint``,
``without the class``: the exact posterior of the observation alone).

    python benchmarks/guidance_mixtures.py           # 5000 samples, 1000 / 100 steps: minutes on one CPU thread
    python benchmarks/guidance_mixtures.py --quick   # 1000 samples, 250 / 50 steps
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SEED, run_script

from diffcore import Pipeline
from diffcore.condition import Condition
from diffcore.errors import DiffcoreError
from diffcore.testing.mixtures import (
    LABELLED_MIXTURE,
    Errors,
    LinearObservation,
    Mixture,
    errors,
    inpainting_2d,
    inpainting_16d,
    inpainting_posterior,
    labelled_inpainting_2d,
    matrix_16d,
)

UNLABELLED = {k: v for k, v in LABELLED_MIXTURE.items() if k != "labels"}
PROCESS_PARAMS = {"ve": {"sigma_max": 100.0}}
"""As in the tests: ve's default sigma_max of 50 leaves its prior about 0.4% narrow for these mixtures,
an error deterministic samplers keep (tests/test_samplers.py)."""
DPS_NOISE = (0.2, 0.1)
"""``noise_std`` of the dps rows: 0.2 (what the tests use) and 0.1 (stiffer: see the step dependence)."""


@dataclass
class Case:
    """One problem: the exact answer, and the guided pipelines (method label, model params, guidance)."""

    name: str
    exact: Mixture
    prior: Mixture
    condition: Callable[[int], Condition]
    methods: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]
    observation: LinearObservation | None = None
    prior_label: str = "unconditional"


def cases(folder: Path) -> list[Case]:
    """Every problem of the table; a dps matrix is saved under ``folder``."""
    zeros: Callable[[int], Condition] = lambda n: Condition(labels=torch.zeros(n, dtype=torch.long))  # noqa: E731
    classifier = {"type": "classifier", "scale": 1.0, "classifier": {"type": "gmm", **LABELLED_MIXTURE}}
    out = [Case("class 0 | labelled 2-D", Mixture.class_conditional(LABELLED_MIXTURE, 0),
                Mixture.diagonal(LABELLED_MIXTURE), zeros,
                [("cfg w=0", LABELLED_MIXTURE, [{"type": "cfg", "scale": 0.0}]),
                 ("classifier s=1", UNLABELLED, [classifier])])]
    for problem in (inpainting_2d(), inpainting_16d()):
        out.append(Case(f"inpaint {problem.name}", problem.posterior(), problem.prior, problem.condition,
                        [("inpaint", problem.params, [{"type": "inpaint"}])], problem))
    for s in DPS_NOISE:
        for problem in (inpainting_2d().with_noise(s), inpainting_16d().with_noise(s)):
            out.append(Case(f"dps mask {problem.name} s={s}", problem.posterior(), problem.prior, problem.condition,
                            [("dps", problem.params, [{"type": "dps", "noise_std": s}])], problem))
        problem = matrix_16d(s)
        path = folder / f"A_{s}.npy"
        np.save(path, problem.matrix.numpy())
        out.append(Case(f"dps {problem.name} s={s}", problem.posterior(), problem.prior, problem.condition,
                        [("dps", problem.params, [{"type": "dps", "noise_std": s, "matrix": str(path)}])], problem))
    both = labelled_inpainting_2d()
    out.append(Case(f"class 0 + inpaint {both.name}",
                    inpainting_posterior(Mixture.class_conditional(LABELLED_MIXTURE, 0), both.mask,  # type: ignore[arg-type]
                                         both.full_observed()),
                    both.posterior(), lambda n: both.condition(n, torch.zeros(n, dtype=torch.long)),
                    [("cfg w=0 + inpaint", LABELLED_MIXTURE, [{"type": "cfg", "scale": 0.0}, {"type": "inpaint"}])],
                    both, "without the class"))
    return out


def row(label: str, extra: str, e: Errors) -> str:
    fit = "" if e.residual_rms is None else f"{e.residual_rms:>8.3f}"
    return (f"  {label:<20} {extra:<34} {e.energy_distance:>10.2e} {e.ed_in_floors:>8.1f} {e.weight_error:>6.3f} "
            f"{e.mean_error:>8.3f} {fit}")


def run_guidance(*, num: int, samplers: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Every case under vp and ve with each sampler: the errors against the exact answer."""
    print(f"seed {SEED} (sampling), exact draws seeds 10000 (reference) and 20000/30000 (rows exact/unconditional); "
          f"{num} samples per row; samplers {', '.join(f'{n} {p}' for n, p in samplers)}")
    header = (f"  {'method':<20} {'process sampler NFE passes sec':<34} {'ED':>10} {'ED/fl':>8} {'wErr':>6} "
              f"{'meanErr':>8} {'fit':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for case in cases(Path(folder)):
            weights = ", ".join(f"{w:.3f}" for w in case.exact.component_weights.tolist())
            print(f"\n== {case.name}: exact weights {weights}")
            print(header)
            exact = case.exact.sample_data(num, torch.Generator().manual_seed(20_000))[0]
            print(row("exact", "", errors(exact, case.exact, case.observation)))
            prior = case.prior.sample_data(num, torch.Generator().manual_seed(30_000))[0]
            print(row(case.prior_label, "", errors(prior, case.exact, case.observation)))
            for label, params, guidance in case.methods:
                for process in ("vp", "ve"):
                    for sampler, sampler_params in samplers:
                        pipe = Pipeline.from_spec({"process": {"type": process, **PROCESS_PARAMS.get(process, {})},
                                                   "model": {"type": "gmm", **params},
                                                   "sampler": {"type": sampler, **sampler_params},
                                                   "guidance": guidance})
                        what = f"{process} {sampler}"
                        try:
                            start = time.perf_counter()
                            result = pipe.sample(num, seed=SEED, cond=case.condition(num))
                            seconds = time.perf_counter() - start
                        except DiffcoreError as exc:  # reported, not fatal: dps can diverge
                            print(f"  {label:<20} {what:<34} FAILED ({type(exc).__name__}: {str(exc)[:90]})")
                            continue
                        extra = f"{what} {result.nfe} {result.forward_passes} {seconds:.1f}s"
                        print(row(label, extra, errors(result.x, case.exact, case.observation)), flush=True)


def section(*, quick: bool) -> None:
    """:func:`run_guidance` at the sizes of ``--quick`` or of the full run."""
    if quick:
        run_guidance(num=1000, samplers=[("euler_maruyama", {"steps": 250}), ("ddim", {"steps": 50})])
    else:
        run_guidance(num=5000, samplers=[("euler_maruyama", {"steps": 1000}), ("ddim", {"steps": 100})])


def main(argv: Sequence[str] | None = None) -> None:
    run_script(__doc__, "1000 samples, 250 / 50 steps", section, argv)


if __name__ == "__main__":
    main()
