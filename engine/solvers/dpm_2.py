"""dpm_2 and dpm_2_ancestral: k-diffusion's DPM-Solver-2-inspired midpoint step at the geometric mean.

    s_mid  = sqrt(sigma * s_end)                     s_end = sigma_next (dpm_2) or sigma_down (ancestral)
    x_mid  = x - sigma den_1 + s_mid ren_1           (the pair move, as every Runge-Kutta stage, MATH.md 4)
    x_end  = x - sigma den_2 + s_end ren_2           (den_2, ren_2 at (x_mid, s_mid))
    dpm_2_ancestral then adds s_noise sigma_up z and tracks n' (MATH.md 9).

With den == ren == e this is k-diffusion's x + d_2 (s_end - sigma): diffusers' KDPM2DiscreteScheduler and
KDPM2AncestralDiscreteScheduler. A step to sigma 0 is Euler (one evaluation), as both peers do; the stage
timestep is the fractional t of s_mid (diffusers interpolates it too). ComfyUI's KSampler also drops the
grid's second-to-last sigma for these samplers; the lab samples the grid it is given (MATH.md 9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.solvers.base import Solver, SolverContext
from engine.solvers.common import S_NOISE, ancestral_step, eta_param, inject_normal, zero_length
from engine.units import SOLVERS

if TYPE_CHECKING:
    import torch


def geometric_midpoint(sigma: float, sigma_end: float) -> float:
    """exp(lerp(log sigma, log sigma_end, 1/2)), as k-diffusion writes it."""
    return math.exp(0.5 * (math.log(sigma) + math.log(sigma_end)))


class TwoStage(Solver):
    """A two-evaluation step that is one evaluation where it ends at sigma 0 or has zero length."""

    stages = 2
    final_stages = 1

    def evaluations(self, i: int, sigmas: Sequence[float]) -> int:
        if sigmas[i + 1] == 0 or zero_length(sigmas[i], sigmas[i + 1]):
            return 1
        return self.stages


class DPM2Base(TwoStage):
    order = 2

    def midpoint_step(self, ctx: SolverContext, x: torch.Tensor, sigma: float, sigma_end: float) -> torch.Tensor:
        p1 = ctx.predict(x, sigma)
        if sigma_end == 0 or sigma_end == sigma:
            return x - sigma * p1.den + sigma_end * p1.ren  # Euler to 0; a zero-length step leaves x~
        s_mid = geometric_midpoint(sigma, sigma_end)
        p2 = ctx.predict(x - sigma * p1.den + s_mid * p1.ren, s_mid)
        return x - sigma * p2.den + sigma_end * p2.ren


@SOLVERS.register
class DPM2(DPM2Base):
    name = "dpm_2"
    aliases = ("DPM2", "k_dpm_2", "dpm2")
    a1111 = "DPM2"
    summary = "k-diffusion's DPM-Solver-2: midpoint at the geometric mean of sigma and sigma_next (diffusers' KDPM2)"
    family = "runge-kutta"
    rank = 25

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.midpoint_step(ctx, x, ctx.sigmas[i], ctx.sigmas[i + 1])


@SOLVERS.register
class DPM2Ancestral(DPM2Base):
    name = "dpm_2_ancestral"
    aliases = ("DPM2 a", "k_dpm_2_a", "dpm2_a", "dpm_2_a")
    a1111 = "DPM2 a"
    summary = (
        "dpm_2 to sigma_down, then ancestral noise (diffusers' KDPM2Ancestral, k-diffusion's sample_dpm_2_ancestral)"
    )
    family = "ancestral"
    stochastic = True
    params = (eta_param(1.0), S_NOISE)
    rank = 26

    def evaluations(self, i: int, sigmas: Sequence[float]) -> int:
        # Two stages unless the move ends at sigma 0 (eta > 1 can make sigma_down 0 before the grid's end).
        down, _ = ancestral_step(sigmas[i], sigmas[i + 1], self.settings["eta"])
        return 1 if down == 0 or zero_length(sigmas[i], down) else self.stages

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        down, up = ancestral_step(sigma, sigma_next, self.settings["eta"])
        x = self.midpoint_step(ctx, x, sigma, down)
        return inject_normal(ctx, x, down, up * self.settings["s_noise"], sigma_next)
