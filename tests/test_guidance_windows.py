"""The two windows: a guider's own fraction-of-steps window (diffusers' semantics, per method) and the lab's
sigma window (guidance_sigma_min/max). A term applies only where both hold; outside the sigma window a step
evaluates c alone, whatever the method (docs/MATH.md 5)."""

from __future__ import annotations

import pytest

from engine.evaluations import planned_evaluations
from engine.guidance import GuidancePlan
from engine.request import GenerationRequest

# A descending 8-step grid ending in 0 (only the start sigmas matter for the window).
SIGMAS = [14.0, 9.0, 6.0, 4.0, 2.5, 1.5, 0.8, 0.3, 0.0]


def kinds_per_step(request):
    plan = GuidancePlan.from_request(request)
    return [plan.for_step(SIGMAS[i], SIGMAS[i + 1], i, 8).kinds for i in range(8)]


def test_guider_window_alone():
    request = GenerationRequest(prompt="a", guidance="apg", guidance_params={"start": 0.25, "stop": 0.75})
    kinds = kinds_per_step(request)
    # int(0.25 * 8) = 2 <= i < int(0.75 * 8) = 6
    assert [len(k) for k in kinds] == [1, 1, 2, 2, 2, 2, 1, 1]


def test_pag_perturbed_window_is_strict_and_cfg_window_is_not():
    params = {"perturbed_guidance_start": 0.25, "perturbed_guidance_stop": 0.75, "start": 0.25, "stop": 0.75}
    kinds = kinds_per_step(GenerationRequest(prompt="a", guidance="pag", guidance_params=params))
    # CFG: 2 <= i < 6; PAG: 2 < i < 6
    assert kinds[2] == ("uncond", "cond") and kinds[3] == ("uncond", "cond", "perturbed")
    assert kinds[5] == ("uncond", "cond", "perturbed") and kinds[6] == ("cond",)
    every = {"perturbed_guidance_start": -1.0, "perturbed_guidance_stop": 1.0}
    kinds = kinds_per_step(GenerationRequest(prompt="a", guidance="pag", guidance_params=every))
    assert all(k == ("uncond", "cond", "perturbed") for k in kinds)  # -1: every step, as the PAG pipelines


@pytest.mark.parametrize("guidance", ["apg", "pag", "mag", "perp-neg", "cfg"])
def test_both_windows_must_hold(guidance):
    params = {"start": 0.25, "stop": 0.75} if guidance not in ("perp-neg", "cfg") else {}
    if guidance == "pag":
        params.update(perturbed_guidance_start=-1.0, perturbed_guidance_stop=1.0)
    base = GenerationRequest(prompt="a", guidance=guidance, guidance_params=params, steps=8)
    windowed = base.replace(guidance_sigma_min=1.0, guidance_sigma_max=5.0)  # start sigmas 4, 2.5, 1.5
    alone, both = kinds_per_step(base), kinds_per_step(windowed)
    for i in range(8):
        if 1.0 <= SIGMAS[i] <= 5.0:
            assert both[i] == alone[i]  # the method's own window decides
        else:
            assert both[i] == ("cond",)  # the sigma window decides: c alone
    counts = [len(k) for k in both]
    assert planned_evaluations(windowed, SIGMAS) == sum(counts)
    # without the grid the count is an upper bound (every step inside the sigma window)
    assert planned_evaluations(windowed) >= sum(counts)
