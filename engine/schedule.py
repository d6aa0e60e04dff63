"""The trained noise schedule and the sigma grids sampled on (MATH.md section 1).

Everything is derived from the model's own scheduler config, in float64. The grids reproduce diffusers'
`EulerDiscreteScheduler.set_timesteps` (and `HeunDiscreteScheduler`, which uses the same sigmas, each but the
first and last visited twice): spacing `leading` (with `steps_offset`), `trailing` and `linspace`, and Karras.
One grid is our own, the timestep-power warp:

    t_i = t_max * (1 - i / N) ** rho     for i = 0 .. N-1, then sigma_N = 0,

where t_max = T - 1 and sigma_i = sigma(t_i) by log-sigma interpolation of the training table. rho = 1 spaces
the timesteps evenly (close to `trailing`); rho > 1 spends more steps at low noise, rho < 1 at high noise.

A run samples on `sampling_grid`, which adds the lab's two checks to diffusers' grids (MATH.md section 7): a grid
must start near the top of the table (else "default" falls back to trailing spacing and a named kind is kept
with a warning), and a grid that repeats a sigma says so (a repeated sigma is a zero-length step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.units import SCHEDULES

SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
# diffusers' Karras (end points from the config's spacing grid, `use_karras_sigmas`): what "default" means on a
# config with Karras sigmas, and what schedule "karras" meant before request format 3 (engine.request).
KARRAS_DIFFUSERS = "karras_diffusers"
# A grid starts near the top when its first sigma lies within this fraction of the training table's log-sigma
# range below the table's largest sigma (MATH.md 7); SDXL: sigma_0 >= 5.75 of 14.61 (leading at 6 to 200 steps).
TOP_FRACTION = 0.15


class ScheduleError(ValueError):
    """The scheduler config cannot be used; the message says which key and why."""


# diffusers' EulerDiscreteScheduler sets abar[T-1] = 2**-24 (float16's smallest subnormal) under
# `rescale_betas_zero_snr`, so that the first sigma is finite: sigma_max = sqrt(2**24 - 1) = 4095.9999. ComfyUI
# clamps to 4.8973451890853435e-08 instead (sigma_max 4518.8); DDIM keeps 0 (it never divides by it); the
# multistep DPM/UniPC schedulers start from the noise n itself.
ZERO_SNR_LAST_ABAR = 2.0**-24


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 (arXiv:2305.08891) Algorithm 1, in float64: shift sqrt(abar) so its last value is 0 and
    scale it so its first is unchanged, then back to betas (the last beta becomes 1)."""
    root = torch.cumprod(1.0 - betas.to(torch.float64), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def betas_from_config(config: dict[str, Any]) -> torch.Tensor:
    """The training betas (float64) named by `beta_schedule`, `beta_start`, `beta_end`, `num_train_timesteps`."""
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float64)
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if kind == "scaled_linear":
        return torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(start, end, T, dtype=torch.float64)
    raise ScheduleError(f"scheduler config: beta_schedule {kind!r} is not supported (use scaled_linear or linear)")


