"""Digits end to end at full size: the checks that were the slow tier's two longest tests (12 and 16
minutes), run here by hand or in a nightly job; ``tests/test_digits.py`` keeps a reduced version of
each in the slow tier.

``unconditional``: ``diffcore train examples/train_digits.yaml`` (4000 steps), then ``diffcore sample``
of 1000 digits, measured against the 30% of scikit-learn's 8x8 digits the model never saw:

- Frechet distance in pixel space, in the model's range, between the samples and the 539 held-out
  digits, at most :data:`FRECHET_BOUND` (measured 0.416 on two threads, 0.412 on one; trainings that
  differ only in float summation order scatter by about 0.025; the floor, 1000 real training digits,
  is 0.357; a plain MLP trained as long reaches 0.55 to 0.65);
- the share of samples a logistic regression trained on the real training digits classifies with
  probability at least 0.9, at least :data:`CONFIDENT_BOUND` (measured 0.87; real held-out digits 0.81);
- the run's PNGs: the loss curve and the grids of EMA samples written at each checkpoint.

``cfg``: ``diffcore train examples/train_digits_cfg.yaml --set train.steps=1500`` (a class-conditional
U-Net with label dropout 0.1), then 50 samples of each class at guidance weight ``w = 0`` (the plain
conditional score) and ``w = 2`` (DDIM, 50 steps), scored by the same classifier (the share assigned to
the requested label) and the Frechet distance. Measured (one thread, seed 0): w = 0: accuracy 0.946,
Frechet distance 0.597; w = 2: accuracy 1.000, Frechet distance 1.371. Guidance buys accuracy and
costs diversity; ``benchmarks/guidance_digits.py`` runs the full sweep on the 4000-step model.

    python benchmarks/digits_end_to_end.py               # both: about 25 minutes on two CPU cores
    python benchmarks/digits_end_to_end.py unconditional # about 10 minutes
    python benchmarks/digits_end_to_end.py cfg           # about 5 minutes (16 on one thread of a busy machine)

Exits with status 1 when a bound is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from diffcore import Condition
from diffcore.cli import main as diffcore
from diffcore.sampling import load_for_sampling
from diffcore.testing.digits import DigitsReference

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FRECHET_BOUND = 0.45
"""Unconditional: Frechet distance of 1000 samples to the held-out digits (measured 0.416)."""
CONFIDENT_BOUND = 0.7
"""Unconditional: share of samples classified with probability >= 0.9 (measured 0.87)."""
CFG_STEPS = 1500
ACCURACY_W0 = 0.88
"""cfg: accuracy at w = 0, the conditional model alone (measured 0.946)."""
ACCURACY_W2 = 0.98
"""cfg: accuracy at w = 2 (measured 1.000)."""
GAIN = 0.02
"""cfg: w = 2 must raise the accuracy over w = 0 by at least this (measured 0.054)."""
FRECHET_W0 = 0.75
"""cfg: Frechet distance at w = 0, 500 samples (measured 0.597)."""
DIVERSITY_COST = 0.3
"""cfg: at w = 2 the Frechet distance exceeds w = 0's by at least this (measured 0.774)."""


def train(spec: Path, run: Path, *extra: str) -> None:
    if diffcore(["train", str(spec), "--out", str(run), "--device", "cpu", *extra]) != 0:
        raise SystemExit(f"training {spec} failed")


def unconditional(work: Path) -> list[str]:
    spec = ROOT / "examples" / "train_digits.yaml"
    run = work / "digits"
    train(spec, run, "--checkpoint-every", "1000")
    samples = work / "samples.npy"
    if diffcore(["sample", str(run), "--num", "1000", "--seed", "0", "--out", str(samples), "--model-range",
                 "--device", "cpu"]) != 0:
        raise SystemExit("sampling failed")
    x = torch.from_numpy(np.load(samples, allow_pickle=False))
    ref = DigitsReference.load(yaml.safe_load(spec.read_text())["data"])
    fd, confident = ref.frechet(x), ref.confident(x, 0.9)
    print(f"unconditional: Frechet distance {fd:.3f} (floor {ref.floor(1000):.3f}, bound {FRECHET_BOUND}); "
          f"classified with p >= 0.9: {confident:.3f} (real {ref.confident(ref.x_test, 0.9):.3f}, bound "
          f"{CONFIDENT_BOUND})")
    missed = [f"Frechet distance {fd:.3f} > {FRECHET_BOUND}"] if fd > FRECHET_BOUND else []
    missed += [f"confident share {confident:.3f} < {CONFIDENT_BOUND}"] if confident < CONFIDENT_BOUND else []
    grids = sorted((run / "samples").glob("step-*.png"))
    if not (run / "loss.png").read_bytes().startswith(PNG_SIGNATURE) or not grids:
        missed.append("the loss curve or the sample grids are missing")
    return missed


def cfg(work: Path) -> list[str]:
    run = work / "digits-cfg"
    train(ROOT / "examples" / "train_digits_cfg.yaml", run, "--no-preview", "--checkpoint-every", str(CFG_STEPS),
          "--set", f"train.steps={CFG_STEPS}")
    ref = DigitsReference.load()
    labels = torch.arange(10).repeat_interleave(50)
    measured = {}
    for w in (0.0, 2.0):
        pipe, _, _ = load_for_sampling(run, overrides=[f"guidance=[{{type: cfg, scale: {w}}}]", "sampler.steps=50"])
        result = pipe.sample(labels.shape[0], seed=0, cond=Condition(labels=labels), batch_size=250)
        measured[w] = (ref.accuracy(result.x, labels), ref.frechet(result.x))
        print(f"cfg w = {w}: accuracy {measured[w][0]:.3f}, Frechet distance {measured[w][1]:.3f}")
    (acc0, fd0), (acc2, fd2) = measured[0.0], measured[2.0]
    checks = [(acc0 >= ACCURACY_W0, f"accuracy at w = 0 {acc0:.3f} < {ACCURACY_W0}"),
              (acc2 >= ACCURACY_W2, f"accuracy at w = 2 {acc2:.3f} < {ACCURACY_W2}"),
              (acc2 >= acc0 + GAIN, f"guidance gained {acc2 - acc0:.3f} < {GAIN}"),
              (fd0 <= FRECHET_W0, f"Frechet distance at w = 0 {fd0:.3f} > {FRECHET_W0}"),
              (fd2 >= fd0 + DIVERSITY_COST, f"Frechet cost of guidance {fd2 - fd0:.3f} < {DIVERSITY_COST}")]
    return [message for ok, message in checks if not ok]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", choices=["unconditional", "cfg"], default=["unconditional", "cfg"])
    args = parser.parse_args()
    missed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.which or ["unconditional", "cfg"]:
            missed += [f"{name}: {m}" for m in {"unconditional": unconditional, "cfg": cfg}[name](Path(tmp))]
    print("all bounds met" if not missed else "missed:\n  " + "\n  ".join(missed))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
