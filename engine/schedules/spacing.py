"""diffusers' timestep spacings (Table 2 of arXiv:2305.08891), and `default`: the one the model's config names.

The sigmas are the training table's at diffusers' timesteps, interpolated linearly in sigma as diffusers does
(`Schedule.spacing_sigmas`); the UNet sees diffusers' own (fractional, for linspace) timesteps.
"""

from __future__ import annotations

from typing import Any

from engine.schedules.base import SigmaSchedule
from engine.units import SCHEDULES


class Spacing(SigmaSchedule):
    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        return table.spacing_sigmas(steps, cls.name)


@SCHEDULES.register
class Default(SigmaSchedule):
    name = "default"
    aliases = ("automatic",)
    a1111 = "Automatic"
    summary = "what the model's scheduler config names (its timestep_spacing, or Karras)"
    rank = 0

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        return SCHEDULES.get(table.resolve_kind("default")).sigmas(table, steps, rho)


@SCHEDULES.register
class Leading(Spacing):
    name = "leading"
    summary = "diffusers' leading spacing: t = k (T // N) + steps_offset (SDXL's default)"
    rank = 10


@SCHEDULES.register
class Trailing(Spacing):
    name = "trailing"
    summary = "diffusers' trailing spacing: from T - 1 down by T / N"
    rank = 11


@SCHEDULES.register
class Linspace(Spacing):
    name = "linspace"
    aliases = ("uniform",)
    a1111 = "Uniform"
    summary = "diffusers' linspace spacing: N timesteps evenly from T - 1 to 0"
    rank = 12
