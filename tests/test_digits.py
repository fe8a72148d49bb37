"""Digits end to end, reduced: ``diffcore train`` then ``diffcore sample`` on scikit-learn's 8x8 digits,
measured against the 30% the model never saw, for the unconditional U-Net and the class-conditional one
with classifier-free guidance.

The full-size checks (4000 and 1500 training steps, 1000 and 500 samples; 12 and 16 minutes here) are
``benchmarks/digits_end_to_end.py``. These run the same commands and code paths on a short training
(:data:`STEPS`), with bounds that a trained model meets and a broken path does not: the Frechet
distance of the samples to the held-out digits against that of the model before training, and
guidance's gain in accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_main

from diffcore import Condition
from diffcore.sampling import load_for_sampling
from diffcore.testing.digits import DigitsReference

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 400
"""Training steps of the reduced runs."""
NUM = 300


@pytest.mark.slow
def test_digits_train_and_sample(tmp_path: Path) -> None:
    spec = ROOT / "examples" / "train_digits.yaml"
    run = tmp_path / "run"
    code, stdout, stderr = run_main("train", str(spec), "--out", str(run), "--device", "cpu", "--preview", "every",
                                    "--checkpoint-every", str(STEPS // 2), "--set", f"train.steps={STEPS}",
                                    "--set", f"train.warmup={STEPS // 10}")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == STEPS

    # the same network at its initial weights (one step at a vanishing learning rate): what a path that
    # learns nothing gives
    untrained = tmp_path / "untrained"
    code, _, stderr = run_main("train", str(spec), "--out", str(untrained), "--device", "cpu", "--no-preview",
                               "--set", "train.steps=1", "--set", "train.lr=1e-12")
    assert code == 0, stderr
    ref = DigitsReference.load(yaml.safe_load(spec.read_text())["data"])
    scores = {}
    for name, source in (("trained", run), ("untrained", untrained)):
        samples = tmp_path / f"{name}.npy"
        code, _, stderr = run_main("sample", str(source), "--num", str(NUM), "--seed", "0", "--out", str(samples),
                                   "--model-range", "--device", "cpu", "--steps", "100")
        assert code == 0, stderr
        x = torch.from_numpy(np.load(samples, allow_pickle=False))
        assert x.shape == (NUM, 1, 8, 8) and bool(torch.isfinite(x).all())
        scores[name] = ref.frechet(x)
    print(f"Frechet distance after {STEPS} steps {scores['trained']:.3f}, untrained {scores['untrained']:.3f}, "
          f"floor {ref.floor(NUM):.3f}")
    assert scores["trained"] < FRECHET_TRAINED < scores["untrained"]

    assert (run / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    grids = sorted((run / "samples").glob("step-*.png"))
    assert len(grids) == 2 and grids[-1].read_bytes().startswith(PNG_SIGNATURE)


FRECHET_TRAINED = 0.9
"""Bound on the Frechet distance of :data:`NUM` samples to the held-out digits after :data:`STEPS`
steps (measured 0.702; the floor, 300 real training digits, 0.604; the untrained network 1.8e4)."""


@pytest.mark.slow
def test_cfg_digits_guidance_raises_accuracy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, _, stderr = run_main("train", str(ROOT / "examples" / "train_digits_cfg.yaml"), "--out", str(run),
                               "--device", "cpu", "--no-preview", "--set", f"train.steps={STEPS}",
                               "--set", f"train.warmup={STEPS // 10}")
    assert code == 0, stderr
    ref = DigitsReference.load()
    labels = torch.arange(10).repeat_interleave(20)
    accuracy, frechet = {}, {}
    for w in (0.0, 2.0):
        pipe, _, _ = load_for_sampling(run, overrides=[f"guidance=[{{type: cfg, scale: {w}}}]", "sampler.steps=50"])
        result = pipe.sample(labels.shape[0], seed=0, cond=Condition(labels=labels))
        assert result.forward_passes == (1 if w == 0 else 2) * result.nfe
        accuracy[w], frechet[w] = ref.accuracy(result.x, labels), ref.frechet(result.x)
    print(f"after {STEPS} steps: w = 0 accuracy {accuracy[0.0]:.3f}, Frechet distance {frechet[0.0]:.3f}; "
          f"w = 2 accuracy {accuracy[2.0]:.3f}, Frechet distance {frechet[2.0]:.3f}")
    assert accuracy[0.0] >= ACCURACY_W0 and accuracy[2.0] >= ACCURACY_W2
    assert frechet[2.0] >= frechet[0.0] + DIVERSITY_COST


ACCURACY_W0 = 0.8
"""Bound on the accuracy at w = 0, the conditional model alone, after :data:`STEPS` steps (measured
0.930; chance 0.1)."""
ACCURACY_W2 = 0.97
"""Bound on the accuracy at w = 2 (measured 1.000)."""
DIVERSITY_COST = 0.4
"""At w = 2 the Frechet distance must exceed w = 0's by at least this: guidance that acts concentrates
each class on its prototypes (measured 1.278: 1.225 at w = 0, 2.503 at w = 2)."""
