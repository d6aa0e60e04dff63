"""uni_pc and uni_pc_bh2: UniPC (Zhao et al. 2023, arXiv:2302.04867), the predictor UniP and corrector UniC
on the denoised estimates (diffusers' UniPCMultistepScheduler with predict_x0, solver_type bh1 / bh2).

One evaluation per step. Step i evaluates D_i at the predicted x_i, corrects x_i with UniC (which reuses D_i:
no extra evaluation), then predicts x_(i+1) from the corrected x_i with UniP. In t = -log sigma, with
h = log(sigma_s0 / sigma_t), the earlier estimates' offsets r_k = -log(sigma_k / sigma_s0) / h and
D1_k = (D_k - D_s0) / r_k:

    x_t = (sigma_t / sigma_s0) x~ - expm1(-h) D_s0 - B(h) sum_k rho_k D1_k

with B(h) = -h (bh1) or expm1(-h) (bh2) and rho solving UniPC's order conditions (`unipc_rhos`). x~ = x +
sigma (ren - den) is the corrected point re-noised with ren, so CFG++ rides it as every data-prediction solver
(MATH.md 9); the history keeps the guided D. As diffusers does, the order is lowered for the final steps
(min(order, steps left)) and the last step returns D (the estimate at the uncorrected point). A zero-length
step returns x~ and leaves the state alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from engine.solvers.base import Solver, SolverContext
from engine.solvers.common import History, solve
from engine.units import SOLVERS, Param

if TYPE_CHECKING:
    import torch


def unipc_rhos(rks: Sequence[float], h: float, variant: str, corrector: bool) -> tuple[list[float], float]:
    """(rho, B(h)) of UniP (corrector False) or UniC (True) for offsets `rks` (the last is 1), as diffusers.

    hh = -h; phi_k: h phi_1 = expm1(hh), then b_i = h_phi_k i! / B(h) with h_phi_k the Taylor remainders;
    UniC solves R rho = b over all rks (rho = 1/2 at order 1), UniP over all but the last (1/2 at order 2).
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    order = len(rks)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    if corrector:
        rhos = [0.5] if order == 1 else solve(rows, b)
    elif order == 1:
        rhos = []
    elif order == 2:
        rhos = [0.5]
    else:
        rhos = solve([row[:-1] for row in rows[:-1]], b[:-1])
    return rhos, b_h


class UniPC(Solver):
    family = "multistep"
    # UniPC-p with its corrector is of order p + 1 between the ends; the first-order start and the lowered
    # orders of the last steps (diffusers' lower_order_final) make the global order 2.
    order = 2
    variant: ClassVar[str]
    params = (Param("order", 3, kind="int", minimum=1, maximum=3, help="UniP's order (diffusers' 2, ComfyUI's 3)"),)

    def __init__(self, settings=None) -> None:  # noqa: ANN001
        super().__init__(settings)
        self.history = History(int(self.settings["order"]))  # (sigma, D) of the last steps
        self.last: tuple[Any, float] | None = None  # (x~ the last prediction moved from, its sigma)
        self.last_order = 0

    def update(self, x: Any, sigma_s0: float, sigma_t: float, order: int, model_t: Any = None) -> Any:
        """UniP (model_t None) from x at sigma_s0 to sigma_t, or UniC with the estimate model_t at sigma_t."""
        values, sigmas = self.history.values, self.history.sigmas
        m0 = values[-1]
        h = math.log(sigma_s0) - math.log(sigma_t)
        rks, d1s = [], []
        for k in range(1, order):
            r = -(math.log(sigmas[-k - 1]) - math.log(sigma_s0)) / h
            rks.append(r)
            d1s.append((values[-k - 1] - m0) / r)
        rks.append(1.0)
        rhos, b_h = unipc_rhos(rks, h, self.variant, corrector=model_t is not None)
        out = (sigma_t / sigma_s0) * x - math.expm1(-h) * m0
        residual = sum(rho * d1 for rho, d1 in zip(rhos, d1s, strict=False))
        if model_t is not None:
            residual = residual + rhos[-1] * (model_t - m0)
        if isinstance(residual, (int, float)) and residual == 0:
            return out
        return out - b_h * residual

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        p = ctx.predict(x, sigma)
        denoised = p.denoised
        if sigma_next == sigma:
            return p.renoised
        if sigma_next == 0:
            return denoised  # UniP to sigma 0 at order 1 is D; the corrected x would not change it
        if self.last is not None and len(self.history):
            x_last, sigma_last = self.last
            x = self.update(x_last, sigma_last, sigma, self.last_order, model_t=denoised)
        self.history.push(sigma, denoised)
        order = min(int(self.settings["order"]), ctx.steps - i, len(self.history))
        x_tilde = x if p.ren is p.den else x + sigma * (p.ren - p.den)
        self.last, self.last_order = (x_tilde, sigma), order
        return self.update(x_tilde, sigma, sigma_next, order)


@SOLVERS.register
class UniPCBh1(UniPC):
    name = "uni_pc"
    aliases = ("UniPC", "unipc")
    a1111 = "UniPC"
    summary = "UniPC predictor-corrector, B(h) = h (bh1; ComfyUI's uni_pc), diffusers' UniPCMultistepScheduler"
    variant = "bh1"
    rank = 60


@SOLVERS.register
class UniPCBh2(UniPC):
    name = "uni_pc_bh2"
    aliases = ("unipc_bh2",)
    summary = "UniPC predictor-corrector, B(h) = expm1(h) (bh2; diffusers' default)"
    variant = "bh2"
    rank = 61
