"""ddpm (engine/solvers/ddpm.py) equals diffusers' DDPMScheduler (fixed_small) and DDPM's posterior step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE, load_pipe, reference_latent, relative_error
from gaussian_bundle import GaussianBundle, request

from engine.models import load_bundle
from engine.noise import NoiseSource
from engine.request import GenerationRequest
from engine.sampler import sample
from engine.solvers import Prediction, SolverContext, make_solver

STEPS = 6
SHAPE = (1, 4, SIZE // 8, SIZE // 8)


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_pipe(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


def run(bundle, model_dir, schedule: str, guidance: str, scale: float):
    req = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=str(model_dir),
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=STEPS,
        solver="ddpm",
        schedule=schedule,
        guidance=guidance,
        scale=scale,
        preview_every=0,
    )
    return sample(bundle, req)


@pytest.mark.parametrize(
    "schedule, spacing, guidance, scale",
    [("default", "leading", "cfg", 5.0), ("trailing", "trailing", "cfg", 5.0), ("default", "leading", "none", 1.0)],
)
def test_ddpm_equals_diffusers_ddpm_scheduler(pipe, bundle, tiny_sdxl_dir, schedule, spacing, guidance, scale):
    from diffusers import DDPMScheduler

    # SDXL's config: leading spacing with steps_offset 1, clip_sample off, no variance_type (fixed_small).
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    assert scheduler.config.variance_type == "fixed_small" and not scheduler.config.clip_sample
    ours = run(bundle, tiny_sdxl_dir, schedule, guidance, scale)
    scheduler.set_timesteps(STEPS)
    assert [round(t) for t in ours.stats["timesteps"]] == scheduler.timesteps.tolist()
    # The same noise: the true noise n, then the generator's next draws, one per step but the last (t > 0).
    generator = torch.Generator("cpu").manual_seed(SEED)
    n = torch.randn(SHAPE, generator=generator, dtype=torch.float32)
    assert torch.equal(n, ours.true_noise)
    # The same start: ours x_T = n init_noise_sigma (VE); DDPMScheduler's latents are VP (init_noise_sigma 1).
    sigma_0 = ours.stats["sigmas"][0]
    start = n * ours.stats["init_noise_sigma"] / math.sqrt(1 + sigma_0**2)
    kinds = (lambda i: ("uncond", "cond")) if guidance == "cfg" else (lambda i: ("cond",))

    def combine(i, t, p):
        return p["cond"] if guidance == "none" else p["uncond"] + scale * (p["cond"] - p["uncond"])

    reference = reference_latent(
        pipe, scheduler, STEPS, combine, latents=start, kinds=kinds, step_kwargs=lambda i: {"generator": generator}
    )
    assert reference.abs().max() > 1.0
    error = relative_error(ours.latent, reference)
    assert error <= 1e-4, error
    per_step = 2 if guidance == "cfg" else 1
    assert ours.stats["model_evaluations"] == ours.stats["planned_evaluations"] == per_step * STEPS

    # Not trivially passed: DDPMScheduler with other noise (another seed's draws after the same n) differs.
    other = torch.Generator("cpu").manual_seed(SEED + 1)
    wrong = reference_latent(
        pipe, scheduler, STEPS, combine, latents=start, kinds=kinds, step_kwargs=lambda i: {"generator": other}
    )
    assert relative_error(ours.latent, wrong) > 1e-2


def test_ddpm_step_is_the_posterior_mean_plus_beta_tilde_noise():
    """Three steps by hand in the VP variable, abar = 1 / (1 + sigma^2) (ComfyUI's convention), eps-form mean
    mu = (x_vp - beta eps / sqrt(1 - abar)) / sqrt(alpha) plus sqrt(beta~) z; the true noise tracked. x is
    float64; the draws are float32 and so is sigma_up z (a float times a float32 tensor): hence 1e-6, not 1e-12."""
    sigmas = [8.0, 3.0, 1.0, 0.0]
    x0 = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def eps_of(x, s):  # a fixed linear 'model' (VE x): eps = (x - D) / s with D = 0.3 x / (1 + s)
        return (x - 0.3 * x / (1 + s)) / s

    solver = make_solver("ddpm")
    noise = NoiseSource([7], SHAPE)
    ctx = SolverContext(sigmas=sigmas, predict=lambda x, s: Prediction(x, s, eps_of(x, s), eps_of(x, s)), noise=noise)
    ctx.true_noise = noise.true_noise.double()
    draws = NoiseSource([7], SHAPE)  # the same generator: its draws after n are the z of each step
    ours, ref, n = x0 * sigmas[0], x0 * sigmas[0], ctx.true_noise
    for i in range(3):
        ours = solver.step(ctx, ours, i)
        s, s_next = sigmas[i], sigmas[i + 1]
        abar, abar_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        alpha, beta = abar / abar_next, 1 - abar / abar_next
        x_vp = ref * math.sqrt(abar)
        mu = (x_vp - beta * eps_of(ref, s) / math.sqrt(1 - abar)) / math.sqrt(alpha)
        if s_next > 0:
            z = draws.normal().double()
            beta_tilde = (1 - abar_next) / (1 - abar) * beta
            mu = mu + math.sqrt(beta_tilde) * z
            down, up = s_next**2 / s, s_next * math.sqrt(s**2 - s_next**2) / s
            n = (down * n + up * z) / s_next
            torch.testing.assert_close(ctx.true_noise, n, rtol=0, atol=1e-6)
        ref = mu / math.sqrt(abar_next)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert noise.draws == draws.draws == 2  # nothing drawn for the step to sigma 0


def test_ddpm_with_cfg_pp_moves_the_guided_estimate_with_the_unconditional_noise():
    """x' = D + sigma_down u + sigma_up z: the CFG++ rule at eta 1 (sigma_down = sigma'^2 / sigma)."""
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    den, ren = torch.full_like(x, 0.5), torch.full_like(x, -0.25)
    noise = NoiseSource([3], SHAPE)
    ctx = SolverContext(sigmas=[4.0, 2.0, 0.0], predict=lambda x_, s: Prediction(x_, s, den, ren), noise=noise)
    x_next = make_solver("ddpm").step(ctx, x, 0)
    z = NoiseSource([3], SHAPE).normal().double()
    # sigma_up z is float32 (see above): 1e-6.
    expected = (x - 4.0 * den) + 1.0 * ren + 2.0 * math.sqrt(0.75) * z
    torch.testing.assert_close(x_next, expected, rtol=0, atol=1e-6)


def test_ddpm_is_euler_ancestral_at_eta_1_and_ddim_at_eta_0():
    """The identity the module's docstring derives, bit for bit on the lab's own loop (cfg, 6 steps)."""

    def latent(solver: str, **params) -> torch.Tensor:  # noqa: ANN003
        req = request(solver=solver, seed=5, steps=STEPS, guidance="cfg", solver_params=params)
        return sample(GaussianBundle(), req).latent

    ddpm = latent("ddpm")
    assert torch.equal(ddpm, latent("euler_ancestral"))
    assert torch.equal(ddpm, latent("ddim", eta=1.0))
    assert torch.equal(latent("ddpm", eta=0.0), latent("ddim"))
    assert not torch.allclose(ddpm, latent("ddim"))
