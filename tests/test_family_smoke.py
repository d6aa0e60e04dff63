"""Every solver and every guidance method runs on every family (issue 14, "Exactness"): SD 1.5, SD 2.x
v-prediction and SDXL v-prediction with zero terminal SNR, 2 steps each (solvers under CFG, methods under
Euler), finite latents and the planned model evaluations spent."""

from __future__ import annotations

import pytest
import torch

from engine import units
from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample


@pytest.mark.parametrize("fixture", ["tiny_sd15_dir", "tiny_sd2v_dir", "tiny_sdxl_vzsnr_dir"])
def test_every_solver_and_guidance_method_runs_on_the_family(fixture, request):
    path = request.getfixturevalue(fixture)
    bundle = load_bundle(str(path))
    base = GenerationRequest(prompt="a red circle", negative_prompt="blurry", width=64, height=64, steps=2, seed=3)
    cases = [base.replace(solver=u.name) for u in units.SOLVERS]
    cases += [base.replace(guidance=u.name) for u in units.GUIDANCE]
    failures = []
    for case in cases:
        try:
            result = sample(bundle, case.replace(preview_every=0))
        except Exception as exc:  # collected: the message lists every combination that fails
            failures.append(f"{case.solver}/{case.guidance}: {type(exc).__name__}: {str(exc).splitlines()[:1]}")
            continue
        stats = result.stats
        if not torch.isfinite(result.latent).all():
            failures.append(f"{case.solver}/{case.guidance}: non-finite latent")
        elif stats["model_evaluations"] != stats["planned_evaluations"]:
            failures.append(f"{case.solver}/{case.guidance}: {stats['model_evaluations']} != planned")
    assert not failures, "\n".join(failures)
