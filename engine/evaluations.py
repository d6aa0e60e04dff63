"""The one count of model evaluations (planned), used by the sampler, sweeps, the study and the Compare screen.

A model evaluation is one forward pass of the denoiser per image: a batched call of k predictions counts k,
a perturbed pass (PAG) counts one more. A step costs `solver.evaluations(i, sigmas)` stages times the
predictions its guidance needs (`GuidancePlan.for_step(...).evaluations`): fewer where the step ends at
sigma 0 (first order there) or starts outside the guidance window. The sampler counts what it really does and
tests hold the two equal for every registered unit. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.request import GenerationRequest


def stand_in_grid(steps: int) -> list[float]:
    """A descending grid ending in 0, for counting without a model's schedule (only its shape matters)."""
    return [float(steps - i) for i in range(steps)] + [0.0]


def evaluations_per_step(request: GenerationRequest, sigmas: Sequence[float] | None = None) -> list[int]:
    """Model evaluations of each step. Without the run's grid every step counts as inside the sigma window
    (exact when the request has none, an upper bound otherwise)."""
    from engine.guidance.plan import GuidancePlan
    from engine.solvers.base import make_solver

    solver = make_solver(request.solver, request.solver_params)
    plan = GuidancePlan.from_request(request)
    grid = list(sigmas) if sigmas is not None else stand_in_grid(request.steps)
    predictions = plan.evaluations(sigmas, request.steps)
    return [solver.evaluations(i, grid) * predictions[i] for i in range(request.steps)]


def planned_evaluations(request: GenerationRequest, sigmas: Sequence[float] | None = None) -> int:
    """Model evaluations of the whole run (see `evaluations_per_step`)."""
    return sum(evaluations_per_step(request, sigmas))


def steps_for_budget(request: GenerationRequest, budget: int) -> int:
    """The step count whose planned evaluations come closest to `budget` (ties: fewer steps), at least 1."""
    best, best_gap = 1, None
    low = 1
    # Evaluations grow with steps; walk until past the budget (each step costs at least one evaluation).
    for steps in range(low, max(2, budget) + 1):
        total = planned_evaluations(request.replace(steps=steps))
        gap = abs(total - budget)
        if best_gap is None or gap < best_gap:
            best, best_gap = steps, gap
        if total >= budget:
            break
    return best
