"""The schedule against diffusers' real schedulers, built from config dicts (MATH.md 1)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

from engine.request import GenerationRequest
from engine.sampler import sample
from engine.schedule import TOP_FRACTION, Schedule, ScheduleError
from engine.solvers import TABLEAUS, rk_step
from tnr_tui.cli import main
from tnr_tui.services.history import open_store

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


# ---- the grid a run samples on: starts near the top, says when it repeats a sigma (MATH.md 7) ------------


def leading_start_shortfall(steps: int) -> float:
    """diffusers' own leading grid: how far below the table's top it starts, in fractions of the log range."""
    ref = diffusers_euler(SDXL, steps)
    table = Schedule.from_config(SDXL).sigmas
    top, bottom = math.log(float(table[-1])), math.log(float(table[0]))
    return (top - math.log(float(ref.sigmas[0]))) / (top - bottom)


def test_a_20_step_default_grid_has_no_warning_and_is_the_diffusers_grid_bit_for_bit() -> None:
    schedule = Schedule.from_config(SDXL)
    planned = schedule.sampling_grid(20)
    assert planned.warnings == () and (planned.kind, planned.spacing) == ("leading", "leading")
    assert torch.equal(planned.sigmas, schedule.grid(20)) and torch.equal(
        planned.timesteps, schedule.grid_timesteps(20)
    )
    assert planned.init_noise_sigma == schedule.init_noise_sigma(schedule.grid(20))
    ref = diffusers_euler(SDXL, 20)
    torch.testing.assert_close(planned.sigmas, ref.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    assert planned.timesteps.tolist() == ref.timesteps.double().tolist()


@pytest.mark.parametrize("steps", [600, 2000])
def test_a_default_leading_grid_that_starts_low_falls_back_to_trailing_with_a_warning(steps: int) -> None:
    schedule = Schedule.from_config(SDXL)
    low = diffusers_euler(SDXL, steps)  # diffusers: 600 steps start at sigma 2.28, 2000 at 0.041 (every sigma)
    assert float(low.sigmas[0]) < 2.3 and leading_start_shortfall(steps) > TOP_FRACTION
    planned = schedule.sampling_grid(steps)
    assert (planned.kind, planned.spacing) == ("trailing", "trailing")
    trailing = diffusers_euler(dict(SDXL, timestep_spacing="trailing"), steps)
    torch.testing.assert_close(planned.sigmas, trailing.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    assert planned.timesteps.tolist() == trailing.timesteps.double().tolist()
    assert planned.timesteps[0] == 999 and planned.init_noise_sigma == float(schedule.sigmas[-1])
    first = planned.warnings[0]
    assert f"leading spacing at {steps} steps starts at sigma {float(low.sigmas[0]):.3g}" in first
    assert "sampling on trailing spacing instead" in first and "schedule leading keeps" in first


def test_trailing_past_the_training_timesteps_repeats_sigmas_and_says_so() -> None:
    schedule = Schedule.from_config(SDXL)
    planned = schedule.sampling_grid(2000)
    distinct = len(set(planned.sigmas[:-1].tolist()))
    assert distinct == 1000 and len(planned.warnings) == 2
    assert "repeats a sigma 1000 times" in planned.warnings[1] and "only 1000 distinct steps" in planned.warnings[1]
    # Up to T steps trailing never repeats; one more and it must.
    for steps in (999, 1000):
        assert bool((schedule.grid(steps, "trailing")[:-1].diff() < 0).all())
    assert len(schedule.sampling_grid(1001).warnings) == 2
    # linspace never repeats: past T steps its timesteps are fractional.
    assert schedule.sampling_grid(2000, "linspace").warnings == ()


@pytest.mark.parametrize("steps", [600, 2000])
def test_explicit_leading_keeps_diffusers_grid_with_the_warning(steps: int) -> None:
    schedule = Schedule.from_config(SDXL)
    ref = diffusers_euler(SDXL, steps)
    planned = schedule.sampling_grid(steps, "leading")
    assert (planned.kind, planned.spacing) == ("leading", "leading")
    torch.testing.assert_close(planned.sigmas, ref.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    assert planned.timesteps.tolist() == ref.timesteps.double().tolist()
    assert planned.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=SIGMA_RTOL)
    assert f"leading spacing at {steps} steps starts at sigma {float(ref.sigmas[0]):.3g}" in planned.warnings[0]
    assert "keep noise" in planned.warnings[0] and "instead" not in planned.warnings[0]
    if steps == 2000:  # T // 2000 == 0: every timestep is steps_offset, one sigma 2000 times
        assert set(ref.timesteps.tolist()) == {1.0}
        assert len(planned.warnings) == 2 and "repeats a sigma 1999 times" in planned.warnings[1]
    else:
        assert len(planned.warnings) == 1


def test_near_the_top_is_the_top_fraction_of_the_log_sigma_range() -> None:
    schedule = Schedule.from_config(SDXL)
    # SDXL leading: 5 steps start at sigma 5.13 (0.168 of the log range down), 6 at 5.91 (0.146).
    assert leading_start_shortfall(5) > TOP_FRACTION > leading_start_shortfall(6)
    assert schedule.sampling_grid(5).kind == "trailing" and schedule.sampling_grid(6).kind == "leading"
    assert schedule.sampling_grid(6).warnings == ()
    # The usual step counts keep diffusers' leading grid; 1 step of leading is timestep 1 (sigma 0.041).
    assert all(schedule.sampling_grid(n).kind == "leading" for n in (8, 10, 15, 20, 25, 30, 50, 100))
    assert schedule.sampling_grid(1).kind == "trailing" and diffusers_euler(SDXL, 1).timesteps.tolist() == [1.0]
    assert schedule.top_shortfall(float(schedule.sigmas[-1])) == 0.0
    assert schedule.top_shortfall(float(schedule.sigmas[0])) == pytest.approx(1.0)
    # trailing, linspace (from 2 steps) and power grids start at the top whatever the step count.
    for kind in ("trailing", "linspace", "power"):
        assert all(schedule.sampling_grid(n, kind).warnings == () for n in (2, 5, 600, 1000))
    assert "linspace spacing at 1 step starts at sigma 0.0292" in schedule.sampling_grid(1, "linspace").warnings[0]


def test_a_karras_default_that_starts_low_takes_trailing_end_points() -> None:
    config = dict(SDXL, use_karras_sigmas=True)
    schedule = Schedule.from_config(config)
    planned = schedule.sampling_grid(600)
    assert (planned.kind, planned.spacing) == ("karras_diffusers", "trailing")
    assert float(planned.sigmas[0]) == pytest.approx(float(schedule.sigmas[-1]), rel=1e-12)
    assert "sampling on karras_diffusers (end points from trailing spacing)" in planned.warnings[0]
    assert planned.init_noise_sigma == float(planned.sigmas[0])  # trailing's rule: the largest sigma
    torch.testing.assert_close(planned.timesteps, schedule.sigma_to_t(planned.sigmas[:-1]))
    # Named, it keeps diffusers' Karras grid (end points from leading) and warns.
    named = schedule.sampling_grid(600, "karras_diffusers")
    ref = diffusers_euler(config, 600)
    torch.testing.assert_close(named.sigmas, ref.sigmas.double(), rtol=SIGMA_RTOL, atol=0)
    assert named.kind == "karras_diffusers" and "keep noise" in named.warnings[0]


@pytest.mark.parametrize("solver", sorted(TABLEAUS))
def test_a_zero_length_step_moves_the_latent_only_where_den_and_ren_differ(solver: str) -> None:
    """What the repeated-sigma warning says: nothing moves, except by sigma * (ren - den) (cfg++)."""
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    den, ren = torch.full_like(x, 0.3), torch.full_like(x, -0.2)
    same, _ = rk_step(TABLEAUS[solver], lambda x_i, s, i: (den, den), x, 2.0, 2.0)
    torch.testing.assert_close(same, x, rtol=0, atol=1e-12)
    moved, _ = rk_step(TABLEAUS[solver], lambda x_i, s, i: (den, ren), x, 2.0, 2.0)
    torch.testing.assert_close(moved, x + 2.0 * (ren - den), rtol=0, atol=1e-12)


class ExactGaussianBundle:
    """The least a ModelBundle needs for `sample`: the data is N(0, 1/4), eps its exact posterior mean."""

    device, dtype = torch.device("cpu"), torch.float32
    latent_channels, vae_scale_factor, default_size = 4, 8, (16, 16)
    force_zeros_for_empty_prompt = True

    def __init__(self) -> None:
        self.schedule = Schedule.from_config(SDXL)
        self.timesteps: list[float] = []

    def encode(self, texts, height, width, zero_if_empty=None):
        return SimpleNamespace(batch=len(texts), select=lambda rows: SimpleNamespace(batch=len(rows)))

    def dropped_text(self, texts):
        return ["" for _ in texts]

    def eps(self, x, sigma, t, cond):
        self.timesteps.append(t)
        return sigma * x / (sigma**2 + 0.25)

    def decode(self, latent):
        return torch.tanh(latent[:, :3])

    def preview(self, denoised):
        return None


@pytest.mark.parametrize(("steps", "schedule", "kind"), [(600, "default", "trailing"), (600, "leading", "leading")])
def test_the_run_records_the_grid_it_sampled_and_the_warning(steps: int, schedule: str, kind: str) -> None:
    bundle = ExactGaussianBundle()
    result = sample(bundle, GenerationRequest(prompt="x", guidance="none", steps=steps, schedule=schedule))
    planned = bundle.schedule.sampling_grid(steps, schedule)
    assert result.stats["schedule"] == kind == planned.kind
    assert result.stats["sigmas"] == planned.sigmas.tolist() and result.stats["timesteps"] == bundle.timesteps
    assert bundle.timesteps == planned.timesteps.tolist()
    assert result.stats["init_noise_sigma"] == planned.init_noise_sigma
    assert result.stats["warnings"] == list(planned.warnings) and len(planned.warnings) == 1
    started_at = result.stats["sigmas"][0]
    assert (started_at > 14.6) if kind == "trailing" else (started_at < 2.3)


def test_a_20_step_run_has_no_schedule_warning_and_samples_the_leading_grid() -> None:
    bundle = ExactGaussianBundle()
    result = sample(bundle, GenerationRequest(prompt="x", guidance="none", steps=20))
    leading = sample(
        ExactGaussianBundle(), GenerationRequest(prompt="x", guidance="none", steps=20, schedule="leading")
    )
    assert result.stats["warnings"] == [] and result.stats["schedule"] == "leading"
    assert result.stats["sigmas"] == bundle.schedule.grid(20).tolist()
    assert torch.equal(result.latent, leading.latent)


def test_generate_prints_the_schedule_warning_and_the_history_keeps_it(tmp_path, tiny_sdxl_dir, capsys) -> None:
    # 5 steps: the tiny model's SDXL leading grid starts at sigma 5.13, so the run samples trailing spacing.
    rc = main(
        ["--data-dir", str(tmp_path / "home"), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "x"]
        + ["--steps", "5", "--width", "64", "--height", "64", "--out", str(tmp_path / "o.png"), "--json"]
    )
    assert rc == 0
    captured = capsys.readouterr()
    printed = [line.removeprefix("warning: ") for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(printed) == 1 and "sampling on trailing spacing instead" in printed[0]
    summary = json.loads(captured.out)
    assert summary["warnings"] == printed
    store = open_store(tmp_path / "home")
    try:
        stats = store.get_run(summary["run_id"]).stats
    finally:
        store.close()
    assert stats["warnings"] == printed and stats["schedule"] == "trailing"
    assert stats["sigmas"][0] == pytest.approx(14.6146, abs=1e-4) and stats["timesteps"][0] == 999


async def test_the_lab_notifies_the_schedule_warning_and_the_history_keeps_it(tmp_path, tiny_sdxl_dir) -> None:
    import time

    from textual.widgets import Input

    from tnr_tui.ui.app import TnrLabApp

    app = TnrLabApp(data_dir=tmp_path / "home", model=str(tiny_sdxl_dir), image_protocol="halfcell")
    async with app.run_test(size=(160, 50)) as pilot:
        lab = app.lab
        lab.query_one("#prompt", Input).value = "a red circle"
        for field, value in (("#steps", "5"), ("#width", "64"), ("#height", "64")):
            lab.query_one(field, Input).value = value
        await pilot.press("ctrl+r")
        deadline = time.monotonic() + 60
        while not app.ended and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert app.ended and app.ended[0].status == "done", app.ended and app.ended[0].error
        await pilot.pause(0.1)
        # Textual has no public list of notifications; App._notifications is its only record.
        shown = [n.message for n in app._notifications if n.severity == "warning"]
        assert len(shown) == 1 and "sampling on trailing spacing instead" in shown[0]
    store = open_store(tmp_path / "home")
    try:
        (run,) = store.list_runs()
        assert run.stats["warnings"] == shown and run.stats["schedule"] == "trailing"
    finally:
        store.close()
