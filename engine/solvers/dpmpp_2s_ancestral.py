"""dpmpp_2s_ancestral: DPM-Solver++(2S) to sigma_down, then ancestral noise (k-diffusion's sample_dpmpp_2s_ancestral).

With (sigma_down, sigma_up) = get_ancestral_step(sigma, sigma_next, eta), h = log(sigma / sigma_down) and the
stage at s = sqrt(sigma sigma_down) (the midpoint in t = -log sigma):

    x_s    = (s / sigma) x~ - expm1(-h/2) D_1               x~ = D_1 + sigma ren_1 (= x unless cfg++)
    x_down = (sigma_down / sigma) x~ - expm1(-h) D_2        D_2 the guided estimate at (x_s, s)
    x_next = x_down + s_noise sigma_up z,   n' = (sigma_down n + s_noise sigma_up z) / sigma_next

A step to sigma 0 is Euler (x = D_1). No diffusers twin; tests/test_samplers_single.py checks it against the
published algorithm written out in the test. Two evaluations per step, one at the last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.solvers.base import SolverContext
from engine.solvers.common import S_NOISE, ancestral_step, eta_param, inject_normal, zero_length
from engine.solvers.dpm_2 import TwoStage
from engine.units import SOLVERS

if TYPE_CHECKING:
    import torch


@SOLVERS.register
class DPMpp2SAncestral(TwoStage):
    name = "dpmpp_2s_ancestral"
    aliases = ("DPM++ 2S a", "dpm++2s_a", "dpmpp_2s_a", "k_dpmpp_2s_a")
    a1111 = "DPM++ 2S a"
    summary = (
        "DPM-Solver++(2S) (Lu et al. 2022) to sigma_down, then ancestral noise; k-diffusion's sample_dpmpp_2s_ancestral"
    )
    family = "ancestral"
    stochastic = True
    order = 2
    params = (eta_param(1.0), S_NOISE)
    rank = 35

    def evaluations(self, i: int, sigmas: Sequence[float]) -> int:
        down, _ = ancestral_step(sigmas[i], sigmas[i + 1], self.settings["eta"])
        return 1 if down == 0 or zero_length(sigmas[i], down) else self.stages

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        down, up = ancestral_step(sigma, sigma_next, self.settings["eta"])
        p1 = ctx.predict(x, sigma)
        if down == 0 or down == sigma:
            x = x - sigma * p1.den + down * p1.ren  # Euler to 0 (x = D); a zero-length step leaves x~
        else:
            h = math.log(sigma) - math.log(down)
            s = math.exp(-(-math.log(sigma) + h / 2))
            x_tilde = p1.renoised
            x_s = (s / sigma) * x_tilde - math.expm1(-h / 2) * p1.denoised
            p2 = ctx.predict(x_s, s)
            x = (down / sigma) * x_tilde - math.expm1(-h) * p2.denoised
        return inject_normal(ctx, x, down, up * self.settings["s_noise"], sigma_next)
