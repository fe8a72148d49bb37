"""Bits per dimension of the digits model (``examples/train_digits.yaml``) on the held-out digits, next
to a Gaussian fitted to the training digits (a sanity floor any density model must beat).

The data are scikit-learn's 8x8 digits: integer grey levels 0..16 (bin width 1), 30% held out (539
digits). The model was trained on them dequantised and scaled to [-1, 1]; ``diffcore likelihood``
reports ``log P(x)`` of the raw integer digits (the scaling's log-determinant included) by uniform
dequantisation, and bits per dimension ``-log P(x) / (64 log 2)`` (docs: "Likelihood").

- ``model, exact``: the exact Jacobian trace on the first ``--exact-rows`` held-out digits (64 vector-
  Jacobian products per evaluation);
- ``model, hutchinson``: every held-out digit with ``--probes`` Rademacher probes (each row's
  standard error is printed as the RMS over rows);
- ``gaussian``: a full-covariance Gaussian fitted (maximum likelihood) to the dequantised training
  digits in raw units; its dequantisation bound ``E_u log N(x + u) = log N(x) - tr(S^-1) / 24`` is
  exact, so this row has no Monte Carlo error. On the same rows as the model's rows.

    python -m diffcore train examples/train_digits.yaml --out runs/digits
    python benchmarks/likelihood_digits.py --exact-rows 8 --probes 1   # about 12 minutes on one CPU thread
    python benchmarks/likelihood_digits.py --save-data heldout.npy   # also the CLI's input:
    diffcore likelihood runs/digits --data heldout.npy --json --set likelihood.trace=hutchinson
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffcore.density import DataLikelihood, data_bin_width, data_log_likelihood
from diffcore.likelihood import LikelihoodConfig
from diffcore.registry import get_registry
from diffcore.sampling import data_scaling, load_for_sampling

ROOT = Path(__file__).resolve().parents[1]
LOG2 = math.log(2.0)


def gaussian_bpd(train: np.ndarray, test: np.ndarray, bin_width: float) -> np.ndarray:
    """``(n,)`` bits per dimension of the test rows ``(n, D)`` under the maximum-likelihood Gaussian of
    the dequantised training rows (raw units): the exact uniform-dequantisation bound."""
    rng = np.random.default_rng(0)
    deq = train + bin_width * (rng.random(train.shape) - 0.5)
    mean, cov = deq.mean(0), np.cov(deq, rowvar=False, bias=True)
    d = train.shape[1]
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (test - mean).T)
    log_det = 2 * np.log(np.diag(chol)).sum()
    log_n = -0.5 * (z**2).sum(0) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)
    trace_inv = np.trace(np.linalg.inv(cov))
    bound = log_n - bin_width**2 * trace_inv / 24 + d * math.log(bin_width)  # E_u log N(x + b u) + log b^D
    return -bound / (d * LOG2)


def row(name: str, result: DataLikelihood) -> str:
    assert result.bpd is not None
    n = result.bpd.shape[0]
    se = float(result.bpd.std() / math.sqrt(n)) if n > 1 else float("nan")
    probe_se = (f"{float(result.stderr.pow(2).mean().sqrt()) / (result.dim * LOG2):.3f}"
                if result.stderr is not None else "-")
    return (f"| {name} | {n} | {float(result.bpd.mean()):.4f} +- {se:.4f} | {probe_se} | {result.nfe} | "
            f"{result.seconds:.0f} |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "digits", help="run of examples/train_digits.yaml")
    parser.add_argument("--exact-rows", type=int, default=8, help="held-out digits for the exact trace")
    parser.add_argument("--probes", type=int, default=1, help="Hutchinson probes per digit")
    parser.add_argument("--draws", type=int, default=1, help="dequantisation draws per digit")
    parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT held-out digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save-data", type=Path, help="also save the held-out digits (raw units) to this .npy")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()

    pipe, spec, meta = load_for_sampling(args.run)
    scaling, bin_width = data_scaling(spec, meta), data_bin_width(spec)
    assert bin_width is not None and spec.data is not None  # type: ignore[attr-defined]
    kind, params = spec.component("data")
    dataset = get_registry().build("dataset", kind, **{**params, "scale": "none", "dequantize": False})
    train = dataset.split("train")[0].flatten(1).double().numpy()  # type: ignore[attr-defined]
    test_x = dataset.split("test")[0][:args.limit]  # type: ignore[attr-defined]
    test = test_x.flatten(1).double().numpy()
    if args.save_data is not None:
        np.save(args.save_data, test_x.numpy())
    print(f"{args.run}: {test.shape[0]} held-out digits, bin width {bin_width}, scaling (shift, mult) {scaling}, "
          f"{args.draws} dequantisation draw(s), seed {args.seed}, {torch.get_num_threads()} thread(s)")

    common = {"seed": args.seed, "scaling": scaling, "bin_width": bin_width}
    exact = data_log_likelihood(pipe, test_x[:args.exact_rows].double(),
                                config=LikelihoodConfig(dequantize=args.draws), **common)  # type: ignore[arg-type]
    hutch = data_log_likelihood(pipe, test_x.double(), config=LikelihoodConfig(
        trace="hutchinson", probes=args.probes, dequantize=args.draws), **common)  # type: ignore[arg-type]
    assert hutch.bpd is not None
    gauss = gaussian_bpd(train, test, bin_width)
    k = args.exact_rows
    lines = ["| density | digits | bits per dimension (+- s.e. over digits) | probe s.e. per digit | NFE | seconds |",
             "|---|---:|---:|---:|---:|---:|",
             row("U-Net, exact trace", exact),
             row(f"U-Net, Hutchinson ({args.probes} probe{'s' if args.probes > 1 else ''})", hutch),
             f"| Gaussian fitted to the training digits | {len(gauss)} | {gauss.mean():.4f} +- "
             f"{gauss.std() / math.sqrt(len(gauss)):.4f} | - | - | - |",
             f"| Gaussian, the first {k} digits | {k} | {gauss[:k].mean():.4f} | - | - | - |",
             f"| U-Net Hutchinson, the first {k} digits | {k} | {float(hutch.bpd[:k].mean()):.4f} | - | - | - |"]
    print("\n".join(lines))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
