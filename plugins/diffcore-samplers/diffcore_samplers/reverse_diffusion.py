"""The reverse-diffusion predictor (Song et al. 2021, eq. 46 and Appendix E; seed 001, "reverse SDE").

Discretise the forward SDE on the grid as ``x_t = x_s + f_s(x_s) + G_s z`` for consecutive grid times
``s < t``; the reverse SDE of seed 001, ``dx = [f - g^2 s] dt + g dw_bar``, is then discretised with the
*same* ``f`` and ``G``::

    x_s = x_t - f(x_t) + G^2 s(x_t, t) + G z.

``f`` and ``G`` come from the forward step from ``s`` to ``t``:

- linear-Gaussian process: the exact transition ``x_t = alpha_{t|s} x_s + sigma_{t|s} z`` gives
  ``f(x) = (alpha_{t|s} - 1) x`` and ``G^2 = sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``. On VP
  this is score_sde's discretisation with the DDPM step ``sqrt(1 - beta_i)`` (``beta_i = 1 - abar_t /
  abar_s``), on VE its ``G^2 = sigma_t^2 - sigma_s^2``;
- any other process: the Euler-Maruyama step, ``f = f(x, t) (t - s)``, ``G = g(t) sqrt(t - s)``, which
  makes the predictor the reverse Euler-Maruyama step (score_sde's generic ``SDE.discretize``).

The step (:func:`~diffcore_samplers.common.reverse_diffusion_step`, with
:func:`~diffcore_samplers.common.discretized_forward`) is shared with ``pc``'s ``reverse_diffusion``
predictor and lives in :mod:`diffcore_samplers.common`.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from diffcore.component import describe
from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.limits import Steps
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler
from diffcore_samplers.common import REVERSE_DIFFUSION


class ReverseDiffusionParams(GridParams):
    """Parameters of ``reverse_diffusion``."""

    steps: Steps = Field(1000, description="Steps from T to t_min, one score evaluation each.")
    grid: GridKind = Field("uniform", description="Time grid: uniform (score_sde's), quadratic, logsnr or karras "
                           "(the last two need a linear-Gaussian process).")
    denoise_last: bool = Field(True, description="Skip the noise of the last step (score_sde's noise_removal).")


class ReverseDiffusion(Sampler):
    """Reverse diffusion (Song et al. 2021, Sec. 4.2): the reverse SDE discretised with the forward process's own
    discrete steps; for any process.

    The reverse-diffusion predictor run on its own: ``x <- x - f + G^2 s(x, t) + G z`` between
    consecutive grid times, with ``f`` and ``G`` of the forward process's own discretisation (module
    docstring). Works for any process. ``NFE = steps``; noise of step ``i``:
    ``noise.normal(event, step=i)``; ``x_T`` ``(B, *event)``.
    """

    name = "reverse_diffusion"
    Params = ReverseDiffusionParams
    params: ReverseDiffusionParams
    requires = REVERSE_DIFFUSION.requires

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        times = time_grid(process, p.steps, p.grid, rho=p.rho).tolist()
        x = REVERSE_DIFFUSION.run(describe(self), score_fn, process, x_T, times, noise, callback,
                                  noise_last=not p.denoise_last)
        return x, p.steps
