"""Standard samplers: reverse-SDE solvers (``euler_maruyama``, ``reverse_diffusion``, ``ancestral``,
``pc``, ``reverse_sde`` through torchsde), Langevin dynamics (``langevin``, ``annealed_langevin``) and
probability-flow ODE solvers (``probability_flow`` through torchdiffeq, ``ddim``, ``heun``,
``dpm_solver``, ``dpm_solver_pp``, ``unipc``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore import hookimpl
from diffcore_samplers.ancestral import Ancestral
from diffcore_samplers.ddim import DDIM
from diffcore_samplers.dpm_solver import DPMSolver
from diffcore_samplers.dpm_solver_pp import DPMSolverPP
from diffcore_samplers.euler_maruyama import EulerMaruyama
from diffcore_samplers.heun import Heun
from diffcore_samplers.langevin import AnnealedLangevin, Langevin
from diffcore_samplers.pc import PC
from diffcore_samplers.probability_flow import ProbabilityFlow
from diffcore_samplers.reverse_diffusion import ReverseDiffusion
from diffcore_samplers.reverse_sde import ReverseSDE
from diffcore_samplers.unipc import UniPC

__all__ = ["DDIM", "PC", "Ancestral", "AnnealedLangevin", "DPMSolver", "DPMSolverPP", "EulerMaruyama", "Heun",
           "Langevin", "ProbabilityFlow", "ReverseDiffusion", "ReverseSDE", "UniPC"]


@hookimpl
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    register(EulerMaruyama)
    register(ProbabilityFlow)
    register(Heun)
    register(ReverseSDE)
    register(ReverseDiffusion)
    register(Ancestral)
    register(PC)
    register(Langevin)
    register(AnnealedLangevin)
    register(DDIM)
    register(DPMSolver)
    register(DPMSolverPP)
    register(UniPC)
