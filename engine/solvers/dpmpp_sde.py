"""dpmpp_sde: DPM-Solver++ (stochastic), k-diffusion's sample_dpmpp_sde (r = 1/2), Brownian-tree noise.

With t = -log sigma, h = log(sigma / sigma_next), the stage s = sqrt(sigma sigma_next) and two ancestral
sub-steps that both start at sigma (eta, s_noise as every stochastic unit, MATH.md 9):

    (d1, u1) = get_ancestral_step(sigma, s, eta)
    x_s      = (d1 / sigma) x~ - expm1(-log(sigma / d1)) D_1 + s_noise u1 B(sigma, s)
    (d2, u2) = get_ancestral_step(sigma, sigma_next, eta)
    x_next   = (d2 / sigma) x~ - expm1(-log(sigma / d2)) D_2 + s_noise u2 B(sigma, sigma_next)

where x~ = D_1 + sigma ren_1 (= x unless cfg++), D_2 the guided estimate at (x_s, s) and B the run's Brownian
noise (engine.noise.BrownianNoise). The true noise is n_s = (d1 n + s_noise u1 B1) / s for the stage's
evaluation and n' = (d2 n + s_noise u2 B2) / sigma_next after the step. A step to sigma 0 is Euler (one
evaluation). Equals diffusers' DPMSolverSDEScheduler given the same float32 sigmas and noise seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine.solvers.base import SolverContext
from engine.solvers.common import S_NOISE, add_noise, ancestral_step, eta_param
from engine.solvers.dpm_2 import TwoStage
from engine.units import SOLVERS

if TYPE_CHECKING:
    import torch

    from engine.noise import BrownianNoise


def brownian(ctx: SolverContext, stages: bool = False) -> BrownianNoise:
    """The run's Brownian noise over the grid's nonzero range (k-diffusion's BrownianTreeNoiseSampler bounds),
    its increments for every step prefetched (and for each step's midpoint stage too, `stages`)."""
    nonzero = [s for s in ctx.sigmas if s > 0]
    noise = ctx.noise.brownian(min(nonzero), max(nonzero))
    if noise.prefetching:
        return noise
    intervals = []
    for sigma, sigma_next in zip(ctx.sigmas[:-1], ctx.sigmas[1:], strict=True):
        if sigma_next > 0 and sigma_next != sigma:
            if stages:
                intervals.append((sigma, midpoint(sigma, sigma_next)))
            intervals.append((sigma, sigma_next))
    noise.prefetch(intervals)
    return noise


def midpoint(sigma: float, sigma_next: float) -> float:
    """The stage sigma of the two sub-steps: exp(-(t + h/2)) with t = -log sigma (k-diffusion's r = 1/2)."""
    h = math.log(sigma) - math.log(sigma_next)
    return math.exp(-(-math.log(sigma) + h / 2))


def expm1_log_ratio(down: float, sigma: float) -> float:
    """expm1(log(down / sigma)) = down / sigma - 1, exact near 1; -1 where eta > 1 makes sigma_down 0."""
    return math.expm1(math.log(down) - math.log(sigma)) if down > 0 else -1.0


@SOLVERS.register
class DPMppSDE(TwoStage):
    name = "dpmpp_sde"
    aliases = ("DPM++ SDE", "dpm++sde", "k_dpmpp_sde")
    a1111 = "DPM++ SDE"
    summary = "DPM-Solver++ (stochastic, two stages, Brownian-tree noise); k-diffusion's sample_dpmpp_sde, diffusers' DPMSolverSDE"
    family = "sde"
    stochastic = True
    order = 2
    params = (eta_param(1.0), S_NOISE)
    rank = 50

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        eta, s_noise = self.settings["eta"], self.settings["s_noise"]
        noise = brownian(ctx, stages=True) if eta and s_noise else None  # first: its prefetch overlaps predict
        p1 = ctx.predict(x, sigma)
        if sigma_next == 0 or sigma_next == sigma:
            return x - sigma * p1.den + sigma_next * p1.ren  # Euler to 0 (x = D); zero length: x~
        s = midpoint(sigma, sigma_next)
        x_tilde, n = p1.renoised, ctx.true_noise

        d1, u1 = ancestral_step(sigma, s, eta)
        x_s = (d1 / sigma) * x_tilde - expm1_log_ratio(d1, sigma) * p1.denoised
        if noise is not None and u1 > 0:
            x_s = add_noise(ctx, x_s, d1, s_noise * u1, s, noise(sigma, s))
        p2 = ctx.predict(x_s, s)
        ctx.true_noise = n  # the second sub-step starts again from sigma, where the noise was n

        d2, u2 = ancestral_step(sigma, sigma_next, eta)
        x = (d2 / sigma) * x_tilde - expm1_log_ratio(d2, sigma) * p2.denoised
        if noise is not None and u2 > 0:
            x = add_noise(ctx, x, d2, s_noise * u2, sigma_next, noise(sigma, sigma_next))
        return x
