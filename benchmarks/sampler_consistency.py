"""Cross-library consistency: diffcore's samplers against k-diffusion's on the same grid, in float64.

diffcore's ``ddim``, ``dpm_solver_pp`` 2M and 3M and ``heun`` on the karras grid against k-diffusion's
Euler, DPM-Solver++(2M) in its two variants, DPM-Solver++(3M) and Heun on ``get_sigmas_karras(n)``,
all from the same prior draws of the reference mixture and its exact score (``common.py``; how
k-diffusion sees the score: ``peers.py``). Prints ``max |ours - theirs|`` per pair: pairs of the same
algorithm must agree to rounding; the others are expected to differ (see :func:`run_consistency`).

    python benchmarks/sampler_consistency.py    # seconds; needs k-diffusion (else skipped, with a notice)
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import torch
from common import REFERENCE_2D, SEED, Setup, parse_args
from peers import Denoiser, k_diffusion_sigmas, load_k_diffusion
from torch import Tensor

from diffcore.sampler import tweedie_denoise


def run_consistency(kd: types.ModuleType, *, num: int = 256, n: int = 11) -> None:
    """diffcore's samplers on the karras grid against k-diffusion's on ``get_sigmas_karras(n)``, in float64.

    k-diffusion's ``n`` levels end with a step to zero, a Tweedie denoising step, so its run is
    diffcore's ``n - 1`` steps plus ``final_denoise`` (Heun: plus :func:`tweedie_denoise`, as
    k-diffusion's last Heun step to zero is an Euler step); ``lower_order_final`` is off, as
    k-diffusion keeps the full order up to the step into ``s(t_min)``. Pairs:

    - ``ddim`` (``eta = 0``) is Euler on ``dy/ds = (y - D) / s``: ``sample_euler``;
    - ``dpm_solver_pp`` 2M weights the divided difference with the exact ``h^2 phi_2(-h)``: that is
      ``sample_dpmpp_2m_sde`` with ``eta = 0, solver_type="heun"`` (diffusers' ``solver_type="heun"``),
      not ``sample_dpmpp_2m`` (DPM-Solver++(2M) of the paper, diffusers' default ``"midpoint"``), which
      uses ``(1 - e^-h) / (2 r)``: the two agree to second order only;
    - ``dpm_solver_pp`` 3M against ``sample_dpmpp_3m_sde`` with ``eta = 0``: the same warm-up and
      first-derivative term, but k-diffusion (like diffusers and the DPM-Solver reference code)
      weights ``D2 = h^2 P''/2`` with ``phi_2(-h) - 1/2``, half of the Taylor term ``h^3 phi_3(-h) P''``
      that diffcore uses (which is exact for a quadratic data prediction): expected to differ;
    - ``heun`` + Tweedie: ``sample_heun``.
    """
    setup = Setup.build(REFERENCE_2D)
    x_T = setup.prior(num, torch.float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # get_sigmas_karras builds its ramp in the default dtype
    try:
        sigmas = k_diffusion_sigmas(kd, setup, n)
    finally:
        torch.set_default_dtype(previous)

    def ours(name: str, **params: Any) -> Tensor:
        return setup.pipe.with_sampler(name, steps=n - 1, grid="karras", **params).sample(
            num, seed=SEED, latents=x_T, dtype=torch.float64).x

    def theirs(fn: str, **kwargs: Any) -> Tensor:
        torch.manual_seed(SEED)
        out: Tensor = getattr(kd, fn)(Denoiser(setup), x_T / setup.alpha_T, sigmas, disable=True, **kwargs)
        return out

    dpmpp_2m = ours("dpm_solver_pp", order=2, lower_order_final=False, final_denoise=True)
    dpmpp_3m = ours("dpm_solver_pp", order=3, lower_order_final=False, final_denoise=True)
    heun = tweedie_denoise(setup.score, setup.process, ours("heun"), setup.process.t_min)
    pairs: list[tuple[str, Tensor, str, Tensor, bool]] = [
        ("ddim +den", ours("ddim", final_denoise=True), "euler", theirs("sample_euler"), True),
        ("dpm_solver_pp 2M +den", dpmpp_2m, "dpmpp_2m_sde eta=0 heun",
         theirs("sample_dpmpp_2m_sde", eta=0.0, solver_type="heun"), True),
        ("dpm_solver_pp 2M +den", dpmpp_2m, "dpmpp_2m (midpoint)", theirs("sample_dpmpp_2m"), False),
        ("dpm_solver_pp 3M +den", dpmpp_3m, "dpmpp_3m_sde eta=0", theirs("sample_dpmpp_3m_sde", eta=0.0), False),
        ("heun + tweedie", heun, "heun", theirs("sample_heun"), True),
    ]
    print(f"\n== Consistency (float64, {num} samples, reference-2d, k-diffusion karras n={n}): max |ours - theirs|")
    for label, x, their_label, y, same in pairs:
        diff = float((x - y).abs().max())
        agree = diff <= 1e-6 * max(float(y.abs().max()), 1.0)
        status = ("ok: same algorithm" if agree else "DIFFERS: bug?") if same else \
            ("agrees" if agree else "differs, as expected (a different scheme; see the docstring)")
        print(f"  diffcore {label:<22} vs k-diffusion {their_label:<24} {diff:.2e}  {status}")


def section(*, kd: types.ModuleType | None) -> None:
    """:func:`run_consistency`, or a notice that it is skipped without k-diffusion."""
    if kd is None:
        print("\n== Consistency with k-diffusion: skipped (k-diffusion not installed)")
        return
    run_consistency(kd)


def main(argv: Sequence[str] | None = None) -> None:
    parse_args(__doc__, "no effect: the check is already small", argv)
    section(kd=load_k_diffusion())


if __name__ == "__main__":
    main()
