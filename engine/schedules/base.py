"""What every sigma schedule shares: a schedule unit turns the model's trained table into a run's grid.

A schedule is one class in one module of this package, registered with `@SCHEDULES.register`: its name,
aliases (A1111's "Schedule type"), parameters, and `sigmas(table, steps, rho)`, the `steps` nonzero sigmas of
the grid (descending) over the trained table `table` (an `engine.schedule.Schedule`); the table appends the
final 0. Torch-free to import (the table's tensors carry the math).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from engine.units import Param

if TYPE_CHECKING:
    import torch


class SigmaSchedule:
    kind: ClassVar[str] = "schedule"
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    a1111: ClassVar[str | None] = None  # A1111's "Schedule type" value
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    default_rho: ClassVar[float | None] = None  # the exponent `schedule_rho` None stands for, where it has one
    # A k-diffusion / ComfyUI schedule over the whole trained table (MATH.md 10): its timesteps are sigma_to_t
    # of its sigmas and it starts from ComfyUI's noise, n sqrt(1 + sigma_0^2) when sigma_0 is the table's top.
    full_range: ClassVar[bool] = False
    rank: ClassVar[int] = 100

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> torch.Tensor:
        """The grid's `steps` nonzero sigmas, descending (float64)."""
        raise NotImplementedError

    @classmethod
    def warnings(cls, table: Any, steps: int) -> tuple[str, ...]:
        """What the run's stats should say about this grid (where it departs from its peers' definition)."""
        return ()


RHO = Param("rho", None, optional=True, minimum=1e-3, help="exponent of the schedule (schedule_rho)")
