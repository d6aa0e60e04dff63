"""The k-diffusion and ComfyUI schedules over the whole trained table (MATH.md 10).

With the table sigma[0..T-1] (ascending), sigma_min = sigma[0] and sigma_max = sigma[T-1], N steps:

- exponential: N sigmas evenly spaced in log sigma from sigma_max to sigma_min (k-diffusion).
- sgm_uniform: N + 1 timesteps evenly from T-1 to 0, the last dropped, sigma by log-linear interpolation.
- simple: sigma[T-1 - int(k T / N)] for k = 0..N-1.
- ddim_uniform: sigma[1 + k (T // N)] for every such index below T, descending; ComfyUI then has more than N
  steps when N does not divide T, and the lab keeps the N largest (with a warning).
- beta: timesteps rint(ppf_beta(0.6, 0.6)(1 - k/N) (T-1)), sigma of each (arXiv:2407.12173). ComfyUI drops a
  timestep that repeats the one before (and samples fewer steps); the lab keeps it as a zero-length step,
  with the repeated-sigma warning, so the run has the N steps it asked for.
- kl_optimal: tan((1 - k/(N-1)) atan sigma_max + k/(N-1) atan sigma_min) (arXiv:2404.14507).
- ays: Align Your Steps (arXiv:2404.14507): ComfyUI's 11 SDXL sigmas (10 steps); other counts interpolate
  log sigma linearly over an index in [0, 1] (ComfyUI's `loglinear_interp`); the last value becomes the final 0.

The final 0 is appended by the table (engine.schedule).
"""

from __future__ import annotations

import math
from typing import Any

from engine.schedules.base import SigmaSchedule
from engine.units import SCHEDULES

# ComfyUI's AlignYourStepsScheduler "SDXL" noise levels (NVIDIA's published table, as ComfyUI ships it).
AYS_SDXL: tuple[float, ...] = (
    14.6146412293,
    6.3184485287,
    3.7681790315,
    2.1811480769,
    1.3405244945,
    0.8620721141,
    0.5550693289,
    0.3798540708,
    0.2332364134,
    0.1114188177,
    0.0291671582,
)
BETA_ALPHA = BETA_BETA = 0.6  # ComfyUI's beta scheduler defaults


class FullRange(SigmaSchedule):
    full_range = True


def table_values(table: Any, values: list[float]) -> Any:
    return table.sigmas.new_tensor(values)


@SCHEDULES.register
class Exponential(FullRange):
    name = "exponential"
    aliases = ("Exponential",)
    a1111 = "Exponential"
    summary = "even in log sigma over the whole trained table (k-diffusion's get_sigmas_exponential)"
    rank = 30

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        import torch

        lo, hi = math.log(float(table.sigmas[0])), math.log(float(table.sigmas[-1]))
        return torch.linspace(hi, lo, steps, dtype=torch.float64).exp()


@SCHEDULES.register
class SgmUniform(FullRange):
    name = "sgm_uniform"
    aliases = ("SGM Uniform",)
    a1111 = "SGM Uniform"
    summary = "N + 1 even timesteps from T-1 to 0, the last dropped (ComfyUI's sgm_uniform)"
    rank = 31

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        import torch

        t = torch.linspace(table.num_train_timesteps - 1, 0, steps + 1, dtype=torch.float64)[:-1]
        return table.t_to_sigma(t)


@SCHEDULES.register
class Simple(FullRange):
    name = "simple"
    aliases = ("Simple",)
    a1111 = "Simple"
    summary = "the table's sigma at T-1 - int(k T / N) (ComfyUI's simple)"
    rank = 32

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        T = table.num_train_timesteps
        ratio = T / steps
        return table_values(table, [float(table.sigmas[T - 1 - int(k * ratio)]) for k in range(steps)])


