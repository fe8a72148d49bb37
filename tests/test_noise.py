"""Counter-based noise: distribution, independence, batch and device invariance."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from scipy import stats

from diffcore.noise import NoiseSource


def test_normals_are_standard_normal_and_independent() -> None:
    z = NoiseSource.range(7, 0, 100_000).normal((3,), step=5).double()
    for j in range(3):
        assert stats.kstest(z[:, j].numpy(), "norm").pvalue > 1e-3
    corr = torch.corrcoef(z.T)
    assert (corr - torch.eye(3)).abs().max() < 0.02
    other_step = NoiseSource.range(7, 0, 100_000).normal((3,), step=6).double()
    other_stream = NoiseSource.range(7, 0, 100_000).normal((3,), step=5, stream="corrector").double()
    other_seed = NoiseSource.range(8, 0, 100_000).normal((3,), step=5).double()
    for w in (other_step, other_stream, other_seed):
        assert abs(float(torch.corrcoef(torch.stack([z.flatten(), w.flatten()]))[0, 1])) < 0.01


def test_uniforms_are_uniform() -> None:
    u = NoiseSource.range(0, 0, 200_000).uniform((1,), step=0).double().flatten().numpy()
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_noise_of_a_sample_does_not_depend_on_the_batch() -> None:
    full = NoiseSource.range(3, 0, 1000).normal((2, 4), step=11)
    part = NoiseSource.range(3, 500, 700).normal((2, 4), step=11)
    assert torch.equal(full[500:700], part)
    rows = torch.tensor([999, 3, 500])
    assert torch.equal(NoiseSource(3, rows).normal((2, 4), step=11), full[rows])
    assert torch.equal(NoiseSource.range(3, 0, 1000)[rows].normal((2, 4), step=11), full[rows])


@pytest.mark.parametrize("device", DEVICES)
def test_same_numbers_on_every_device(device: str) -> None:
    cpu = NoiseSource.range(5, 0, 64).normal((8,), step=2, dtype=torch.float64)
    dev = NoiseSource.range(5, 0, 64, device=device).normal((8,), step=2, dtype=torch.float64)
    torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-12, atol=1e-12)


def test_large_seeds_and_indices() -> None:
    a = NoiseSource(2**64 - 1, torch.tensor([2**40, 0])).normal((2,), step=0)
    b = NoiseSource(2**64 - 2, torch.tensor([2**40, 0])).normal((2,), step=0)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        NoiseSource(-1, torch.tensor([0]))


def test_batch_noise_gives_the_numbers_of_the_sample_indices() -> None:
    """Every batch of :class:`BatchNoise` (any block size, any start, a rank's slice) draws exactly
    what ``NoiseSource`` draws for the batch's global sample indices."""
    from diffcore.noise import BatchNoise

    stride, offset, size = 12, 4, 4  # rank 1 of 3 with a global batch of 12
    for block in (1, 5):
        batches = BatchNoise(7, stride, offset=offset, size=size, block=block)
        for step in (3, 4, 9, 2, 3):
            direct = NoiseSource(7, torch.arange(step * stride + offset, step * stride + offset + size))
            noise = batches.at(step)
            assert torch.equal(noise.indices, direct.indices)
            for stream in ("eps", "t"):
                assert torch.equal(noise.normal((2, 3), step=0, stream=stream),
                                   direct.normal((2, 3), step=0, stream=stream))
                assert torch.equal(noise.uniform((), step=1, stream=stream, dtype=torch.float64),
                                   direct.uniform((), step=1, stream=stream, dtype=torch.float64))
            a = noise.normal((2,), step=0)
            a += 1.0  # a caller may modify what it got; the next request is unaffected
            assert torch.equal(noise.normal((2,), step=0), direct.normal((2,), step=0))
