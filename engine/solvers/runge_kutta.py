"""Explicit Runge-Kutta solvers as Butcher tableaus over the direction-pair move (MATH.md sections 3 and 4).

The move from `sigma` to `sigma_next` along a pair is

    x_next = x - sigma * den + sigma_next * ren                      (`pair_move`)

An explicit Runge-Kutta tableau (c, a, b) lifts that move to higher order (`rk_step`). With den == ren == e it
is exactly classical RK on dx/dsigma = e. A step that ends at sigma 0 is Euler whatever the tableau (as
diffusers and k-diffusion do). A new tableau is one `Tableau` and one registered subclass here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from engine.solvers.base import Pair, Solver, SolverContext
from engine.units import SOLVERS

if TYPE_CHECKING:
    import torch

# Evaluates the pair at a point: (x, stage sigma, stage index) -> (den, ren).
PairFn = Callable[["torch.Tensor", float, int], Pair]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta tableau: stage fractions c, the strictly lower rows a, and weights b."""

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # a[i] has i entries: stage i's weights on the stages before it
    b: tuple[float, ...]

    @property
    def stages(self) -> int:
        return len(self.c)


EULER = Tableau("euler", c=(0.0,), a=((),), b=(1.0,))
HEUN = Tableau("heun", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))
MIDPOINT = Tableau("midpoint", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))
RK4 = Tableau(
    "rk4",
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)
TABLEAUS: dict[str, Tableau] = {t.name: t for t in (EULER, HEUN, MIDPOINT, RK4)}


def pair_move(x: torch.Tensor, sigma: float, sigma_next: float, pair: Pair) -> torch.Tensor:
    """The DDIM/Euler move along a direction pair: x - sigma * den + sigma_next * ren."""
    den, ren = pair
    return x - sigma * den + sigma_next * ren


def weighted_pair(weights: Sequence[float], pairs: Sequence[Pair], divisor: float = 1.0) -> Pair:
    """sum_j w_j * pair_j / divisor, for den and ren alike (zero weights skipped)."""
    den = sum(w / divisor * p[0] for w, p in zip(weights, pairs, strict=True) if w != 0)
    ren = sum(w / divisor * p[1] for w, p in zip(weights, pairs, strict=True) if w != 0)
    return den, ren  # type: ignore[return-value]


def stage_sigma(tableau: Tableau, i: int, sigma: float, sigma_next: float) -> float:
    """s_i = sigma + c_i (sigma_next - sigma): stage sigmas are interpolated in sigma (classical RK)."""
    c = tableau.c[i]
    # The ends exactly, so that a stage at sigma_next meets the grid's own timestep (Heun's second stage).
    if c == 1:
        return sigma_next
    return sigma + c * (sigma_next - sigma)


def rk_step(
    tableau: Tableau, pair_at: PairFn, x: torch.Tensor, sigma: float, sigma_next: float
) -> tuple[torch.Tensor, Pair]:
    """One step from sigma to sigma_next; returns x_next and the first stage's pair (whose den gives D).

    Stage i evaluates the pair at x - sigma * den_i + s_i * ren_i, with (den_i, ren_i) the earlier stages'
    pairs averaged with the row a_i divided by c_i; the step then moves with the b-weighted pair.
    """
    pairs: list[Pair] = []
    for i in range(tableau.stages):
        s_i = stage_sigma(tableau, i, sigma, sigma_next)
        if i == 0:
            x_i = x
        else:
            x_i = pair_move(x, sigma, s_i, weighted_pair(tableau.a[i], pairs, divisor=tableau.c[i]))
        pairs.append(pair_at(x_i, s_i, i))
    return pair_move(x, sigma, sigma_next, weighted_pair(tableau.b, pairs)), pairs[0]


def tableau_for_step(solver: str, sigma_next: float) -> Tableau:
    """The solver's tableau, except that a step ending at sigma 0 is Euler (as diffusers and k-diffusion do)."""
    return EULER if sigma_next == 0 else TABLEAUS[solver]


class RungeKutta(Solver):
    """A solver given by its tableau; the pair rides every stage, so CFG++ and TNR work unchanged."""

    family = "runge-kutta"
    tableau: ClassVar[Tableau]

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
        tableau = EULER if sigma_next == 0 else self.tableau
        x_next, _ = rk_step(tableau, lambda x_i, s_i, _stage: ctx.predict(x_i, s_i).pair, x, sigma, sigma_next)
        return x_next


@SOLVERS.register
class EulerSolver(RungeKutta):
    name = "euler"
    aliases = ("Euler",)
    a1111 = "Euler"
    summary = "first order; diffusers' EulerDiscreteScheduler, k-diffusion's sample_euler"
    tableau = EULER
    rank = 0


@SOLVERS.register
class HeunSolver(RungeKutta):
    name = "heun"
    aliases = ("Heun",)
    a1111 = "Heun"
    summary = "second order, trapezoidal (Karras et al. 2022, Alg. 1); diffusers' HeunDiscreteScheduler"
    tableau = HEUN
    stages = 2
    order = 2
    rank = 20


@SOLVERS.register
class MidpointSolver(RungeKutta):
    name = "midpoint"
    aliases = ("rk2",)
    summary = "second order, explicit midpoint in sigma"
    tableau = MIDPOINT
    stages = 2
    order = 2
    rank = 90


@SOLVERS.register
class RK4Solver(RungeKutta):
    name = "rk4"
    summary = "fourth order, classical Runge-Kutta in sigma"
    tableau = RK4
    stages = 4
    order = 4
    rank = 91
