"""karras and karras_diffusers: Karras et al. (2022) eq. 5,

    sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,   rho 7 unless schedule_rho says.

`karras` is what k-diffusion, ComfyUI and A1111 mean by it: the end points are the trained table's own
(SDXL: 14.61 -> 0.0292), as diffusers' DPMSolverMultistep, UniPC and DEIS also take them. `karras_diffusers`
takes them from the config's spacing grid, as diffusers' Euler, Heun, LMS, KDPM2 and DPMSolverSDE do (SDXL's
leading config, N = 10: 8.39 -> 0.041); it is what `karras` meant before request format 3 (engine.request).
"""

from __future__ import annotations

from typing import Any

from engine.schedules.base import RHO, SigmaSchedule
from engine.units import SCHEDULES


def karras_ramp(steps: int, sigma_min: float, sigma_max: float, rho: float, like: Any) -> Any:
    """Karras eq. 5 from sigma_max down to sigma_min (float64, the dtype and device of `like`)."""
    import torch

    ramp = torch.linspace(0, 1, steps, dtype=torch.float64, device=like.device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@SCHEDULES.register
class Karras(SigmaSchedule):
    name = "karras"
    aliases = ("Karras",)
    a1111 = "Karras"
    summary = "Karras et al. 2022 (rho 7) over the whole trained table, as k-diffusion, ComfyUI and A1111"
    params = (RHO,)
    default_rho = 7.0
    full_range = True
    rank = 20

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        rho = cls.default_rho if rho is None else rho
        return karras_ramp(steps, float(table.sigmas[0]), float(table.sigmas[-1]), rho, table.sigmas)


@SCHEDULES.register
class KarrasDiffusers(SigmaSchedule):
    name = "karras_diffusers"
    aliases = ("karras-diffusers",)
    summary = (
        "Karras (rho 7) between the end points of the config's spacing grid, as diffusers' Euler (use_karras_sigmas)"
    )
    params = (RHO,)
    default_rho = 7.0
    rank = 21

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        return table.karras_sigmas(steps, cls.default_rho if rho is None else rho)
