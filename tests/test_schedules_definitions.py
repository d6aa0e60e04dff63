"""Every schedule's sigmas equal its definition, written here from the formula (k-diffusion's and ComfyUI's,
PITFALLS.md "Schedule and sampler definitions"), over a table computed here from the SDXL config; the karras
rename keeps old runs' grids; --discrete-timesteps hands the model integer timesteps (docs/MATH.md 9, 10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gaussian_bundle import SDXL, GaussianBundle, request

from engine.request import REQUEST_FORMAT, GenerationRequest, upgrade
from engine.sampler import sample
from engine.schedule import Schedule, ScheduleError
from engine.units import SCHEDULES

T = 1000
STEPS = [1, 2, 7, 10, 20, 30, 64]


def sdxl_table() -> np.ndarray:
    """sigma[k] = sqrt((1 - abar_k) / abar_k), scaled_linear betas 0.00085 -> 0.012 (float64)."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), T, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


TABLE = sdxl_table()
LO, HI = TABLE[0], TABLE[-1]


def sigma_of_t(t: np.ndarray) -> np.ndarray:
    """Log-sigma linear in t between table entries (ComfyUI's ModelSamplingDiscrete.sigma)."""
    return np.exp(np.interp(t, np.arange(T), np.log(TABLE)))


def karras(n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    return (HI ** (1 / rho) + ramp * (LO ** (1 / rho) - HI ** (1 / rho))) ** rho


AYS = [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
       0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582]  # fmt: skip


def ays(n: int) -> np.ndarray:
    if n == 10:
        return np.array(AYS[:10])
    ys = np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, 11), np.log(AYS[::-1]))
    return np.exp(ys)[::-1][:n]


def beta(n: int) -> np.ndarray:
    from scipy.stats import beta as distribution

    t = np.rint(distribution.ppf(1 - np.arange(n) / n, 0.6, 0.6) * (T - 1)).astype(int)
    return TABLE[t]


