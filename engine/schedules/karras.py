"""karras: Karras et al. (2022) eq. 5, sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho."""

from __future__ import annotations

from typing import Any

from engine.schedules.base import RHO, SigmaSchedule
from engine.units import SCHEDULES


@SCHEDULES.register
class Karras(SigmaSchedule):
    name = "karras"
    a1111 = "Karras"
    summary = "Karras et al. 2022 (rho 7) between the end points of the config's spacing grid, as diffusers' Euler"
    params = (RHO,)
    default_rho = 7.0
    rank = 20

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        return table.karras_sigmas(steps, cls.default_rho if rho is None else rho)
