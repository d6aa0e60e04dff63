"""lms, ipndm and deis: linear multistep methods on the derivative d = (x - D) / sigma (the eps), in sigma.

    x_next = x~ + sum_j c_j d_(i-j)                 x~ = D_i + sigma ren_i (= x unless cfg++)

where the current d_i is ren_i (= (x~ - D_i) / sigma, the re-noising eps) and the history holds the earlier
steps' ren: the derivative form's own quantity, so CFG++ rides them as it rides the data-prediction solvers
(MATH.md 9). The first steps use the lower orders the history allows (a first-order start: the global order is
2 whatever the nominal order, `order` says the global one). A zero-length step returns x~ and keeps the history.

- lms: c_j = integral over [sigma_i, sigma_next] of the Lagrange basis (in sigma) of the last `order` sigmas
  (k-diffusion's sample_lms, diffusers' LMSDiscreteScheduler: nominal order 4, no Euler fallback at sigma 0).
- ipndm: improved PNDM (Zhang & Chen 2023): Adams-Bashforth's fixed coefficients 1; 3/2, -1/2; 23/12, -16/12,
  5/12; 55/24, -59/24, 37/24, -9/24 times (sigma_next - sigma) (ComfyUI's sample_ipndm); D at sigma 0.
- deis: DEIS (Zhang & Chen 2022) in log-rho: c_j = integral over [sigma_i, sigma_next] of the Lagrange basis in
  log sigma (diffusers' DEISMultistepScheduler, "logrho"); Euler at sigma 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from engine.solvers.base import Solver, SolverContext
from engine.solvers.common import History, lagrange_integral
from engine.units import SOLVERS, Param

if TYPE_CHECKING:
    import torch

# Adams-Bashforth coefficients by order, newest derivative first (ipndm).
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def log_lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """The integral over rho in [a, b] of the Lagrange basis l_j of `nodes` in log rho (a, b, nodes > 0).

    With u = log rho, the integrand is l_j(u) e^u du; e^u P(u) is an antiderivative when P + P' = l_j, i.e.
    P = l_j - l_j' + l_j'' - ... (the closed forms of diffusers' DEIS `ind_fn` for orders 2 and 3).
    """
    logs = [math.log(t) for t in nodes]
    coefficients = [1.0]  # of l_j's numerator in u, lowest power first
    denominator = 1.0
    for k, u_k in enumerate(logs):
        if k == j:
            continue
        denominator *= logs[j] - u_k
        shifted = [0.0] + coefficients
        for power, c in enumerate(coefficients):
            shifted[power] -= u_k * c
        coefficients = shifted
    p = [c / denominator for c in coefficients]
    total, derivative, sign = [0.0] * len(p), list(p), 1.0
    while derivative:
        total = [t + sign * d for t, d in zip(total, derivative + [0.0] * (len(total) - len(derivative)), strict=True)]
        derivative = [power * c for power, c in enumerate(derivative)][1:]
        sign = -sign

    def antiderivative(rho: float) -> float:
        u = math.log(rho)
        return rho * sum(c * u**power for power, c in enumerate(total))

    return antiderivative(b) - antiderivative(a)


class LinearMultistep(Solver):
    family = "multistep"
    max_order: ClassVar[int]

    def __init__(self, settings=None) -> None:  # noqa: ANN001
        super().__init__(settings)
        self.history = History(self.max_order - 1)

    def solver_order(self) -> int:
        return int(self.settings.get("order", self.max_order))

    def coefficients(self, sigmas: list[float], sigma_next: float) -> list[float]:
        """c_j for the derivatives at `sigmas` (newest first), over [sigmas[0], sigma_next]."""
        raise NotImplementedError

    def final_step(self, p, sigma: float):  # noqa: ANN001, ANN201
        """The step to sigma 0: Euler, x~ - sigma ren = D (lms overrides it: no fallback)."""
        return p.denoised

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        p = ctx.predict(x, sigma)
        if sigma_next == sigma:
            return p.renoised
        d = p.ren  # (x~ - D) / sigma
        order = min(len(self.history) + 1, self.solver_order())
        if sigma_next == 0 and self.final_euler:
            x_next = self.final_step(p, sigma)
        else:
            nodes = [sigma, *reversed(self.history.sigmas[len(self.history) - (order - 1) :])]
            derivatives = [d, *reversed(self.history.values[len(self.history) - (order - 1) :])]
            coefficients = self.coefficients(nodes, sigma_next)
            x_next = p.renoised
            for c, derivative in zip(coefficients, derivatives, strict=True):
                x_next = x_next + c * derivative
        self.history.push(sigma, d)
        return x_next

    final_euler: ClassVar[bool] = True


@SOLVERS.register
class LMS(LinearMultistep):
    name = "lms"
    aliases = ("LMS", "k_lms")
    a1111 = "LMS"
    summary = (
        "linear multistep in sigma (k-diffusion's sample_lms, diffusers' LMSDiscreteScheduler); nominal order 4 after "
        "a first-order start (global order 2)"
    )
    order = 2
    max_order = 4
    final_euler = False  # k-diffusion and diffusers take the multistep step to sigma 0 too
    params = (Param("order", 4, kind="int", minimum=1, maximum=4, help="the highest order used (k-diffusion's 4)"),)
    rank = 30

    def coefficients(self, sigmas: list[float], sigma_next: float) -> list[float]:
        return [lagrange_integral(sigmas, j, sigmas[0], sigma_next) for j in range(len(sigmas))]


@SOLVERS.register
class IPNDM(LinearMultistep):
    name = "ipndm"
    aliases = ("iPNDM",)
    summary = (
        "improved PNDM (Zhang & Chen 2023): Adams-Bashforth's fixed coefficients in sigma (ComfyUI's sample_ipndm); "
        "nominal order 4 on even sigma steps after a first-order start (global order 2)"
    )
    order = 2
    max_order = 4
    rank = 75

    def coefficients(self, sigmas: list[float], sigma_next: float) -> list[float]:
        return [c * (sigma_next - sigmas[0]) for c in ADAMS_BASHFORTH[len(sigmas)]]


@SOLVERS.register
class DEIS(LinearMultistep):
    name = "deis"
    aliases = ("DEIS",)
    a1111 = "DEIS"
    summary = (
        "DEIS (Zhang & Chen 2022), log-rho multistep on the eps (diffusers' DEISMultistepScheduler); nominal order 3 "
        "after a first-order start (global order 2)"
    )
    order = 2
    max_order = 3
    params = (
        Param("order", 3, kind="int", minimum=1, maximum=3, help="the highest order used (diffusers' 2, ComfyUI's 3)"),
    )
    rank = 76

    def coefficients(self, sigmas: list[float], sigma_next: float) -> list[float]:
        if len(sigmas) == 1:
            return [sigma_next - sigmas[0]]  # first order is Euler (DDIM), as diffusers' first-order update
        return [log_lagrange_integral(sigmas, j, sigmas[0], sigma_next) for j in range(len(sigmas))]