DEFINITIONS = {
    "karras": karras,
    "exponential": lambda n: np.exp(np.linspace(math.log(HI), math.log(LO), n)),
    "sgm_uniform": lambda n: sigma_of_t(np.linspace(T - 1, 0, n + 1)[:-1]),
    "simple": lambda n: np.array([TABLE[T - 1 - int(k * (T / n))] for k in range(n)]),
    "ddim_uniform": lambda n: TABLE[np.arange(1, T, T // n)[::-1][:n]],
    "beta": beta,
    "kl_optimal": lambda n: np.tan(
        (np.arange(n) / max(n - 1, 1)) * math.atan(LO) + (1 - np.arange(n) / max(n - 1, 1)) * math.atan(HI)
    ),
    "ays": ays,
}


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
@pytest.mark.parametrize("steps", STEPS)
def test_every_schedule_is_its_definition(name: str, steps: int) -> None:
    schedule = Schedule.from_config(SDXL)
    planned = schedule.sampling_grid(steps, name)
    expected = np.append(DEFINITIONS[name](steps), 0.0)
    assert len(planned.sigmas) == steps + 1 and planned.sigmas[-1] == 0 and planned.kind == name
    np.testing.assert_allclose(planned.sigmas.numpy(), expected, rtol=1e-12, atol=0)
    # The UNet timesteps of a full-range grid are the sigmas' own (log-sigma interpolation).
    torch.testing.assert_close(planned.timesteps, schedule.sigma_to_t(planned.sigmas[:-1]))
    # ComfyUI's start noise: sqrt(1 + sigma_0^2) at the table's top, sigma_0 below it.
    top = float(planned.sigmas[0]) >= HI * (1 - 1e-5)
    assert planned.init_noise_sigma == pytest.approx(
        math.sqrt(1 + planned.sigmas[0] ** 2) if top else planned.sigmas[0]
    )


def test_the_karras_of_users_and_the_karras_of_diffusers_euler() -> None:
    """The issue's numbers: N = 10 on SDXL's shipped config, 14.61 -> 0.029 against 8.39 -> 0.041."""
    schedule = Schedule.from_config(SDXL)
    users, theirs = schedule.grid(10, "karras"), schedule.grid(10, "karras_diffusers")
    assert (round(float(users[0]), 2), round(float(users[-2]), 3)) == (14.61, 0.029)
    assert (round(float(theirs[0]), 2), round(float(theirs[-2]), 3)) == (8.39, 0.041)
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    euler = EulerDiscreteScheduler.from_config(dict(SDXL, use_karras_sigmas=True))
    euler.set_timesteps(10)
    torch.testing.assert_close(theirs, euler.sigmas.double(), rtol=2e-5, atol=0)
    dpm = DPMSolverMultistepScheduler.from_config(dict(SDXL, use_karras_sigmas=True))
    dpm.set_timesteps(10)
    torch.testing.assert_close(users, dpm.sigmas.double(), rtol=2e-5, atol=0)
    # A config with Karras sigmas keeps meaning diffusers' grid under "default".
    assert Schedule.from_config(dict(SDXL, use_karras_sigmas=True)).sampling_grid(10).kind == "karras_diffusers"


def test_ddim_uniform_keeps_the_n_largest_and_says_so_and_refuses_more_steps_than_timesteps() -> None:
    schedule = Schedule.from_config(SDXL)
    assert schedule.sampling_grid(20, "ddim_uniform").warnings == ()  # 20 divides 1000: ComfyUI's 20 steps
    (note,) = schedule.sampling_grid(30, "ddim_uniform").warnings  # 1000 // 30 = 33: ComfyUI takes 31 steps
    assert "has 31 steps here" in note and "30 largest" in note
    with pytest.raises(ScheduleError, match="at most 999 steps"):
        schedule.sampling_grid(1000, "ddim_uniform")


def test_beta_keeps_repeated_timesteps_as_zero_length_steps() -> None:
    schedule = Schedule.from_config(SDXL)
    assert schedule.sampling_grid(100, "beta").warnings == ()
    planned = schedule.sampling_grid(200, "beta")
    assert len(planned.sigmas) == 201
    assert any("ComfyUI drops them" in w for w in planned.warnings)
    assert any("repeats a sigma" in w for w in planned.warnings)


def test_ays_is_comfyuis_sdxl_table() -> None:
    planned = Schedule.from_config(SDXL).sampling_grid(10, "ays")
    assert planned.sigmas.tolist() == AYS[:10] + [0.0]


def test_schedules_have_their_a1111_names() -> None:
    names = {SCHEDULES.get(n).a1111 for n in SCHEDULES.names()}
    assert {"Karras", "Exponential", "SGM Uniform", "Simple", "DDIM", "Beta", "KL Optimal", "Align Your Steps"} <= names
    # A1111's "Schedule type" values read back as the lab's schedules (tnr_tui's metadata code uses canonical).
    for name in SCHEDULES.names():
        a1111 = SCHEDULES.get(name).a1111
        if a1111 and name != "default":
            assert SCHEDULES.canonical(a1111) == name, (name, a1111)


# ---- the rename: runs stored with "karras" keep their grid ---------------------------------------------------


@pytest.mark.parametrize("fmt", [1, 2])
def test_stored_karras_runs_upgrade_to_karras_diffusers(fmt: int) -> None:
    stored = {"prompt": "x", "schedule": "karras", "steps": 8, "format": fmt}
    assert GenerationRequest.from_dict(dict(stored)).schedule == "karras_diffusers"
    assert upgrade(dict(stored))["schedule"] == "karras_diffusers"
    today = GenerationRequest(prompt="x", schedule="karras")
    assert REQUEST_FORMAT == 3 and today.to_dict()["format"] == 3
    assert GenerationRequest.from_dict(today.to_dict()).schedule == "karras"


# ---- --discrete-timesteps -------------------------------------------------------------------------------------


def test_discrete_timesteps_round_every_timestep_the_model_sees() -> None:
    fractional, discrete = GaussianBundle(), GaussianBundle()
    sample(fractional, request(solver="dpm_2", guidance="none", steps=6, schedule="karras"))
    sample(discrete, request(solver="dpm_2", guidance="none", steps=6, schedule="karras", discrete_timesteps=True))
    t_frac = [t for _, t, _ in fractional.calls]
    t_disc = [t for _, t, _ in discrete.calls]
    assert any(t != round(t) for t in t_frac)  # karras and dpm_2's midpoints are between trained timesteps
    assert t_disc == [float(round(t)) for t in t_frac]
    # The sigmas (and so the input scaling) are the same: only the timestep is rounded.
    assert [s for s, _, _ in fractional.calls] == [s for s, _, _ in discrete.calls]
