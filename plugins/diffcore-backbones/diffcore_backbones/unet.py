"""A small U-Net score network for images, in the DDPM++ / NCSN++ style (Ho et al. 2020; Song et al. 2021).

Sized for small images (8x8 digits up to 32x32). ``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` in ``[0, T]``
and optional class labels ``cond`` ``(B,)`` map to ``(B, C, H, W)`` of kind ``params.output``.

Layout, for ``channel_mults = [m_0, ..., m_{L-1}]`` and base width ``c``::

    conv3x3 -> [level i: num_res_blocks x (ResBlock(c m_i) [+ attention]), strided-conv downsample]
            -> middle: ResBlock, attention, ResBlock
            -> [level i reversed: (num_res_blocks + 1) x (concat skip, ResBlock [+ attention]), upsample]
            -> GroupNorm, SiLU, conv3x3 (zero-initialised)

ResBlocks use FiLM (scale-shift) conditioning on the time (+ class) embedding, a zero-initialised last
convolution and residuals scaled by ``1/sqrt(2)`` (NCSN++ ``skip_rescale``); attention is single-head
self-attention over the ``H W`` positions via :func:`torch.nn.functional.scaled_dot_product_attention`.

:class:`UNetClassifier` is the way down and the middle block of the same layout with a pooled linear
head: a noise-conditional classifier ``(B, C, H, W), (B,) -> (B, num_classes)`` for classifier guidance.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import Field, model_validator
from torch import Tensor, nn

from diffcore.classifier import NoiseClassifier
from diffcore.component import Params
from diffcore.limits import (
    MAX_DEPTH,
    MAX_EVENT_VALUES,
    MAX_PARAMETERS,
    MAX_WIDTH,
    Classes,
    Depth,
    Width,
    check_total,
)
from diffcore.model import ScoreModel
from diffcore_backbones.embedding import ClassEmbedding, TimeEmbedding, embed, embedding_parameters, linear_parameters

_SQRT_HALF = 1.0 / math.sqrt(2.0)
MAX_IMAGE_SIZE = math.isqrt(MAX_EVENT_VALUES)
"""Largest ``image_size``: one channel of that size holds :data:`~diffcore.limits.MAX_EVENT_VALUES` values."""
MAX_LEVELS = MAX_IMAGE_SIZE.bit_length()
"""Most resolution levels: each after the first halves ``image_size``, which must stay divisible."""


class UNetLayoutParams(Params):
    """The fields :class:`UNetParams` and :class:`UNetClassifierParams` share, and their checks;
    ``image_size`` must be divisible by ``2**(len(channel_mults) - 1)``."""

    in_channels: Width = Field(1, description="Image channels C.")
    image_size: int = Field(8, gt=0, le=MAX_IMAGE_SIZE, description="Height and width of the (square) images; "
                            "in_channels x image_size^2 values in all, at most as many as a sample may hold.")
    channels: Width = Field(64, description="Base width of the network.")
    channel_mults: list[Annotated[int, Field(le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [1, 2], min_length=1, max_length=MAX_LEVELS,
        description="Width multiplier per resolution level; each level after the first halves the size.",
    )
    num_res_blocks: Depth = Field(2, description="ResBlocks per level on the way down.")
    attention_resolutions: list[Annotated[int, Field(le=MAX_IMAGE_SIZE)]] = Field(
        default_factory=lambda: [4], max_length=MAX_LEVELS, description="Spatial sizes at which self-attention "
        "is applied.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the ResBlocks.")
    embedding_dim: Width | None = Field(
        None, description="Width of the time (and class) embedding; default 4 * channels.",
    )
    time_embedding: Literal["fourier", "sinusoidal"] = Field(
        "sinusoidal", description="Time features: sinusoidal of 1000 t (DDPM) or random Fourier (NCSN++).",
    )
    fourier_scale: float = Field(16.0, gt=0, description="Std of the random Fourier frequencies.")

    def _res_blocks(self) -> tuple[str, int]:
        """What the network's number of ResBlocks is, in words, and its value."""
        raise NotImplementedError

    def _parameter_count(self) -> int:
        """The network's trainable parameters, in closed form."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _check(self) -> UNetLayoutParams:
        check_total("in_channels x image_size^2 (the values of one image)", self.in_channels * self.image_size**2,
                    MAX_EVENT_VALUES, "lower in_channels or image_size")
        if any(m <= 0 for m in self.channel_mults):
            raise ValueError(f"channel_mults must all be positive, got {self.channel_mults}")
        check_total("channels x the largest of channel_mults (the widest layer)",
                    self.channels * max(self.channel_mults), MAX_WIDTH, "lower channels or channel_mults")
        what, blocks = self._res_blocks()
        check_total(f"the number of ResBlocks, {what}", blocks, MAX_DEPTH,
                    "lower num_res_blocks or use fewer channel_mults")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**(len(channel_mults) - 1) = {factor} "
                f"(channel_mults {self.channel_mults} has {len(self.channel_mults)} levels, each after the "
                f"first halving the size); use a smaller channel_mults or another image_size"
            )
        reachable = self.resolutions
        bad = [r for r in self.attention_resolutions if r not in reachable]
        if bad:
            raise ValueError(
                f"attention_resolutions {bad} are never reached: with image_size {self.image_size} and "
                f"{len(self.channel_mults)} levels the feature maps have sizes {reachable}"
            )
        if self.embedding_dim is not None and self.embedding_dim % 2:
            raise ValueError(f"embedding_dim must be even, got {self.embedding_dim}")
        check_total("the width of the time embedding (embedding_dim, default 4 x channels)", self.emb_dim, MAX_WIDTH,
                    "set embedding_dim or lower channels")
        check_total("the number of parameters", self._parameter_count(), MAX_PARAMETERS,
                    "lower channels, channel_mults, num_res_blocks, embedding_dim or num_classes")
        return self

    @property
    def resolutions(self) -> list[int]:
        """Spatial size at each level, ``[image_size, image_size / 2, ...]``."""
        return [self.image_size // 2**i for i in range(len(self.channel_mults))]

    @property
    def emb_dim(self) -> int:
        """The embedding width actually used: ``embedding_dim`` or ``4 * channels``."""
        return self.embedding_dim if self.embedding_dim is not None else 4 * self.channels


class UNetParams(UNetLayoutParams):
    """Parameters of :class:`UNet`; ``image_size`` must be divisible by ``2**(len(channel_mults) - 1)``."""

    num_classes: Classes | None = Field(None, description="Classes for conditioning (plus a null label).")
    output: Literal["score", "eps", "x0", "v"] = Field("eps", description="What the network predicts.")

    def _res_blocks(self) -> tuple[str, int]:
        return ("len(channel_mults) x (2 num_res_blocks + 1) + 2",
                len(self.channel_mults) * (2 * self.num_res_blocks + 1) + 2)

    def _parameter_count(self) -> int:
        return parameter_count(self)


def _conv_parameters(cin: int, cout: int, kernel: int) -> int:
    return cin * cout * kernel * kernel + cout


def _res_block_parameters(cin: int, cout: int, emb_dim: int) -> int:
    """Parameters of :class:`_ResBlock` ``(cin, cout, emb_dim)``: two GroupNorms, two 3x3 convolutions,
    the FiLM layer and a 1x1 skip projection when the widths differ."""
    skip = _conv_parameters(cin, cout, 1) if cin != cout else 0
    return (2 * cin + _conv_parameters(cin, cout, 3) + linear_parameters(emb_dim, 2 * cout) + 2 * cout
            + _conv_parameters(cout, cout, 3) + skip)


def _attention_parameters(channels: int) -> int:
    """Parameters of :class:`_Attention` ``(channels)``: a GroupNorm, the qkv and output 1x1 convolutions."""
    return 2 * channels + _conv_parameters(channels, 3 * channels, 1) + _conv_parameters(channels, channels, 1)


def _trunk_parameters(p: UNetLayoutParams) -> tuple[int, list[int]]:
    """Parameters of the input convolution, the levels on the way down (``UNet.down``) and the middle
    block, walking the layout of :func:`_down_levels` with sizes only, and the widths of the skip
    connections (the last is the width at the bottom)."""
    emb = p.emb_dim
    widths = [p.channels * m for m in p.channel_mults]
    total = _conv_parameters(p.in_channels, p.channels, 3)
    skips, cur = [p.channels], p.channels
    for i, (res, width) in enumerate(zip(p.resolutions, widths, strict=True)):
        for _ in range(p.num_res_blocks):
            total += _res_block_parameters(cur, width, emb)
            total += _attention_parameters(width) if res in p.attention_resolutions else 0
            cur = width
            skips.append(cur)
        if i < len(widths) - 1:
            total += _conv_parameters(cur, cur, 3)
            skips.append(cur)
    return total + 2 * _res_block_parameters(cur, cur, emb) + _attention_parameters(cur), skips


def parameter_count(p: UNetParams) -> int:
    """Trainable parameters of :class:`UNet` with ``p``, walking the layout of ``UNet.__init__`` with
    sizes only (nothing is allocated)."""
    emb = p.emb_dim
    widths = [p.channels * m for m in p.channel_mults]
    trunk, skips = _trunk_parameters(p)
    total = embedding_parameters(emb, p.channels, p.num_classes) + trunk
    cur = skips[-1]
    for i in reversed(range(len(widths))):
        for _ in range(p.num_res_blocks + 1):
            total += _res_block_parameters(cur + skips.pop(), widths[i], emb)
            total += _attention_parameters(widths[i]) if p.resolutions[i] in p.attention_resolutions else 0
            cur = widths[i]
        if i > 0:
            total += _conv_parameters(cur, cur, 3)
    return total + 2 * cur + _conv_parameters(cur, p.in_channels, 3)


def _groups(channels: int) -> int:
    """The largest number of GroupNorm groups ``<= 32`` dividing ``channels``."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM by the embedding, GroupNorm-SiLU-dropout-conv (zero-initialised),
    plus a (1x1-projected when widths differ) skip; the sum is scaled by ``1/sqrt(2)``."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip: nn.Module = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        out: Tensor = (self.skip(x) + h) * _SQRT_HALF
        return out


