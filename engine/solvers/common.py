"""What the stochastic and multistep solver units share (docs/MATH.md 9). Registers no unit; torch-free.

Stochastic steps. Every stochastic step of the lab is "move deterministically to sigma_down, then add fresh
noise of std sigma_up", with sigma_down^2 + sigma_up^2 = sigma_next^2 at s_noise 1 (ancestral samplers:
k-diffusion's `get_ancestral_step`; DDIM's eta is the same amount, MATH.md 9; the SDE samplers' exponential
form has sigma_down = sigma_next e^(-eta h), sigma_up = sigma_next sqrt(1 - e^(-2 eta h))). The lab knows the
noise it adds, so it tracks the true noise the guidance sees (TNR):

    n' = (sigma_down n + sigma_up z) / sigma_next          (`add_noise`)

which has unit variance when n and z are independent unit normals and s_noise is 1 (MATH.md 9).

Per-step normal draws come from the run's generator (`ctx.noise.normal()`, after the true noise); the DPM++
SDE samplers draw Brownian-tree increments (`ctx.noise.brownian`). A step that injects nothing draws nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.units import Param

if TYPE_CHECKING:
    import torch

    from engine.solvers.base import SolverContext

ETA_HELP = "fresh noise per step: 0 is the deterministic solver, 1 the full ancestral/SDE noise (DDIM's eta)"
S_NOISE_HELP = "scale of the injected noise (k-diffusion's s_noise; 1 keeps the marginals)"


def eta_param(default: float) -> Param:
    """`eta`, with the same name, meaning and flag in every unit that takes it (only the default differs)."""
    return Param("eta", default, minimum=0.0, help=ETA_HELP, flag="--eta")


S_NOISE = Param("s_noise", 1.0, minimum=0.0, help=S_NOISE_HELP, flag="--s-noise")


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion's `get_ancestral_step`), in float64.

    sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2). eta 0 (or a zero-length step) is (sigma_next, 0).
    """
    if not eta or sigma_next == 0 or sigma_next >= sigma:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def sde_step(h: float, eta: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of the DPM++ SDE exponential step over h = log(sigma / sigma_next):
    sigma_next e^(-eta h) and sigma_next sqrt(1 - e^(-2 eta h))."""
    return sigma_next * math.exp(-eta * h), sigma_next * math.sqrt(-math.expm1(-2 * eta * h))


def add_noise(
    ctx: SolverContext, x: torch.Tensor, sigma_down: float, sigma_up: float, sigma_next: float, z: torch.Tensor
) -> torch.Tensor:
    """x (at sigma_down) plus sigma_up z, and the true noise tracked: n' = (sigma_down n + sigma_up z) / sigma_next.

    `sigma_up` is the std actually injected (s_noise included); z is a standard normal draw. The injected
    noise goes to the step's telemetry (`ctx.extras["noise_injected"]`, its norm taken there; the last
    injection of a step is the one x_next keeps).
    """
    if ctx.true_noise is not None and sigma_next > 0:
        ctx.true_noise = (sigma_down / sigma_next) * ctx.true_noise + (sigma_up / sigma_next) * z
    injected = sigma_up * z
    ctx.extras["noise_injected"] = injected
    return x + injected


def inject_normal(
    ctx: SolverContext, x: torch.Tensor, sigma_down: float, sigma_up: float, sigma_next: float
) -> torch.Tensor:
    """`add_noise` with the run generator's next standard normal draw; nothing is drawn when sigma_up is 0."""
    if sigma_up == 0 or sigma_next == 0:
        return x
    return add_noise(ctx, x, sigma_down, sigma_up, sigma_next, ctx.noise.normal())


def zero_length(sigma: float, sigma_next: float) -> bool:
    """A repeated sigma (some grids past T steps): the step moves nothing but cfg++'s sigma (ren - den)."""
    return sigma_next == sigma


class History:
    """A multistep solver's memory: the last `size` (sigma, value) pairs of real (nonzero-length) steps.

    The values are what the solver's update reads back: the guided denoised estimates D for the
    data-prediction solvers, the re-noising eps ren for the derivative-form ones (MATH.md 9).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.sigmas: list[float] = []
        self.values: list[Any] = []

    def __len__(self) -> int:
        return len(self.values)

    def push(self, sigma: float, value: Any) -> None:
        self.sigmas.append(sigma)
        self.values.append(value)
        if len(self.values) > self.size:
            del self.sigmas[0], self.values[0]


def lagrange_integral(nodes: list[float], j: int, a: float, b: float) -> float:
    """The integral over [a, b] of the Lagrange basis polynomial l_j of `nodes` (exact, in float64).

    l_j(tau) = prod_{k != j} (tau - t_k) / (t_j - t_k): expand its coefficients, integrate term by term.
    """
    coefficients = [1.0]  # of the numerator polynomial, lowest power first
    denominator = 1.0
    for k, t_k in enumerate(nodes):
        if k == j:
            continue
        denominator *= nodes[j] - t_k
        shifted = [0.0] + coefficients  # tau * p(tau)
        for power, c in enumerate(coefficients):
            shifted[power] -= t_k * c
        coefficients = shifted
    total = sum(c * (b ** (p + 1) - a ** (p + 1)) / (p + 1) for p, c in enumerate(coefficients))
    return total / denominator


def solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the small (<= 4) systems of UniPC's coefficients."""
    n = len(rhs)
    a = [list(row) + [r] for row, r in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= f * a[col][c]
    out = [0.0] * n
    for r in range(n - 1, -1, -1):
        out[r] = (a[r][n] - sum(a[r][c] * out[c] for c in range(r + 1, n))) / a[r][r]
    return out
