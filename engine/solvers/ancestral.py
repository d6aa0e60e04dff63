"""euler_ancestral and ddim: one evaluation, an Euler (DDIM) move to sigma_down, fresh noise of std sigma_up.

    D = x - sigma den
    x_down = x - sigma den + sigma_down ren          (= D + sigma_down ren: CFG++ re-noises with u)
    x_next = x_down + s_noise sigma_up z,            z ~ N(0, 1) from the run's generator (MATH.md 2, 8)
    n'     = (sigma_down n + s_noise sigma_up z) / sigma_next

(sigma_down, sigma_up) are k-diffusion's `get_ancestral_step(sigma, sigma_next, eta)`. DDIM with eta is the
same step in the VE variable (MATH.md 9 shows DDIM's sigma_t is eta times this sigma_up); its default eta is
0, where it is Euler exactly. euler_ancestral equals diffusers' EulerAncestralDiscreteScheduler (eta 1) and
k-diffusion's sample_euler_ancestral; ddim equals DDIMScheduler (eta 0 and 1) where its grid ends at sigma 0
(`set_alpha_to_one`; SDXL ships false, where diffusers stops at sigma_min = 0.029, MATH.md 9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.solvers.base import Solver, SolverContext
from engine.solvers.common import S_NOISE, ancestral_step, eta_param, inject_normal
from engine.units import SOLVERS

if TYPE_CHECKING:
    import torch


class AncestralEuler(Solver):
    family = "ancestral"
    stochastic = True
    order = 1

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        p = ctx.predict(x, sigma)
        down, up = ancestral_step(sigma, sigma_next, self.settings["eta"])
        # The pair move of `runge_kutta.pair_move`, written out so that eta 0 is euler bit for bit.
        x = x - sigma * p.den + down * p.ren
        return inject_normal(ctx, x, down, up * self.settings["s_noise"], sigma_next)


@SOLVERS.register
class EulerAncestral(AncestralEuler):
    name = "euler_ancestral"
    aliases = ("Euler a", "euler_a", "k_euler_a", "euler-ancestral")
    a1111 = "Euler a"
    summary = (
        "Euler with ancestral noise; diffusers' EulerAncestralDiscreteScheduler, k-diffusion's sample_euler_ancestral"
    )
    params = (eta_param(1.0), S_NOISE)
    rank = 5


@SOLVERS.register
class DDIM(AncestralEuler):
    name = "ddim"
    aliases = ("DDIM",)
    a1111 = "DDIM"
    summary = "DDIM (Song et al. 2021): Euler in the VE variable; eta > 0 adds DDIM's noise (diffusers' DDIMScheduler)"
    params = (eta_param(0.0), S_NOISE)
    rank = 70
