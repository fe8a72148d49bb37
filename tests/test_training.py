"""The training loop and the MLP backbone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffcore import get_registry
from diffcore.errors import UsageError
from diffcore.model import to_score
from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture
from diffcore.training import TrainConfig, Trainer, fit
from diffcore.training.checkpoint import latest_checkpoint, load_checkpoint
from diffcore_models import GaussianMixture

REGISTRY = get_registry()


def test_mlp_shapes_and_class_conditioning() -> None:
    torch.manual_seed(0)
    mlp = REGISTRY.build("model", "mlp", shape=[3, 2], num_classes=4, output="eps")
    x, t = torch.randn(5, 3, 2), torch.rand(5)
    assert mlp(x, t).shape == (5, 3, 2)
    null = torch.full((5,), 4)
    assert torch.equal(mlp(x, t, None), mlp(x, t, null))
    assert not torch.equal(mlp(x, t, torch.zeros(5, dtype=torch.long)), mlp(x, t, null))
    with pytest.raises(ValueError, match="null label"):
        mlp(x, t, torch.full((5,), 5))


def config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=256, lr=2e-3, warmup=50, seed=3)


def test_training_is_deterministic_given_the_seed() -> None:
    data = sample_mixture(REFERENCE_MIXTURE, 2000, torch.Generator().manual_seed(0)).float()
    process = REGISTRY.build("process", "vp")
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = REGISTRY.build("model", "mlp", shape=[2], hidden=64)
        results.append(fit(model, REGISTRY.build("objective", "dsm"), process, data, config(30)))  # type: ignore[arg-type]
    assert results[0].losses == results[1].losses
    for a, b in zip(results[0].ema.state_dict().values(), results[1].ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_dsm_learns_the_mixture_score() -> None:
    """An MLP trained with DSM (sigma^2 weighting, 1500 steps) gets the score of p_t to within a
    relative error of 5% at t = 0.5 and 0.9 and 10% at t = 0.1 (measured: about 0.014, 0.003,
    0.0003 at 2000 steps)."""
    data = sample_mixture(REFERENCE_MIXTURE, 20_000, torch.Generator().manual_seed(0)).float()
    process = REGISTRY.build("process", "vp")
    torch.manual_seed(0)
    model = REGISTRY.build("model", "mlp", shape=[2], hidden=128, output="eps")
    result = fit(model, REGISTRY.build("objective", "dsm"), process, data, config(1500))  # type: ignore[arg-type]
    truth = GaussianMixture(**REFERENCE_MIXTURE)
    truth.bind(process)
    gen = torch.Generator().manual_seed(5)
    for t_value, bound in [(0.1, 0.10), (0.5, 0.05), (0.9, 0.05)]:
        t = torch.full((4000,), t_value, dtype=torch.float64)
        x0 = sample_mixture(REFERENCE_MIXTURE, 4000, gen)
        x = (process.alpha(t)[:, None] * x0 + process.sigma(t)[:, None] * torch.randn(x0.shape, generator=gen,
                                                                                       dtype=torch.float64))
        with torch.no_grad():
            learned = to_score(result.ema(x.float(), t.float()), "eps", x.float(), t.float(), process).double()
        exact = truth(x, t)
        rel = float(((learned - exact) ** 2).sum(1).mean() / (exact**2).sum(1).mean())
        print(f"t={t_value}: relative score error {rel:.4f}")
        assert rel < bound


def test_bf16_autocast_trains_and_fp16_needs_cuda() -> None:
    """``precision: bf16`` runs the forward passes in bfloat16 (weights stay fp32) and still learns;
    fp16 (gradient scaling) is refused off CUDA."""
    data = sample_mixture(REFERENCE_MIXTURE, 2000, torch.Generator().manual_seed(0)).float()
    process, objective = REGISTRY.build("process", "vp"), REGISTRY.build("objective", "dsm")
    torch.manual_seed(0)
    model = REGISTRY.build("model", "mlp", shape=[2], hidden=64)
    bf16 = TrainConfig(steps=150, batch_size=256, lr=3e-3, warmup=20, precision="bf16")
    seen: list[torch.dtype] = []
    handle = model.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))  # type: ignore[arg-type]
    result = fit(model, objective, process, data, bf16)  # type: ignore[arg-type]
    handle.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    losses = torch.tensor(result.losses)
    assert losses[-30:].mean() < 0.6 * losses[:30].mean(), losses
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="fp16 needs CUDA"):
            fit(model, objective, process, data, TrainConfig(steps=1, precision="fp16"))  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_gradient_scaling_trains_on_cuda() -> None:
    data = sample_mixture(REFERENCE_MIXTURE, 2000, torch.Generator().manual_seed(0)).float().cuda()
    torch.manual_seed(0)
    model = REGISTRY.build("model", "mlp", shape=[2], hidden=64).cuda()
    result = fit(model, REGISTRY.build("objective", "dsm"), REGISTRY.build("process", "vp"), data,  # type: ignore[arg-type]
                 TrainConfig(steps=150, batch_size=256, lr=3e-3, warmup=20, precision="fp16"))
    losses = torch.tensor(result.losses)
    assert torch.isfinite(losses).all() and losses[-30:].mean() < 0.6 * losses[:30].mean(), losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_skips_a_nan_loss_and_checkpoints_the_cuda_random_state(tmp_path: Path) -> None:
    """With fp16 the gradient scaler handles Inf gradients; a NaN loss (a NaN row in the data) is
    still caught and, with ``nonfinite: skip``, skipped; the CUDA random state is saved and restored."""
    data = sample_mixture(REFERENCE_MIXTURE, 256, torch.Generator().manual_seed(0)).float()
    data[7] = math.nan
    cfg = TrainConfig(steps=30, batch_size=32, lr=1e-3, warmup=5, precision="fp16", nonfinite="skip")

    def trainer() -> Trainer:
        torch.manual_seed(0)
        return Trainer(REGISTRY.build("model", "mlp", shape=[2], hidden=32).cuda(), REGISTRY.build("objective", "dsm"),
                       REGISTRY.build("process", "vp"), data.cuda(), cfg)  # type: ignore[arg-type]

    first = trainer()
    first.run(run_dir=tmp_path / "run")
    assert first.skipped >= 3 and len(first.losses) == 30 - first.skipped  # 3 batches hold row 7
    assert all(bool(p.isfinite().all()) for p in first.model.parameters())
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))[0]["state"]
    assert "rng.cuda.0" in state and state["rng.cuda.0"].dtype == torch.uint8
    expected = torch.cuda.get_rng_state()
    again = trainer()
    torch.cuda.manual_seed(123)
    again.load(tmp_path / "run")
    assert again.skipped == first.skipped and torch.equal(torch.cuda.get_rng_state(), expected)


def test_ema_follows_the_warmed_up_recursion() -> None:
    """The EMA against the recursion written out by hand: copy on the first update, then
    ``ema <- d ema + (1 - d) w`` with ``d = min(decay, (1 + n) / (10 + n))``; integer buffers copied."""
    from diffcore.training.ema import ExponentialMovingAverage

    net = torch.nn.Linear(3, 2).double()
    net.register_buffer("count", torch.tensor(0))
    ema = ExponentialMovingAverage(net, decay=0.9)
    expected = None
    for n in range(30):
        with torch.no_grad():
            net.weight.copy_(torch.full_like(net.weight, float(n) ** 1.5))
            net.count += 1  # type: ignore[operator]
        ema.update_parameters(net)
        w = float(n) ** 1.5
        d = min(0.9, (1.0 + n) / (10.0 + n))
        expected = w if expected is None else d * expected + (1.0 - d) * w
        assert torch.allclose(ema.module.weight, torch.full_like(net.weight, expected), rtol=1e-12)
    assert int(ema.module.count) == 30 and int(ema.n_averaged) == 30
    restored = ExponentialMovingAverage(net, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert sorted(ema.state_dict()) == ["module.bias", "module.count", "module.weight", "n_averaged"]
    assert torch.equal(restored.module.weight, ema.module.weight)


@pytest.mark.parametrize("decay", ["constant", "cosine"])
def test_learning_rate_schedule(decay: str) -> None:
    """The learning rate AdamW uses at each step against the closed form: ``lr (k + 1) / warmup``
    during the warm-up, then ``lr`` or ``lr (1 + cos(pi p)) / 2`` with ``p`` going from 0 at the end of
    the warm-up towards 1 at the last step."""
    steps, warmup, peak = 40, 8, 3e-3
    trainer = Trainer(REGISTRY.build("model", "mlp", shape=[2], hidden=16), REGISTRY.build("objective", "dsm"),
                      REGISTRY.build("process", "vp"), torch.randn(64, 2),
                      TrainConfig(steps=steps, batch_size=16, lr=peak, warmup=warmup, lr_decay=decay))  # type: ignore[arg-type]
    used: list[float] = []
    trainer.optimiser.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.run()
    expected = [peak * (k + 1) / warmup for k in range(warmup - 1)]
    for k in range(warmup - 1, steps):
        p = (k + 1 - warmup) / (steps - warmup + 1)
        expected.append(peak if decay == "constant" else peak * 0.5 * (1 + math.cos(math.pi * p)))
    assert used == pytest.approx(expected, rel=1e-12, abs=0)
    if decay == "cosine":
        assert used[warmup - 1] == peak and 0 < used[-1] < 0.01 * peak


def test_setup_seeds_numpy_and_python_from_train_seed() -> None:
    """The numpy and Python random states a checkpoint saves come from ``train.seed``: two setups of
    one spec agree whatever the process drew before (they used to keep the process's own states)."""
    import random

    import numpy as np

    from diffcore.training.setup import setup_training

    spec = Path(__file__).resolve().parents[1] / "examples" / "train_moons.yaml"
    states = []
    for noise in (1, 2):
        np.random.seed(noise)
        random.seed(noise)
        setup_training(str(spec), device="cpu", overrides=["train.steps=1", "train.seed=7"])
        states.append((np.random.get_state()[1].tolist(), random.getstate(), torch.initial_seed()))
    assert states[0] == states[1] and states[0][2] == 7
    setup_training(str(spec), device="cpu", overrides=["train.steps=1", "train.seed=8"])
    assert np.random.get_state()[1].tolist() != states[0][0] and random.getstate() != states[0][1]
