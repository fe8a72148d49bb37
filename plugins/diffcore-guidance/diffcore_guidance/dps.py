"""Diffusion posterior sampling for a linear measurement (Chung et al. 2023)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from diffcore.condition import Condition
from diffcore.errors import CompatibilityError, UsageError
from diffcore.guidance import Guidance, in_interval
from diffcore.inputs import load_npy
from diffcore.model import ConditionalScoreFn, ScoreModel
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast
from diffcore_guidance.common import IntervalParams

MAX_SCALE = 1e4


class DPSParams(IntervalParams):
    """Parameters of ``dps``."""

    noise_std: float = Field(gt=0.0, le=1e6, description="Standard deviation of the measurement noise, "
                             "y = A x + N(0, noise_std^2 I); small values for (nearly) noiseless measurements.")
    scale: float = Field(1.0, ge=0.0, le=MAX_SCALE, description="Multiplies the likelihood gradient (Chung et al. "
                         "2023 tune a step size; 1: the Gaussian likelihood as it stands).")
    matrix: str | None = Field(None, description="A .npy file holding the operator A, shape (m, D) with D the values "
                               "per sample; null: A is the condition's mask (observe the masked coordinates).")


class PosteriorSampling(Guidance):
    """Diffusion posterior sampling (Chung et al. 2023): solve a noisy linear inverse problem ``y = A x + n``
    (inpainting with a mask, or any matrix ``A``) by the gradient of the measurement's likelihood at the denoised
    estimate.

    Diffusion posterior sampling (DPS, Chung et al. 2023) for a linear measurement
    ``y = A x_0 + n``, ``n ~ N(0, noise_std^2 I)``, with ``A`` a mask or a matrix.

    In score form (Sec. 3.2, eq. 16 and Algorithm 1)::

        grad log p_t(x | y) ~ s(x, t) + scale * grad_x log N(y; A x0_hat(x, t), noise_std^2 I),
        x0_hat(x, t) = (x + sigma_t^2 s(x, t)) / alpha_t          (Tweedie's formula)

    the gradient taken by autograd through the model (its forward pass runs with gradients, then one
    backward pass). ``A`` is a mask (``matrix: null``; the condition's ``mask`` ``(B, *event)`` and
    ``observed`` ``(B, *event)``, read on the mask) or the matrix ``(m, D)`` of a ``.npy`` file (the
    condition's ``observed`` ``(B, m)``). The approximation ``p(y | x_t) ~ p(y | x0_hat)`` is the
    paper's; its error is measured against exact Gaussian-mixture posteriors in the tests.
    """

    name = "dps"
    Params = DPSParams
    params: DPSParams
    requires = frozenset({LINEAR_GAUSSIAN})
    needs = frozenset({"observed"})  # and the mask, without a matrix (check_condition)
    reads = frozenset({"observed", "mask"})

    def __init__(self, params: DPSParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.matrix: Tensor | None = None
        if self.params.matrix is not None:
            array = load_npy(Path(self.params.matrix), what="the dps matrix", kinds="fiu")
            if array.ndim != 2 or not bool(torch.isfinite(torch.as_tensor(array, dtype=torch.float64)).all()):
                raise UsageError(f"the dps matrix {self.params.matrix} must be a finite 2-D array (m, D), got shape "
                                 f"{array.shape}")
            self.matrix = torch.as_tensor(array, dtype=torch.float64)


    def check(self, model: ScoreModel, process: ForwardProcess, shape: tuple[int, ...]) -> None:
        self.params.check_interval(self.name, process)
        if self.matrix is not None and self.matrix.shape[1] != math.prod(shape):
            raise CompatibilityError(f"guidance 'dps': the matrix {self.params.matrix} has {self.matrix.shape[1]} "
                                     f"columns but samples of shape {list(shape)} have {math.prod(shape)} values")

    def check_condition(self, cond: Condition) -> None:
        y = cond.observed
        if self.matrix is None and cond.mask is None:
            raise UsageError("guidance 'dps' without a matrix observes the masked coordinates: pass --mask MASK.npy "
                             "(True where observed) to `diffcore sample` (Python: Condition(mask=...)), or set the "
                             "guidance's matrix")
        if y is None:
            return
        if self.matrix is not None and tuple(y.shape[1:]) != (self.matrix.shape[0],):
            raise UsageError(f"guidance 'dps': the matrix has {self.matrix.shape[0]} rows, so the observed "
                             f"measurements need shape (num, {self.matrix.shape[0]}); got {tuple(y.shape)}")
        if self.matrix is None and cond.mask is not None and y.shape != cond.mask.shape:
            raise UsageError(f"guidance 'dps': the observed values have shape {tuple(y.shape)} but the mask "
                             f"{tuple(cond.mask.shape)}")

    def guide(self, score_fn: ConditionalScoreFn, process: ForwardProcess) -> ConditionalScoreFn:
        lg = require_linear_gaussian(process, "guidance 'dps'")
        p = self.params
        precision = p.scale / p.noise_std**2

        def residual(x0: Tensor, cond: Condition) -> Tensor:
            """``y - A x0`` per sample, flattened ``(B, m)``."""
            assert cond.observed is not None
            if self.matrix is None:
                assert cond.mask is not None
                return ((cond.observed - x0) * cond.mask).reshape(x0.shape[0], -1)
            a = self.matrix.to(device=x0.device, dtype=x0.dtype)
            return cond.observed - x0.reshape(x0.shape[0], -1) @ a.T

        def guided(x: Tensor, t: Tensor, cond: Condition) -> Tensor:
            active = in_interval(t, p.interval)
            if cond.observed is None or not bool(active.any()):
                return score_fn(x, t, cond)
            alpha, sigma = bcast(lg.alpha(t), x), bcast(lg.sigma(t), x)
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                score = score_fn(leaf, t, cond)
                x0 = (leaf + sigma**2 * score) / alpha
                log_likelihood = -0.5 * residual(x0, cond).square().sum(1)
                (grad,) = torch.autograd.grad(log_likelihood.sum(), leaf)
            return score.detach() + bcast(precision * active.to(x.dtype), x) * grad

        return guided
