"""Guidance methods as direction pairs (MATH.md 5)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

from engine.guidance import (
    GuidancePlan,
    cfg,
    cfg_pp,
    equivalent_cfg_scale,
    n_prompt_base,
    no_guidance,
    rescale_cfg,
    tnr,
    tnr_cfg,
    tnr_factor,
)
from engine.request import GenerationRequest, WeightedPrompt
from engine.schedule import Schedule
from engine.solvers import EULER, rk_step

SDXL = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


@pytest.fixture
def preds() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(1, 4, 3, 5, generator=g, dtype=torch.float64) for k in ("u", "c", "n", "x")}


def test_cfg_pp_euler_step_is_the_published_rule(preds: dict[str, torch.Tensor]) -> None:
    """Chung et al. 2024, Euler CFG++: x_next = x0_guided + sigma_next * u, x0_guided = x - sigma (u + g (c - u))."""
    u, c, x = preds["u"], preds["c"], preds["x"]
    sigma, sigma_next, g = 7.3, 4.1, 0.6
    x_next, _ = rk_step(EULER, lambda x_stage, s, stage: cfg_pp(u, c, g), x, sigma, sigma_next)
    x0_guided = x - sigma * (u + g * (c - u))
    torch.testing.assert_close(x_next, x0_guided + sigma_next * u, rtol=0, atol=1e-12)


def test_cfg_and_plain_methods_follow_the_table(preds: dict[str, torch.Tensor]) -> None:
    u, c, n = preds["u"], preds["c"], preds["n"]
    g, S = 5.0, 1.4
    den, ren = cfg(u, c, g)
    torch.testing.assert_close(den, u + g * (c - u))
    assert ren is den
    den, ren = no_guidance(c)
    assert den is c and ren is c
    den, ren = tnr(c, n, S)
    torch.testing.assert_close(den, n + S * (c - n))
    assert ren is den
    den, ren = tnr_cfg(u, c, n, g, S)
    torch.testing.assert_close(den, n + S * (u + g * (c - u) - n))
    den, ren = cfg_pp(u, c, g)
    torch.testing.assert_close(den, u + g * (c - u))
    assert ren is u


def test_tnr_factor_on_the_15_step_sdxl_trailing_grid() -> None:
    schedule = Schedule.from_config(SDXL)
    grid = schedule.grid(15, "trailing")
    factors = [tnr_factor(float(schedule.abar(grid[i + 1])), p=0.25) for i in range(15)]
    # The first step ends at t = 932: S = 2 - abar[932] ** 0.25, abar from a plain-Python product of (1 - beta).
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * j / 999) ** 2 for j in range(1000)]
    abar_932 = math.prod(1 - b for b in betas[:933])
    assert factors[0] == pytest.approx(2 - abar_932**0.25, rel=1e-12)
    assert factors[0] == pytest.approx(1.683257, abs=1e-6)
    assert factors[1] == pytest.approx(1.624173, abs=1e-6)
    assert factors[7] == pytest.approx(1.245775, abs=1e-6)
    assert factors[-2] == pytest.approx(1.016855, abs=1e-6)
    assert factors[-1] == 1.0  # the last step ends at sigma 0, abar 1
    assert all(a > b for a, b in zip(factors[:-1], factors[1:], strict=True))


def test_tnr_factor_exponent_is_a_setting() -> None:
    assert tnr_factor(0.0625, p=0.5) == pytest.approx(2 - 0.25)
    assert tnr_factor(0.0625, p=0.25) == pytest.approx(2 - 0.5)


def test_two_prompt_n_form_is_cfg_with_the_equivalent_scale(preds: dict[str, torch.Tensor]) -> None:
    u, c = preds["u"], preds["c"]
    s0, s1 = -1.5, 3.0
    g = (1 + s1 - s0) / 2
    assert equivalent_cfg_scale([s0, s1]) == g == 2.75
    torch.testing.assert_close(n_prompt_base([u, c], [s0, s1]), cfg(u, c, g)[0], rtol=0, atol=1e-12)
    assert equivalent_cfg_scale([1.0, 2.0, 3.0]) is None


def test_n_prompt_base_formula(preds: dict[str, torch.Tensor]) -> None:
    p = [preds["u"], preds["c"], preds["n"]]
    s = [0.5, 2.0, -1.0]
    B = (p[0] + p[1] + p[2]) / 3
    torch.testing.assert_close(n_prompt_base(p, s), B + 0.5 * (p[0] - B) + 2.0 * (p[1] - B) - (p[2] - B))


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_cfg_rescale_matches_diffusers(preds: dict[str, torch.Tensor], phi: float) -> None:
    u, c = preds["u"].float(), preds["c"].float()
    guided = u + 7.5 * (c - u)
    torch.testing.assert_close(rescale_cfg(guided, c, phi), rescale_noise_cfg(guided, c, guidance_rescale=phi))
    den, _ = cfg(u, c, 7.5, phi)
    torch.testing.assert_close(den, rescale_noise_cfg(guided, c, guidance_rescale=phi))


def test_plan_layouts_and_evaluated_rows() -> None:
    plan = GuidancePlan.from_request(GenerationRequest(prompt="cat", negative_prompt="blur", guidance="cfg"))
    assert plan.texts == ("blur", "cat") and plan.for_step(3.0, 2.0).rows == (0, 1) and plan.conditional_row == 1
    assert plan.equivalent_cfg_scale == 5.0
    plan = GuidancePlan.from_request(GenerationRequest(prompt="cat", negative_prompt="blur", guidance="tnr"))
    assert plan.texts == ("cat",) and plan.for_step(3.0, 2.0).rows == (0,)
    prompts = (WeightedPrompt("blur", 0.0), WeightedPrompt("cat", 3.0))
    plan = GuidancePlan.from_request(GenerationRequest(prompt="dog", prompts=prompts, guidance="cfg"))
    # The request's prompt is the conditional prediction outside the window: appended when not among the N.
    assert plan.texts == ("blur", "cat", "dog") and plan.guided_rows == (0, 1) and plan.conditional_row == 2
    assert plan.equivalent_cfg_scale == 2.0 and plan.rescale_reference == 1
    plan = GuidancePlan.from_request(GenerationRequest(prompt="cat", prompts=prompts, guidance="cfg"))
    assert plan.texts == ("blur", "cat") and plan.conditional_row == 1


def test_n_form_plan_equals_cfg_plan_for_two_prompts(preds: dict[str, torch.Tensor]) -> None:
    u, c, n = preds["u"], preds["c"], preds["n"]
    for method in ("cfg", "cfg++", "tnr-cfg"):
        two = GuidancePlan.from_request(
            GenerationRequest(prompt="cat", negative_prompt="blur", guidance=method, scale=2.5, cfg_rescale=0.4)
        ).for_step(3.0, 2.0)
        n_form = GuidancePlan.from_request(
            GenerationRequest(
                prompt="cat",
                prompts=(WeightedPrompt("blur", 0.0), WeightedPrompt("cat", 4.0)),
                guidance=method,
                cfg_rescale=0.4,
            )
        ).for_step(3.0, 2.0)
        batch = torch.cat([u, c])
        for got, want in zip(n_form.pair(batch, n), two.pair(batch, n), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_sigma_window_falls_back_to_the_conditional_prediction(preds: dict[str, torch.Tensor]) -> None:
    u, c, n = preds["u"], preds["c"], preds["n"]
    request = GenerationRequest(
        prompt="cat", negative_prompt="blur", guidance="tnr-cfg", guidance_sigma_min=1.0, guidance_sigma_max=5.0
    )
    plan = GuidancePlan.from_request(request)
    inside = plan.for_step(5.0, 3.0)
    assert inside.rows == (0, 1) and inside.S == pytest.approx(2 - (1 / 10) ** 0.25)
    torch.testing.assert_close(inside.pair(torch.cat([u, c]), n)[0], tnr_cfg(u, c, n, 5.0, inside.S)[0])
    for sigma in (0.5, 5.5):
        outside = plan.for_step(sigma, sigma / 2)
        assert outside.rows == (1,)  # one prediction: the conditional one
        assert all(torch.equal(t, c) for t in outside.pair(c, n))
