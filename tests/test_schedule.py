"""The schedule against diffusers' real schedulers, built from config dicts (MATH.md 1)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

from engine.schedule import Schedule, ScheduleError

SDXL = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
# diffusers builds its table in float32: its sigmas differ from our float64 ones by up to ~1.3e-5 relative
# (at the smallest sigma, where 1 - abar loses digits); elsewhere by ~2e-6.
SIGMA_RTOL = 2e-5


def diffusers_euler(config: dict, steps: int) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 7, 15, 20, 50])
def test_default_grid_matches_euler_discrete_scheduler(spacing: str, karras: bool, steps: int) -> None:
    config = dict(SDXL, timestep_spacing=spacing, use_karras_sigmas=karras)
    schedule = Schedule.from_config(config)
    ref = diffusers_euler(config, steps)
    grid = schedule.grid(steps)
    assert grid.dtype == torch.float64 and len(grid) == steps + 1 and grid[-1] == 0
    torch.testing.assert_close(grid, ref.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    # Karras timesteps: diffusers interpolates in float32 log sigma, hence a 1e-5 relative tolerance.
    timesteps = schedule.grid_timesteps(steps)
    torch.testing.assert_close(
        timesteps, ref.timesteps.double(), rtol=1e-5 if karras else 0, atol=5e-4 if karras else 1e-9
    )
    assert schedule.init_noise_sigma(grid) == pytest.approx(float(ref.init_noise_sigma), rel=SIGMA_RTOL)


def test_named_kind_overrides_the_config_spacing() -> None:
    schedule = Schedule.from_config(SDXL)  # leading
    ref = diffusers_euler(dict(SDXL, timestep_spacing="trailing"), 15)
    grid = schedule.grid(15, "trailing")
    torch.testing.assert_close(grid, ref.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    # trailing starts at the largest table sigma and diffusers starts there with noise of that std.
    assert schedule.init_noise_sigma(grid, "trailing") == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    assert schedule.init_noise_sigma(grid, "leading") == pytest.approx(math.sqrt(float(grid[0]) ** 2 + 1))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("karras", [False, True])
def test_heun_discrete_scheduler_visits_the_same_grid(spacing: str, karras: bool) -> None:
    """Heun's sigmas are our grid with every inner sigma visited twice; its timesteps likewise."""
    steps = 9
    config = dict(SDXL, timestep_spacing=spacing, use_karras_sigmas=karras)
    schedule = Schedule.from_config(config)
    heun = HeunDiscreteScheduler.from_config(config)
    heun.set_timesteps(steps)
    grid = schedule.grid(steps)
    interleaved = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
    torch.testing.assert_close(interleaved, heun.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    t = schedule.grid_timesteps(steps)
    interleaved_t = torch.cat([t[:1], t[1:].repeat_interleave(2)])
    torch.testing.assert_close(
        interleaved_t, heun.timesteps.double(), rtol=1e-5 if karras else 0, atol=5e-4 if karras else 1e-9
    )
    assert schedule.init_noise_sigma(grid) == pytest.approx(float(heun.init_noise_sigma), rel=SIGMA_RTOL)


def test_trailing_15_steps_starts_999_932_866() -> None:
    schedule = Schedule.from_config(SDXL)
    assert schedule.spacing_timesteps(15, "trailing")[:3].tolist() == [999.0, 932.0, 866.0]
    assert schedule.spacing_timesteps(20, "leading")[:3].tolist() == [951.0, 901.0, 851.0]


def test_trailing_keeps_the_requested_step_count_where_numpy_adds_one() -> None:
    schedule = Schedule.from_config(SDXL)
    grid = schedule.grid(61, "trailing")
    assert len(grid) == 62
    assert schedule.spacing_timesteps(61, "trailing")[-1] == 15.0


def test_table_matches_the_closed_form() -> None:
    schedule = Schedule.from_config(SDXL)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(schedule.alphas_cumprod, abar, rtol=1e-14, atol=0)
    assert schedule.sigmas[0].item() == pytest.approx(math.sqrt((1 - abar[0].item()) / abar[0].item()), rel=1e-14)
    assert schedule.sigmas[-1].item() == pytest.approx(14.6146, abs=1e-4)
    assert float(schedule.abar(schedule.sigmas[500])) == pytest.approx(abar[500].item(), rel=1e-12)
    linear = Schedule.from_config(dict(SDXL, beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    torch.testing.assert_close(linear.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def test_sigma_to_t_is_exact_on_the_table_and_log_linear_between() -> None:
    schedule = Schedule.from_config(SDXL)
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(schedule.sigma_to_t(schedule.sigmas[k]), k.double(), rtol=0, atol=1e-9)
    lo, hi = schedule.sigmas[300].item(), schedule.sigmas[301].item()
    geometric_mean = math.sqrt(lo * hi)
    assert schedule.sigma_to_t(geometric_mean) == pytest.approx(300.5, abs=1e-9)
    # Outside the table the timestep is clamped, as diffusers does.
    assert schedule.sigma_to_t(0.0) == 0.0
    assert schedule.sigma_to_t(100.0) == 999.0


def test_sigma_to_t_matches_diffusers_for_karras_sigmas() -> None:
    schedule = Schedule.from_config(SDXL)
    ref = EulerDiscreteScheduler.from_config(SDXL)
    log_sigmas = schedule.sigmas.log().numpy()
    sigmas = torch.tensor([0.03, 0.1, 0.5, 1.0, 3.3, 10.0, 14.6])
    theirs = torch.tensor([float(ref._sigma_to_t(s.double().numpy(), log_sigmas)) for s in sigmas], dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma_to_t(sigmas.double()), theirs, rtol=0, atol=1e-9)


def test_t_to_sigma_inverts_sigma_to_t() -> None:
    schedule = Schedule.from_config(SDXL)
    t = torch.tensor([0.0, 0.25, 10.5, 431.7, 998.99, 999.0], dtype=torch.float64)
    torch.testing.assert_close(schedule.sigma_to_t(schedule.t_to_sigma(t)), t, rtol=0, atol=1e-9)


def test_power_grid_follows_its_formula() -> None:
    schedule = Schedule.from_config(SDXL)
    grid = schedule.grid(10, "power", rho=2.0)
    expected_t = 999 * (1 - torch.arange(10, dtype=torch.float64) / 10) ** 2
    torch.testing.assert_close(schedule.sigma_to_t(grid[:-1]), expected_t, rtol=0, atol=1e-9)
    assert grid[-1] == 0 and bool((grid[:-1].diff() < 0).all())
    # rho = 1 is the default for the power warp and spaces timesteps evenly.
    torch.testing.assert_close(schedule.grid(4, "power"), schedule.grid(4, "power", rho=1.0))
    assert schedule.grid_timesteps(4, "power").tolist() == pytest.approx([999, 749.25, 499.5, 249.75])


def test_karras_rho_is_a_parameter() -> None:
    schedule = Schedule.from_config(SDXL)
    grid = schedule.grid(5, "karras", rho=3.0)
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    hi, lo = grid[0] ** (1 / 3), grid[4] ** (1 / 3)
    torch.testing.assert_close(grid[:-1], (hi + ramp * (lo - hi)) ** 3)


def test_bad_configs_and_kinds_say_what_is_wrong() -> None:
    with pytest.raises(ScheduleError, match="beta_schedule 'cosine'"):
        Schedule.from_config(dict(SDXL, beta_schedule="cosine"))
    with pytest.raises(ScheduleError, match="timestep_spacing 'even'"):
        Schedule.from_config(dict(SDXL, timestep_spacing="even"))
    with pytest.raises(ScheduleError, match="unknown schedule 'zigzag'"):
        Schedule.from_config(SDXL).grid(5, "zigzag")
    with pytest.raises(ScheduleError, match="steps must be"):
        Schedule.from_config(SDXL).grid(0)
