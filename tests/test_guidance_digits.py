"""Classifier-free guidance on digits end to end, at a reduced size: ``diffcore train
examples/train_digits_cfg.yaml --set train.steps=1500`` (a class-conditional U-Net with label dropout
0.1), then 50 samples of each class at ``w = 0`` (the plain conditional score) and ``w = 2``, scored by
a logistic regression trained on the real training digits (the share it assigns to the requested
label) and by the Frechet distance to the held-out digits. ``benchmarks/guidance_digits.py`` runs the
full sweep on the 4000-step model.

Measured (one torch thread, seed 0): w = 0: accuracy 0.946, Frechet distance 0.597; w = 2: accuracy
1.000, Frechet distance 1.371. Guidance buys accuracy and costs diversity, as on the full model
(docs: "Guidance on digits"). The bounds leave room for the scatter of trainings that differ only in
float summation order (other thread counts: about 0.025 in Frechet distance on the unconditional
model, tests/test_digits.py).

About 5 minutes on two idle CPU cores (training about 3.5 minutes, sampling under a minute; 16 minutes
on one thread of a busy machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_main

from diffcore import Condition
from diffcore.sampling import load_for_sampling
from diffcore.testing.digits import DigitsReference

SPEC = ROOT / "examples" / "train_digits_cfg.yaml"
STEPS = 1500
PER_CLASS = 50
SAMPLER = ["sampler.steps=50"]  # the spec's ddim, at half its steps
ACCURACY_W0 = 0.88
"""Lower bound on the accuracy at w = 0, the conditional model alone (measured 0.946)."""
ACCURACY_W2 = 0.98
"""Lower bound on the accuracy at w = 2 (measured 1.000)."""
GAIN = 0.02
"""Guidance at w = 2 must raise the accuracy by at least this much over w = 0 (measured 0.054)."""
FRECHET_W0 = 0.75
"""Upper bound on the Frechet distance at w = 0 (500 samples; measured 0.597; floor of 1000 real digits
0.357): the conditional model itself samples digits."""
DIVERSITY_COST = 0.3
"""At w = 2 the Frechet distance must exceed w = 0's by at least this much (measured 0.774): strong
guidance concentrates each class on its prototypes, which the test must see."""



@pytest.mark.slow
def test_cfg_digits_guidance_raises_accuracy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, stdout, stderr = run_main("train", str(SPEC), "--out", str(run), "--device", "cpu", "--no-preview",
                                    "--checkpoint-every", str(STEPS), "--set", f"train.steps={STEPS}")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    print(f"training: {summary['steps']} steps in {summary['seconds']:.0f} s, final loss {summary['final_loss']:.3f}")

    ref = DigitsReference.load()
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    measured = {}
    for w in (0.0, 2.0):
        pipe, _, _ = load_for_sampling(run, overrides=[f"guidance=[{{type: cfg, scale: {w}}}]", *SAMPLER])
        result = pipe.sample(labels.shape[0], seed=0, cond=Condition(labels=labels), batch_size=250)
        assert result.forward_passes == (1 if w == 0 else 2) * result.nfe
        measured[w] = (ref.accuracy(result.x, labels), ref.frechet(result.x))
        print(f"w = {w}: accuracy {measured[w][0]:.3f}, Frechet distance {measured[w][1]:.3f}")
    (acc0, fd0), (acc2, fd2) = measured[0.0], measured[2.0]
    assert acc0 >= ACCURACY_W0
    assert acc2 >= ACCURACY_W2
    assert acc2 >= acc0 + GAIN
    assert fd0 <= FRECHET_W0
    assert fd2 >= fd0 + DIVERSITY_COST