class _Attention(nn.Module):
    """Single-head self-attention over the ``H W`` positions, residual scaled by ``1/sqrt(2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        h = F.scaled_dot_product_attention(q, k, v)
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height)
        out: Tensor = (x + self.proj(h)) * _SQRT_HALF
        return out


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


class _Level(nn.Module):
    """One ResBlock, optionally followed by attention."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.res = _ResBlock(cin, cout, emb_dim, dropout)
        self.attn: nn.Module = _Attention(cout) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        out: Tensor = self.attn(self.res(x, emb))
        return out


def _down_levels(p: UNetLayoutParams, emb_dim: int) -> tuple[nn.ModuleList, list[int]]:
    """The levels on the way down (``num_res_blocks`` x :class:`_Level` per level, a
    :class:`_Downsample` between levels) and the widths of the skip connections (the input
    convolution's first; the last is the width at the bottom)."""
    widths = [p.channels * m for m in p.channel_mults]
    down = nn.ModuleList()
    skips = [p.channels]
    cur = p.channels
    for i, (res, width) in enumerate(zip(p.resolutions, widths, strict=True)):
        for _ in range(p.num_res_blocks):
            down.append(_Level(cur, width, emb_dim, p.dropout, res in p.attention_resolutions))
            cur = width
            skips.append(cur)
        if i < len(widths) - 1:
            down.append(_Downsample(cur))
            skips.append(cur)
    return down, skips


