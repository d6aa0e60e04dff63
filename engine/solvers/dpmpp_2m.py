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
from engine.solvers.common import (
    S_NOISE,
    History,
    add_noise,
    ancestral_step,
    eta_param,
    inject_normal,
    sde_step,
)
from engine.solvers.dpmpp_sde import brownian
from engine.units import SOLVERS, Param

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


# ---- the SDE and RES multistep variants (MATH.md 9) ---------------------------------------------------------
#
# Shared form, with h = log(sigma / sigma_next), x~ = D + sigma ren (x itself unless cfg++) and the guided
# estimates D_i of earlier real steps in the history (the same D the step's update used):
#
#     x_next = (sigma_next / sigma) e^(-eta h) x~ + (1 - e^(-(1 + eta) h)) D + corrections(D_i) + noise
#
# A step to sigma 0 returns D (k-diffusion's "denoising step"); a zero-length step returns x~ and keeps the
# history; the first steps use the lower orders the history allows.


class ExponentialMultistep(Solver):
    family = "multistep"
    history_size = 2

    def __init__(self, settings=None) -> None:  # noqa: ANN001
        super().__init__(settings)
        self.history = History(self.history_size)

    def h_back(self, k: int, sigma: float) -> float:
        """log(sigma_{i-k} / sigma_{i-k+1}): the k-th earlier real step's length in t = -log sigma."""
        sigmas = [*self.history.sigmas, sigma]
        return math.log(sigmas[-k - 1]) - math.log(sigmas[-k])


@SOLVERS.register
class DPMpp2MSDE(ExponentialMultistep):
    name = "dpmpp_2m_sde"
    aliases = ("DPM++ 2M SDE", "dpm++2m_sde", "k_dpmpp_2m_sde")
    a1111 = "DPM++ 2M SDE"
    summary = (
        "DPM-Solver++(2M) SDE (k-diffusion's sample_dpmpp_2m_sde, diffusers' sde-dpmsolver++), Brownian-tree noise"
    )
    family = "sde"
    stochastic = True
    order = 2
    params = (
        eta_param(1.0),
        S_NOISE,
        Param("solver_type", "midpoint", kind="choice", choices=("midpoint", "heun"), help="the 2M correction"),
    )
    rank = 45

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        eta, s_noise = self.settings["eta"], self.settings["s_noise"]
        noise = brownian(ctx) if eta and s_noise else None  # first: its prefetch overlaps this evaluation
        p = ctx.predict(x, sigma)
        denoised = p.denoised
        if sigma_next == 0:
            self.history.push(sigma, denoised)
            return denoised
        if sigma_next == sigma:
            return p.renoised
        h = math.log(sigma) - math.log(sigma_next)
        eta_h = eta * h
        x = (sigma_next / sigma) * math.exp(-eta_h) * p.renoised + (-math.expm1(-h - eta_h)) * denoised
        if len(self.history):
            r = self.h_back(1, sigma) / h
            difference = denoised - self.history.values[-1]
            if self.settings["solver_type"] == "heun":
                x = x + ((-math.expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * difference
            else:
                x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * difference
        self.history.push(sigma, denoised)
        if noise is not None:
            down, up = sde_step(h, eta, sigma_next)
            x = add_noise(ctx, x, down, s_noise * up, sigma_next, noise(sigma, sigma_next))
        return x


@SOLVERS.register
class DPMpp3MSDE(ExponentialMultistep):
    name = "dpmpp_3m_sde"
    aliases = ("DPM++ 3M SDE", "dpm++3m_sde", "k_dpmpp_3m_sde")
    a1111 = "DPM++ 3M SDE"
    summary = (
        "DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde), Brownian-tree noise; eta 0 is DPM-Solver++(3M) "
        "(third-order multistep after a first-order start: global order 2)"
    )
    family = "sde"
    stochastic = True
    order = 2
    params = (eta_param(1.0), S_NOISE)
    rank = 46

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        eta, s_noise = self.settings["eta"], self.settings["s_noise"]
        noise = brownian(ctx) if eta and s_noise else None  # first: its prefetch overlaps this evaluation
        p = ctx.predict(x, sigma)
        denoised = p.denoised
        if sigma_next == 0:
            self.history.push(sigma, denoised)
            return denoised
        if sigma_next == sigma:
            return p.renoised
        h = math.log(sigma) - math.log(sigma_next)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * p.renoised + (-math.expm1(-h_eta)) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if len(self.history) == 2:
            d_1, d_2 = self.history.values[-1], self.history.values[-2]
            r0, r1 = self.h_back(1, sigma) / h, self.h_back(2, sigma) / h
            d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif len(self.history) == 1:
            r = self.h_back(1, sigma) / h
            x = x + phi_2 * ((denoised - self.history.values[-1]) / r)
        self.history.push(sigma, denoised)
        if noise is not None:
            down, up = sde_step(h, eta, sigma_next)
            x = add_noise(ctx, x, down, s_noise * up, sigma_next, noise(sigma, sigma_next))
        return x


@SOLVERS.register
class ResMultistep(ExponentialMultistep):
    name = "res_multistep"
    aliases = ("res-multistep",)
    summary = (
        "RES second-order multistep (Zhang et al. 2023, arXiv:2308.02157; ComfyUI's res_multistep, diffusers' "
        "DPM-Solver++ 2M 'heun'); eta > 0 steps to sigma_down and adds ancestral noise"
    )
    order = 2
    stochastic = True  # with eta > 0 (as ddim: deterministic at its default)
    params = (eta_param(0.0), S_NOISE)
    rank = 48

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        p = ctx.predict(x, sigma)
        denoised = p.denoised
        if sigma_next == sigma:
            return p.renoised
        down, up = ancestral_step(sigma, sigma_next, self.settings["eta"])
        if down == 0 or not len(self.history):
            x = x - sigma * p.den + down * p.ren  # Euler (to sigma_down; D at sigma 0)
        else:
            h = math.log(sigma) - math.log(down)
            # c2 = -(distance of the previous estimate) / h, in t = -log sigma: the two estimates' own places
            # (ComfyUI's ancestral variant uses the previous sub-step's length instead, MATH.md 9).
            c2 = -self.h_back(1, sigma) / h
            phi_1 = math.expm1(-h) / -h
            phi_2 = (phi_1 - 1) / -h
            b1, b2 = phi_1 - phi_2 / c2, phi_2 / c2
            x = math.exp(-h) * p.renoised + h * (b1 * denoised + b2 * self.history.values[-1])
        self.history.push(sigma, denoised)
        return inject_normal(ctx, x, down, up * self.settings["s_noise"], sigma_next)
