"""The U-Net backbone: shapes, conditioning, determinism, parameter validation and that it can learn."""

from __future__ import annotations

import time

import pytest
import torch

from diffcore.errors import SpecError
from diffcore_backbones.unet import UNet

SMALL = {"channels": 16, "num_res_blocks": 1}


def _inputs(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, generator=g), torch.rand(batch, generator=g)


def _perturb(net: UNet) -> UNet:
    """Zero-initialised output layers make a fresh net output 0 everywhere; give every weight some
    random values so that conditioning can show in the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize(
    ("size", "mults", "attn"),
    [(8, [1], [8]), (8, [1, 2], [4]), (8, [1, 2, 2], [2]), (16, [1, 2], []), (16, [1, 2, 2], [8, 4])],
)
def test_output_shape(size: int, mults: list[int], attn: list[int]) -> None:
    net = UNet(image_size=size, channel_mults=mults, attention_resolutions=attn, **SMALL)
    x, t = _inputs(3, size)
    out = net(x, t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert net.event_shape == (1, size, size)
    assert net.output == "eps"


def test_default_parameter_count_and_metadata() -> None:
    net = UNet()
    count = sum(p.numel() for p in net.parameters())
    print(f"UNet defaults at 8x8: {count:,} parameters")
    assert 1_000_000 < count < 10_000_000
    assert net.event_shape == (1, 8, 8)
    assert net.null_label is None
    assert UNet(output="v").output == "v"
    assert UNet.name == "unet"


def test_class_conditioning() -> None:
    net = _perturb(UNet(num_classes=10, **SMALL))
    assert net.null_label == 10
    x, t = _inputs(2, 8)
    with torch.no_grad():
        out3 = net(x, t, torch.tensor([3, 3]))
        out7 = net(x, t, torch.tensor([7, 7]))
        null = net(x, t, torch.tensor([10, 10]))
        none = net(x, t, None)
    assert not torch.allclose(out3, out7, atol=1e-4)
    assert not torch.allclose(out3, null, atol=1e-4)
    torch.testing.assert_close(none, null, rtol=0, atol=0)
    for bad in ([11, 0], [-1, 0]):
        with pytest.raises(ValueError, match="class labels"):
            net(x, t, torch.tensor(bad))
    with pytest.raises(ValueError, match="integer"):
        net(x, t, torch.tensor([1.0, 2.0]))


def test_unconditional_rejects_cond() -> None:
    net = UNet(**SMALL)
    x, t = _inputs(2, 8)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
def test_time_conditioning(kind: str) -> None:
    net = _perturb(UNet(time_embedding=kind, **SMALL))
    x, _ = _inputs(2, 8)
    with torch.no_grad():
        a = net(x, torch.full((2,), 0.1))
        b = net(x, torch.full((2,), 0.9))
    assert not torch.allclose(a, b, atol=1e-4)


def test_determinism() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = _perturb(UNet(num_classes=3, time_embedding="fourier", **SMALL))
        x, t = _inputs(2, 8)
        with torch.no_grad():
            outs.append(net(x, t, torch.tensor([0, 2])))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_fourier_features_do_not_depend_on_global_seed() -> None:
    torch.manual_seed(1)
    a = UNet(time_embedding="fourier", **SMALL).time.freqs
    torch.manual_seed(2)
    b = UNet(time_embedding="fourier", **SMALL).time.freqs
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_input_shape() -> None:
    net = UNet(**SMALL)
    with pytest.raises(ValueError, match="expects x of shape"):
        net(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match="expects x of shape"):
        net(torch.randn(64), torch.rand(64))


def test_flat_input_is_reshaped() -> None:
    net = _perturb(UNet(**SMALL))
    x, t = _inputs(2, 8)
    with torch.no_grad():
        image = net(x, t)
        flat = net(x.reshape(2, 64), t)
    assert flat.shape == (2, 64)
    torch.testing.assert_close(flat, image.reshape(2, 64), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one time per sample"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"image_size": 10, "channel_mults": [1, 2, 2]}, "divisible"),
        ({"attention_resolutions": [3]}, "never reached"),
        ({"attention_resolutions": [2]}, "never reached"),
        ({"channel_mults": []}, "channel_mults"),
        ({"channel_mults": [1, 0]}, "positive"),
        ({"embedding_dim": 33}, "even"),
        ({"num_classes": 0}, "num_classes"),
        ({"output": "noise"}, "output"),
        ({"chanels": 8}, "chanels"),
        ({"channel_mults": (1, 2)}, "channel_mults"),
    ],
)
def test_params_validation(params: dict[str, object], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        UNet(**params)


def test_overfits_tiny_batch() -> None:
    """eps-prediction on 16 fixed noisy 1x8x8 images with fixed (t, eps): the loss must fall below
    a quarter of its initial value within 150 AdamW steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 1, 8, 8, generator=g)
    t = torch.rand(16, generator=g)
    eps = torch.randn(16, 1, 8, 8, generator=g)
    sigma = 0.1 * 50.0**t  # a VE-style schedule from 0.1 to 5
    xt = x0 + sigma.reshape(16, 1, 1, 1) * eps
    net = UNet(channels=32, num_res_blocks=1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    start = time.perf_counter()
    for _ in range(150):
        loss = ((net(xt, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    print(f"overfit: initial loss {losses[0]:.4g}, after 50 steps {losses[49]:.4g}, final {losses[-1]:.4g} "
          f"(ratio {losses[-1] / losses[0]:.3g}), {elapsed:.1f} s")
    assert losses[-1] < 0.25 * losses[0]


def test_float64_dropout_and_input_gradient() -> None:
    net = UNet(dropout=0.1, num_classes=2, **SMALL).double().train()
    x, t = _inputs(2, 8)
    x = x.double().requires_grad_()
    out = net(x, t.double(), torch.tensor([0, 2]))
    assert out.dtype == torch.float64
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape
