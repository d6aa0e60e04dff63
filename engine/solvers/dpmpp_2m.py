"""dpmpp_2m: DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095), in the data-prediction form k-diffusion uses.

With t = -log sigma, h = t_next - t and D_i the denoised estimate of step i:

    D' = D_i                                              first step, and the last (to sigma 0)
    D' = (1 + 1/(2r)) D_i - 1/(2r) D_(i-1),  r = h_(i-1)/h  otherwise
    x_next = (sigma_next / sigma) x~ - expm1(-h) D'       x~ = D_i + sigma ren (= x unless den != ren)

so the guided pair rides it as every solver (CFG++: the clean estimates are guided, x~ re-noises with u; the
history keeps the guided D). One model evaluation per step. Equals diffusers' DPMSolverMultistepScheduler
(algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint") with lower_order_final off; diffusers'
default also takes the second-to-last step at first order when there are fewer than 15 steps (docs/MATH.md 4).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine.solvers.base import Solver, SolverContext
from engine.units import SOLVERS

if TYPE_CHECKING:
    import torch


@SOLVERS.register
class DPMpp2M(Solver):
    name = "dpmpp_2m"
    aliases = ("DPM++ 2M", "dpm++2m", "dpmpp2m")
    a1111 = "DPM++ 2M"
    summary = "DPM-Solver++(2M): second-order multistep on the denoised estimates, one evaluation per step"
    family = "multistep"
    order = 2
    rank = 40

    def __init__(self, settings=None) -> None:  # noqa: ANN001
        super().__init__(settings)
        self.previous: torch.Tensor | None = None  # D of the step before
        self.h_previous: float | None = None

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        p = ctx.predict(x, sigma)
        denoised = p.denoised
        if sigma_next == 0:
            self.previous = denoised
            return denoised
        h = math.log(sigma) - math.log(sigma_next)
        if h == 0:  # a repeated sigma (some grids past T steps): a zero-length step, the history kept
            return p.renoised
        if self.previous is None or self.h_previous is None:
            mixed = denoised
        else:
            r = self.h_previous / h
            mixed = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * self.previous
        self.previous, self.h_previous = denoised, h
        return (sigma_next / sigma) * p.renoised - math.expm1(-h) * mixed