@dataclass(frozen=True, eq=False)
class SamplingGrid:
    """The grid a run samples on, what it is, and what the lab had to say about it."""

    kind: str  # the concrete kind sampled: leading, trailing, linspace, karras or power
    spacing: str  # the timestep spacing behind it (Karras end points, the init_noise_sigma rule)
    sigmas: torch.Tensor  # steps + 1 values, descending, the last one 0 (float64)
    timesteps: torch.Tensor  # the UNet timestep of each nonzero sigma (float64)
    init_noise_sigma: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Schedule:
    betas: torch.Tensor  # [T] float64
    alphas_cumprod: torch.Tensor  # abar[k], [T] float64
    sigmas: torch.Tensor  # the training table sigma[k], ascending in k, [T] float64
    num_train_timesteps: int
    timestep_spacing: str
    steps_offset: int
    prediction_type: str
    use_karras_sigmas: bool = False
    sigma_min: float | None = None  # Karras end points from the config, when it names them
    sigma_max: float | None = None

    @classmethod
    def from_config(cls, scheduler_config: dict[str, Any]) -> Schedule:
        config = dict(scheduler_config)
        spacing = config.get("timestep_spacing", "linspace")
        if spacing not in SPACINGS:
            raise ScheduleError(f"scheduler config: timestep_spacing {spacing!r} is not one of {', '.join(SPACINGS)}")
        betas = betas_from_config(config)
        zero_snr = bool(config.get("rescale_betas_zero_snr"))
        if zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if zero_snr:
            # abar[T-1] is exactly 0 after the rescale: sigma_max would be infinite. diffusers' Euler clamps it
            # to ZERO_SNR_LAST_ABAR (MATH.md 8), so sigma_max = sqrt((1 - 2^-24) / 2^-24) ~ 4096.
            alphas_cumprod = alphas_cumprod.clone()
            alphas_cumprod[-1] = ZERO_SNR_LAST_ABAR
        return cls(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            sigmas=sigma_of_abar(alphas_cumprod),
            num_train_timesteps=len(betas),
            timestep_spacing=spacing,
            steps_offset=int(config.get("steps_offset", 0)),
            prediction_type=config.get("prediction_type", "epsilon"),
            use_karras_sigmas=bool(config.get("use_karras_sigmas", False)),
            sigma_min=config.get("sigma_min"),
            sigma_max=config.get("sigma_max"),
        )

    # ---- the table, continuous -------------------------------------------------------------------

    def abar(self, sigma: float | torch.Tensor) -> float | torch.Tensor:
        """abar(sigma) = 1 / (1 + sigma**2)."""
        return abar_of_sigma(sigma)

    def sigma_to_t(self, sigma: float | torch.Tensor) -> float | torch.Tensor:
        """The continuous timestep of a sigma: linear in log sigma between table entries, clamped to [0, T-1]."""
        scalar = not isinstance(sigma, torch.Tensor)
        s = torch.as_tensor(sigma, dtype=torch.float64)
        log_table = self.sigmas.log()
        log_sigma = s.clamp(min=1e-10).log()
        # low: the last table entry at or below log_sigma (0 when below the table), high = low + 1.
        low = (torch.searchsorted(log_table, log_sigma, right=True) - 1).clamp(0, len(log_table) - 2)
        w = ((log_sigma - log_table[low]) / (log_table[low + 1] - log_table[low])).clamp(0.0, 1.0)
        t = low.to(torch.float64) + w
        return float(t) if scalar else t

    def t_to_sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """The inverse of `sigma_to_t`: log sigma interpolated linearly in t (float64 tensor)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_train_timesteps - 1)
        low = t.floor().clamp(max=self.num_train_timesteps - 2).long()
        w = t - low
        log_table = self.sigmas.log()
        return ((1 - w) * log_table[low] + w * log_table[low + 1]).exp()

    # ---- grids -------------------------------------------------------------------------------------

    def resolve_kind(self, kind: str) -> str:
        """The concrete grid kind: "default" is what the model's scheduler config says."""
        if kind == "default":
            return KARRAS_DIFFUSERS if self.use_karras_sigmas else self.timestep_spacing
        if kind not in SCHEDULES:
            raise ScheduleError(f"unknown schedule {kind!r}; choose one of: {', '.join(SCHEDULES.names())}")
        return kind

    def spacing_timesteps(self, steps: int, spacing: str) -> torch.Tensor:
        """diffusers' timesteps for a spacing (descending, float64), Table 2 of arXiv:2305.08891."""
        # numpy, as diffusers does: np.arange's length rule and float32 linspace fix which timesteps come out.
        T = self.num_train_timesteps
        if spacing == "linspace":
            t = np.linspace(0, T - 1, steps, dtype=np.float32)[::-1]
        elif spacing == "leading":
            t = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.float32) + self.steps_offset
        elif spacing == "trailing":
            # For some N (61, 103, 121, 122 of T = 1000) np.arange yields one extra timestep, -1, and diffusers
            # then runs N + 1 steps; we keep the N that were asked for.
            t = (np.arange(T, 0, -T / steps).round().astype(np.float32) - 1)[:steps]
        else:
            t = None
        if t is not None:
            return torch.from_numpy(t.astype(np.float64).copy())
        raise ScheduleError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")

    def spacing_sigmas(self, steps: int, spacing: str) -> torch.Tensor:
        """Sigmas at a spacing's timesteps, interpolated linearly in sigma as diffusers does (no final 0)."""
        t = self.spacing_timesteps(steps, spacing)
        low = t.floor().long().clamp(0, self.num_train_timesteps - 2)
        w = (t - low).clamp(0, 1)
        return (1 - w) * self.sigmas[low] + w * self.sigmas[low + 1]

    def grid(self, steps: int, kind: str = "default", rho: float | None = None) -> torch.Tensor:
        """diffusers' sigmas for a kind ("default": the config's, as it is): `steps + 1` values, descending,
        the last one 0 (float64). A run samples on `sampling_grid`, which may replace "default"."""
        kind = self.resolve_kind(kind)
        return self._sigmas(steps, kind, rho, self._spacing_of(kind))

    def _spacing_of(self, kind: str) -> str:
        # Karras and power grids keep the config's spacing, as diffusers does with `use_karras_sigmas`.
        return kind if kind in SPACINGS else self.timestep_spacing

    def _sigmas(self, steps: int, kind: str, rho: float | None, spacing: str) -> torch.Tensor:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ScheduleError(f"steps must be a whole number of at least 1, got {steps!r}")
        unit = SCHEDULES.get(kind)
        if rho is None:
            rho = unit.default_rho if unit.default_rho is not None else 7.0
        if kind in SPACINGS:
            sigmas = self.spacing_sigmas(steps, kind)
        elif kind == KARRAS_DIFFUSERS:
            sigmas = self.karras_sigmas(steps, rho, spacing)
        elif kind == "power":
            sigmas = self.power_sigmas(steps, rho)
        else:  # the k-diffusion / ComfyUI schedules (engine/schedules/, MATH.md 10)
            sigmas = unit.sigmas(self, steps, rho).to(torch.float64)
            if sigmas.shape != (steps,):
                raise ScheduleError(f"schedule {kind!r} made {sigmas.numel()} sigmas for {steps} steps")
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def _timesteps(self, steps: int, kind: str, sigmas: torch.Tensor) -> torch.Tensor:
        if kind in SPACINGS:
            return self.spacing_timesteps(steps, kind)
        return self.sigma_to_t(sigmas[:-1])

    def top_shortfall(self, sigma: float) -> float:
        """How far below the table's largest sigma `sigma` lies, as a fraction of the table's log-sigma range
        (0 at or above the top, 1 at the table's smallest sigma)."""
        log_top, log_bottom = math.log(float(self.sigmas[-1])), math.log(float(self.sigmas[0]))
        return max(0.0, (log_top - math.log(sigma)) / (log_top - log_bottom))

    def starts_near_top(self, sigmas: torch.Tensor) -> bool:
        """Whether a grid's first sigma is within TOP_FRACTION of the table's log-sigma range of its top."""
        return self.top_shortfall(float(sigmas[0])) <= TOP_FRACTION

    def sampling_grid(self, steps: int, kind: str = "default", rho: float | None = None) -> SamplingGrid:
        """The grid a run samples on: `grid(steps, kind, rho)`, checked (module docstring, MATH.md 7).

        A "default" grid that does not start near the top is replaced by trailing spacing (a Karras default
        takes its end points from trailing spacing); a named kind is kept. Either way a warning says so, and
        another one when the grid repeats a sigma.
        """
        concrete = self.resolve_kind(kind)
        spacing = self._spacing_of(concrete)
        sigmas = self._sigmas(steps, concrete, rho, spacing)
        warnings: list[str] = []
        if not self.starts_near_top(sigmas):
            t0 = float(self._timesteps(steps, concrete, sigmas)[0])
            low = (
                f"{describe_kind(concrete, spacing)} at {steps} step{'s' if steps != 1 else ''} starts at sigma "
                f"{float(sigmas[0]):.3g} (timestep {t0:.4g}), well below the top of the noise schedule (sigma "
                f"{float(self.sigmas[-1]):.3g} at timestep {self.num_train_timesteps - 1})"
            )
            if kind == "default":
                spacing = "trailing"
                concrete = KARRAS_DIFFUSERS if concrete == KARRAS_DIFFUSERS else "trailing"
                sigmas = self._sigmas(steps, concrete, rho, spacing)
                warnings.append(
                    f"schedule: the model's {low}: sampling on {describe_kind(concrete, spacing)} instead, which "
                    f"starts there (schedule {self.resolve_kind('default')} keeps the low start)"
                )
            else:
                warnings.append(
                    f"schedule: {low}: the image will keep noise the steps cannot remove (trailing spacing "
                    "starts at the top)"
                )
        warnings += SCHEDULES.get(concrete).warnings(self, steps)
        timesteps = self._timesteps(steps, concrete, sigmas)
        nonzero = sigmas[:-1]
        repeats = int((nonzero[1:] == nonzero[:-1]).sum())
        if repeats:
            warnings.append(
                f"schedule: {describe_kind(concrete, spacing)} at {steps} steps repeats a sigma {repeats} time"
                f"{'s' if repeats != 1 else ''} (the model was trained on {self.num_train_timesteps} timesteps): "
                "a repeated sigma is a zero-length step, which costs model evaluations and does not move the "
                f"latent (cfg++ alone moves it, by sigma * (ren - den)), so the grid has only {steps - repeats} "
                f"distinct step{'s' if steps - repeats != 1 else ''}"
            )
        return SamplingGrid(
            kind=concrete,
            spacing=spacing,
            sigmas=sigmas,
            timesteps=timesteps,
            init_noise_sigma=self._init_noise_sigma(sigmas, spacing, concrete),
            warnings=tuple(warnings),
        )

    def karras_sigmas(self, steps: int, rho: float = 7.0, spacing: str | None = None) -> torch.Tensor:
        """Karras et al. (2022) eq. 5 between the end points of a spacing grid (the config's, as diffusers)."""
        base = self.spacing_sigmas(steps, spacing or self.timestep_spacing)
        sigma_min = float(self.sigma_min) if self.sigma_min is not None else float(base[-1])
        sigma_max = float(self.sigma_max) if self.sigma_max is not None else float(base[0])
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho

    def power_sigmas(self, steps: int, rho: float = 1.0) -> torch.Tensor:
        """The timestep-power warp t_i = t_max * (1 - i/N)**rho (module docstring)."""
        t_max = self.num_train_timesteps - 1
        u = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
        return self.t_to_sigma(t_max * u**rho)

    def init_noise_sigma(self, grid: torch.Tensor, kind: str = "default") -> float:
        """diffusers' `init_noise_sigma`: the largest sigma for linspace/trailing spacing, else sqrt(max^2 + 1).

        The spacing is the grid's own for leading/trailing/linspace grids, the config's for Karras and power
        grids (diffusers keeps the config's spacing when `use_karras_sigmas` is set).
        """
        resolved = self.resolve_kind(kind)
        return self._init_noise_sigma(grid, self._spacing_of(resolved), resolved)

    def _init_noise_sigma(self, grid: torch.Tensor, spacing: str, kind: str | None = None) -> float:
        max_sigma = float(grid.max())
        if kind is not None and SCHEDULES.get(kind).full_range:
            # ComfyUI's txt2img start (EPS.noise_scaling with max_denoise): n sqrt(1 + sigma^2) from the table's
            # top, n sigma_0 from below it (MATH.md 10). k-diffusion and A1111 start at n sigma_0.
            top = float(self.sigmas[-1])
            return math.sqrt(max_sigma**2 + 1) if max_sigma >= top * (1 - 1e-5) else max_sigma
        if spacing in ("linspace", "trailing"):
            return max_sigma
        return math.sqrt(max_sigma**2 + 1)

    def grid_timesteps(self, steps: int, kind: str = "default", rho: float | None = None) -> torch.Tensor:
        """The UNet timestep of each nonzero sigma of `grid(steps, kind, rho)` (float64, `steps` values).

        Spacing grids use diffusers' own timesteps (fractional for linspace, where diffusers interpolates the
        sigma linearly in t, not in log sigma); Karras and power grids use `sigma_to_t`.
        """
        resolved = self.resolve_kind(kind)
        if resolved in SPACINGS:
            return self.spacing_timesteps(steps, resolved)
        return self._timesteps(steps, resolved, self.grid(steps, kind, rho))


def describe_kind(kind: str, spacing: str) -> str:
    """A grid kind in words: "leading spacing", "karras (end points from trailing spacing)", "power"."""
    if kind in SPACINGS:
        return f"{kind} spacing"
    if kind == KARRAS_DIFFUSERS:
        return f"{KARRAS_DIFFUSERS} (end points from {spacing} spacing)"
    return kind


def abar_of_sigma(sigma: float | torch.Tensor) -> float | torch.Tensor:
    """abar(sigma) = 1 / (1 + sigma**2): the cumulative alpha of a VE noise level."""
    return 1.0 / (1.0 + sigma**2)


def sigma_of_abar(abar: torch.Tensor) -> torch.Tensor:
    """The variance-exploding sigma of a cumulative alpha: sqrt((1 - abar) / abar)."""
    return ((1 - abar) / abar).sqrt()
