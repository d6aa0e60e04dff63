"""dpmpp_2m (engine/solvers/dpmpp_2m.py) equals diffusers' DPMSolverMultistepScheduler and the published update."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE, load_pipe, reference_latent, relative_error

from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample
from engine.solvers import Prediction, SolverContext, make_solver


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_pipe(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


@pytest.mark.parametrize("steps", [6, 20])
@pytest.mark.parametrize("guidance, scale", [("cfg", 5.0), ("none", 1.0)])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(pipe, bundle, tiny_sdxl_dir, steps, guidance, scale):
    from diffusers import DPMSolverMultistepScheduler

    # diffusers' leading and linspace spacings differ from its Euler scheduler's for this scheduler (an extra
    # step in the ratio); trailing is the same grid, so it is the one compared. lower_order_final=False: the
    # k-diffusion form (diffusers' default also takes the second-to-last of < 15 steps at first order).
    scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=False,
        timestep_spacing="trailing",
    )
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=str(tiny_sdxl_dir),
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=steps,
        solver="dpmpp_2m",
        schedule="trailing",
        guidance=guidance,
        scale=scale,
        preview_every=0,
    )
    ours = sample(bundle, request)
    n = ours.true_noise
    # Start both from the same point: ours x_T = n sigma_0 (VE); diffusers' DPM latents are VP, x_T / sqrt(1 + sigma_0^2).
    sigma_0 = ours.stats["sigmas"][0]
    start = n * ours.stats["init_noise_sigma"] / math.sqrt(1 + sigma_0**2)
    kinds = (lambda i: ("uncond", "cond")) if guidance == "cfg" else (lambda i: ("cond",))

    def combine(i, t, p):
        return p["cond"] if guidance == "none" else p["uncond"] + scale * (p["cond"] - p["uncond"])

    reference = reference_latent(pipe, scheduler, steps, combine, latents=start, kinds=kinds)
    assert reference.abs().max() > 1.0
    assert relative_error(ours.latent, reference) <= 1e-4
    per_step = 2 if guidance == "cfg" else 1
    assert ours.stats["model_evaluations"] == ours.stats["planned_evaluations"] == per_step * steps


def test_dpmpp_2m_step_is_the_published_update():
    """Two steps by hand from k-diffusion's sample_dpmpp_2m formulas, on a fixed linear 'model'."""
    sigmas = [8.0, 3.0, 1.0, 0.0]
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def denoise(x, s):
        return 0.3 * x / (1 + s)

    def predict(x, s):
        den = (x - denoise(x, s)) / s
        return Prediction(x, s, den, den)

    solver = make_solver("dpmpp_2m")
    ctx = SolverContext(sigmas=sigmas, predict=predict)
    ours = x
    for i in range(3):
        ours = solver.step(ctx, ours, i)
    ref, old = x, None
    for i in range(3):
        d = denoise(ref, sigmas[i])
        if sigmas[i + 1] == 0:
            ref = d
            continue
        t, t_next = -math.log(sigmas[i]), -math.log(sigmas[i + 1])
        h = t_next - t
        if old is None:
            dd = d
        else:
            r = (t - (-math.log(sigmas[i - 1]))) / h
            dd = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old
        ref = (sigmas[i + 1] / sigmas[i]) * ref - math.expm1(-h) * dd
        old = d
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_with_cfg_pp_moves_the_guided_estimate_with_the_unconditional_noise():
    """First step: x_next = D_guided + sigma_next u (the CFG++ rule: x~ = D + sigma ren replaces x)."""
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    den, ren = torch.full_like(x, 0.5), torch.full_like(x, -0.25)
    ctx = SolverContext(sigmas=[4.0, 2.0, 0.0], predict=lambda x_, s: Prediction(x_, s, den, ren))
    x_next = make_solver("dpmpp_2m").step(ctx, x, 0)
    torch.testing.assert_close(x_next, (x - 4.0 * den) + 2.0 * ren)