def _as_image(x: Tensor, image_shape: tuple[int, int, int], what: str) -> Tensor:
    """``x`` as ``(B, C, H, W)`` images: unchanged when it has that shape, else (a pipeline may hold
    samples in another shape with as many values, e.g. flat vectors) reshaped."""
    if tuple(x.shape[1:]) == image_shape:
        return x
    c, size, _ = image_shape
    if x.ndim < 2 or math.prod(x.shape[1:]) != c * size * size:
        raise ValueError(f"{what} expects x of shape (B, {', '.join(map(str, image_shape))}) "
                         f"or (B, ...) with {c * size * size} values per sample, got {tuple(x.shape)}")
    return rearrange(x.reshape(x.shape[0], -1), "b (c h w) -> b c h w", c=c, h=size, w=size)


class UNet(ScoreModel):
    """A U-Net score network for small images (8x8 to 32x32), in the style of DDPM and NCSN++ (Ho et al. 2020; Song et
    al. 2021), conditioned on time and optionally on a class.

    A small U-Net for images ``(B, in_channels, image_size, image_size)``; see the module docstring.

    ``cond`` (when ``num_classes`` is set) holds integer labels in ``[0, num_classes]``; the label
    ``num_classes`` (:attr:`null_label`) means "no condition" and ``cond=None`` means all null, for
    classifier-free guidance. An unconditional U-Net rejects a ``cond``. ``x`` of another shape with
    ``C H W`` values per sample (a pipeline's flat ``shape``) is reshaped to the image and back.
    """

    name = "unet"
    Params = UNetParams
    params: UNetParams

    def __init__(self, params: UNetParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.output = p.output
        self.image_shape: tuple[int, int, int] = (p.in_channels, p.image_size, p.image_size)
        self.event_shape = self.image_shape
        emb_dim = p.emb_dim
        self.time = TimeEmbedding(emb_dim, p.time_embedding, p.fourier_scale, features=p.channels)
        self.classes = ClassEmbedding(p.num_classes, emb_dim) if p.num_classes is not None else None

        widths = [p.channels * m for m in p.channel_mults]
        self.conv_in = nn.Conv2d(p.in_channels, p.channels, 3, padding=1)
        self.down, skips = _down_levels(p, emb_dim)
        cur = skips[-1]

        self.mid1 = _ResBlock(cur, cur, emb_dim, p.dropout)
        self.mid_attn = _Attention(cur)
        self.mid2 = _ResBlock(cur, cur, emb_dim, p.dropout)

        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            res, width = p.resolutions[i], widths[i]
            for _ in range(p.num_res_blocks + 1):
                self.up.append(_Level(cur + skips.pop(), width, emb_dim, p.dropout, res in p.attention_resolutions))
                cur = width
            if i > 0:
                self.up.append(_Upsample(cur))
        assert not skips

        self.norm_out = _norm(cur)
        self.conv_out = _zero(nn.Conv2d(cur, p.in_channels, 3, padding=1))

    @property
    def null_label(self) -> int | None:
        """The label meaning "no condition" (``num_classes``); ``None`` for an unconditional U-Net."""
        return self.params.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        shape = x.shape
        x = _as_image(x, self.image_shape, "the U-Net")
        emb = embed(self.time, self.classes, t, cond, x.shape[0], x.device).to(x.dtype)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, _Level) else block(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(block, _Level) else block(h)
        out: Tensor = self.conv_out(F.silu(self.norm_out(h)))
        return out.reshape(shape)


class UNetClassifierParams(UNetLayoutParams):
    """Parameters of :class:`UNetClassifier`: the layout of the U-Net's way down (as :class:`UNetParams`)
    and the number of classes."""

    num_classes: Classes = Field(description="Number of classes C; labels lie in [0, C).")

    def _res_blocks(self) -> tuple[str, int]:
        return "len(channel_mults) x num_res_blocks + 2", len(self.channel_mults) * self.num_res_blocks + 2

    def _parameter_count(self) -> int:
        return classifier_parameter_count(self)


def classifier_parameter_count(p: UNetClassifierParams) -> int:
    """Trainable parameters of :class:`UNetClassifier` with ``p``, from the layer sizes (nothing is
    allocated): the time embedding, the trunk shared with :class:`UNet` and the head (a GroupNorm and
    the output layer)."""
    trunk, skips = _trunk_parameters(p)
    cur = skips[-1]
    return embedding_parameters(p.emb_dim, p.channels, None) + trunk + 2 * cur + linear_parameters(cur, p.num_classes)


class UNetClassifier(NoiseClassifier):
    """A noise-conditional image classifier (the downsampling half of the U-Net), trained by ``diffcore train`` on
    noised data, for classifier guidance (Dhariwal & Nichol 2021).

    A noise-conditional image classifier ``p_t(y | x_t)``: the downsampling half of :class:`UNet`
    with a pooled linear head, as the classifiers of Dhariwal & Nichol (2021, Sec. 4 and Appendix;
    the "downsampling trunk of the UNet") used for classifier guidance, trained on perturbed data as
    in Song et al. (2021, Sec. 5 and Appendix I.4).

    ``x`` ``(B, in_channels, image_size, image_size)`` (or ``(B, ...)`` with as many values per
    sample, reshaped) and ``t`` ``(B,)`` map to logits ``(B, num_classes)``::

        conv3x3 -> [level i: num_res_blocks x (ResBlock(c m_i) [+ attention]), strided-conv downsample]
                -> middle: ResBlock, attention, ResBlock
                -> GroupNorm, SiLU, global average pool, Linear(c m_{L-1}, num_classes) (zero-initialised)

    The layers up to the middle block are exactly those of the score :class:`UNet` with the same
    params: ResBlocks take the time embedding (the same :class:`TimeEmbedding`) by FiLM. Dhariwal &
    Nichol pool with attention at 8x8; a global average pool is used here. The zero-initialised head
    starts at the uniform posterior. Train it with :class:`~diffcore.classifier.CrossEntropy`
    (``diffcore train`` on a classifier spec).
    """

    name = "unet"
    Params = UNetClassifierParams
    params: UNetClassifierParams

    def __init__(self, params: UNetClassifierParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.image_shape: tuple[int, int, int] = (p.in_channels, p.image_size, p.image_size)
        self.event_shape = self.image_shape
        emb_dim = p.emb_dim
        self.time = TimeEmbedding(emb_dim, p.time_embedding, p.fourier_scale, features=p.channels)
        self.conv_in = nn.Conv2d(p.in_channels, p.channels, 3, padding=1)
        self.down, skips = _down_levels(p, emb_dim)
        cur = skips[-1]
        self.mid1 = _ResBlock(cur, cur, emb_dim, p.dropout)
        self.mid_attn = _Attention(cur)
        self.mid2 = _ResBlock(cur, cur, emb_dim, p.dropout)
        self.norm_out = _norm(cur)
        self.head = nn.Linear(cur, p.num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        return self.params.num_classes

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = _as_image(x, self.image_shape, "the U-Net classifier")
        emb = embed(self.time, None, t, None, x.shape[0], x.device).to(x.dtype)
        h = self.conv_in(x)
        for block in self.down:
            h = block(h, emb) if isinstance(block, _Level) else block(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        logits: Tensor = self.head(h)
        return logits