def ddim_uniform_indices(T: int, steps: int) -> list[int]:
    """ComfyUI's ddim_uniform table indices, descending: 1, 1 + T // N, ... below T (more than N when N does
    not divide T; T - 1 of them from N = T on)."""
    stride = max(T // steps, 1)
    return list(range(1, T, stride))[::-1]


@SCHEDULES.register
class DdimUniform(FullRange):
    name = "ddim_uniform"
    aliases = ("DDIM", "ddim uniform")
    a1111 = "DDIM"
    summary = "the table's sigma at 1 + k (T // N), as the DDIM paper's uniform spacing (ComfyUI's ddim_uniform)"
    rank = 33

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        from engine.schedule import ScheduleError

        indices = ddim_uniform_indices(table.num_train_timesteps, steps)
        if len(indices) < steps:
            raise ScheduleError(
                f"ddim_uniform has at most {len(indices)} steps on this model (one per trained timestep from 1), "
                f"got {steps}"
            )
        return table_values(table, [float(table.sigmas[k]) for k in indices[:steps]])

    @classmethod
    def warnings(cls, table: Any, steps: int) -> tuple[str, ...]:
        indices = ddim_uniform_indices(table.num_train_timesteps, steps)
        if len(indices) <= steps:
            return ()
        return (
            f"schedule: ddim_uniform at {steps} steps: ComfyUI's definition (the trained sigmas from index 1 in "
            f"strides of {table.num_train_timesteps // steps}) has {len(indices)} steps here; the lab samples its {steps} largest "
            f"(down to sigma {float(table.sigmas[indices[steps - 1]]):.3g}, not {float(table.sigmas[1]):.3g})",
        )


def beta_timesteps(T: int, steps: int, alpha: float = BETA_ALPHA, beta: float = BETA_BETA) -> list[int]:
    """ComfyUI's beta timesteps, repeats kept: rint(ppf(1 - k/N) (T - 1)) for k = 0..N-1."""
    import numpy as np
    from scipy.stats import beta as beta_distribution

    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    return [int(t) for t in np.rint(beta_distribution.ppf(ts, alpha, beta) * (T - 1))]


@SCHEDULES.register
class Beta(FullRange):
    name = "beta"
    aliases = ("Beta",)
    a1111 = "Beta"
    summary = "timesteps at the quantiles of Beta(0.6, 0.6) (arXiv:2407.12173; ComfyUI's beta)"
    rank = 34

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        return table_values(table, [float(table.sigmas[t]) for t in beta_timesteps(table.num_train_timesteps, steps)])

    @classmethod
    def warnings(cls, table: Any, steps: int) -> tuple[str, ...]:
        t = beta_timesteps(table.num_train_timesteps, steps)
        repeats = sum(a == b for a, b in zip(t, t[1:], strict=False))
        if not repeats:
            return ()
        return (
            f"schedule: beta at {steps} steps rounds {repeats} timestep(s) onto the one before; ComfyUI drops them "
            f"(and samples {steps - repeats} steps), the lab keeps them as zero-length steps",
        )


@SCHEDULES.register
class KlOptimal(FullRange):
    name = "kl_optimal"
    aliases = ("KL Optimal",)
    a1111 = "KL Optimal"
    summary = "tan of even steps in atan sigma over the trained range (arXiv:2404.14507; ComfyUI's kl_optimal)"
    rank = 35

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        import torch

        lo, hi = math.atan(float(table.sigmas[0])), math.atan(float(table.sigmas[-1]))
        ramp = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        return (ramp * lo + (1 - ramp) * hi).tan()


def loglinear_interp(values: tuple[float, ...], count: int) -> list[float]:
    """ComfyUI's `loglinear_interp`: `count` values from a decreasing list, linear in log over an index in [0, 1]."""
    import numpy as np

    xs = np.linspace(0, 1, len(values))
    ys = np.log(np.asarray(values[::-1], dtype=np.float64))
    return np.exp(np.interp(np.linspace(0, 1, count), xs, ys))[::-1].tolist()


@SCHEDULES.register
class AlignYourSteps(FullRange):
    name = "ays"
    aliases = ("Align Your Steps", "align_your_steps")
    a1111 = "Align Your Steps"
    summary = "Align Your Steps (NVIDIA): ComfyUI's 10-step SDXL sigmas, log-linear for other step counts"
    rank = 36

    @classmethod
    def sigmas(cls, table: Any, steps: int, rho: float | None) -> Any:
        values = list(AYS_SDXL) if steps + 1 == len(AYS_SDXL) else loglinear_interp(AYS_SDXL, steps + 1)
        return table_values(table, values[:steps])
