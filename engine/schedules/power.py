"""power: the lab's timestep-power warp, t_i = (T - 1) (1 - i/N)^rho, sigma from the training table (MATH.md 7)."""

from __future__ import annotations

from typing import Any

from engine.schedules.base import RHO, SigmaSchedule
from engine.units import SCHEDULES


@SCHEDULES.register
class Power(SigmaSchedule):
    name = "power"
    summary = "timestep-power warp t_i = (T-1)(1 - i/N)^rho; rho 1 is even in t, > 1 spends more steps at low noise"
    params = (RHO,)
    default_rho = 1.0
    rank = 60

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        return table.power_sigmas(steps, cls.default_rho if rho is None else rho)
