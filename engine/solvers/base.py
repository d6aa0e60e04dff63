"""What every solver shares: the declaration, the prediction it steps along, and the context of a run.

A solver is one class in one module of this package, registered with `@SOLVERS.register`. Its class
attributes declare it (torch-free, read by the request, CLI, TUI, history and sweeps); an instance is made per
run from the request's `solver_params` and may keep state across steps (a multistep solver's earlier
denoised estimates). The sampler loop (engine/sampler.py) is written once: it calls `step(ctx, x, i)` for
each interval of the grid; `ctx.predict(x, sigma)` is one model evaluation with the run's guidance applied,
checked for cancellation and counted, so a solver never sees the model, the prompts or the callbacks.

The guidance of a step comes as a direction pair (MATH.md 3): `den`, the eps that estimates the clean image
(D = x - sigma den), and `ren`, the eps that re-noises it. For every guidance method but CFG++ they are the
same tensor. A solver written for the usual (x, D) form takes the pair through `Prediction.renoised`:
x~ = D + sigma ren stands where the current x stands in the solver's update, so D + sigma_next ren is its
first-order move and CFG++ rides every solver (MATH.md 4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from engine.units import Param, resolve_params

if TYPE_CHECKING:
    import torch

# A direction pair: (den, ren), MATH.md 3.
Pair = tuple["torch.Tensor", "torch.Tensor"]

FAMILIES = ("runge-kutta", "multistep", "ancestral", "sde")


@dataclass
class Prediction:
    """The guided prediction at one point: the pair (den, ren) at (x, sigma)."""

    x: torch.Tensor
    sigma: float
    den: torch.Tensor
    ren: torch.Tensor

    @property
    def pair(self) -> Pair:
        return self.den, self.ren

    @property
    def denoised(self) -> torch.Tensor:
        """D = x - sigma den: the clean-image estimate (MATH.md 2)."""
        return self.x - self.sigma * self.den

    @property
    def renoised(self) -> torch.Tensor:
        """x~ = D + sigma ren: the point the solver moves from (x itself unless den and ren differ)."""
        if self.ren is self.den:
            return self.x
        return self.denoised + self.sigma * self.ren


@dataclass
class SolverContext:
    """What a solver may use during a run; built by the sampler."""

    sigmas: Sequence[float]  # the grid: steps + 1 values, descending, the last one 0
    predict: Callable[[torch.Tensor, float], Prediction]  # one model evaluation, guided, counted, cancellable
    noise: Any = None  # engine.noise.NoiseSource: the run's seeded noise (stochastic solvers only)
    true_noise: Any = None  # n, as guidance sees it; stochastic solvers update it as they inject noise
    extras: dict[str, float] = field(default_factory=dict)  # telemetry a solver adds for the step

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


class Solver:
    """Base of every solver unit. Subclasses set the class attributes and implement `step`."""

    kind: ClassVar[str] = "solver"
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # other names users type (A1111's first)
    a1111: ClassVar[str | None] = None  # the sampler name written into A1111 metadata
    summary: ClassVar[str] = ""
    family: ClassVar[str] = "runge-kutta"
    stages: ClassVar[int] = 1  # model evaluations of a full step
    final_stages: ClassVar[int] = 1  # ... of a step that ends at sigma 0 (first order there, as peers do)
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False  # can inject noise (eta > 0); ddim and res_multistep default to eta 0
    params: ClassVar[tuple[Param, ...]] = ()
    rank: ClassVar[int] = 100  # menu position

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = resolve_params(type(self), settings)

    def evaluations(self, i: int, sigmas: Sequence[float]) -> int:
        """Model evaluations (stages) of step i of a grid; the sampler's count must equal it."""
        return self.final_stages if sigmas[i + 1] == 0 else self.stages

    def step(self, ctx: SolverContext, x: torch.Tensor, i: int) -> torch.Tensor:
        """x at sigmas[i + 1] from x at sigmas[i]."""
        raise NotImplementedError


def make_solver(name: str, settings: Mapping[str, Any] | None = None) -> Solver:
    """A fresh instance of a registered solver (per run: it may keep state)."""
    from engine.units import SOLVERS

    return SOLVERS.get(name)(settings)
