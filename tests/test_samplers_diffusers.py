"""Every sampler that diffusers has equals it on the tiny fixture model (final latents, 1e-4 relative).

Same seed, prompts, steps and sigmas; the noise a stochastic sampler injects is the lab's own, handed to
diffusers (a generator in the same state, `variance_noise`, or the Brownian tree's seed). Where diffusers'
conventions differ from k-diffusion's (start noise, the grid's end, integer timesteps) the test matches
diffusers and docs/MATH.md 9 says both. The reference loop is diffusers' own parts (tests/diffusers_reference.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_reference import (
    NEGATIVE,
    PROMPT,
    SEED,
    SIZE,
    encode,
    load_pipe,
    reference_latent,
    relative_error,
    unet_eps,
)

from engine.models import load_bundle
from engine.noise import BrownianNoise
from engine.request import GenerationRequest
from engine.sampler import sample
from engine.schedule import SamplingGrid, Schedule

SCALE = 5.0
SHAPE = (1, 4, SIZE // 8, SIZE // 8)


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_pipe(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


def ours(bundle, model_dir, solver: str, steps: int, schedule: str = "default", on_step=None, **kw):
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=str(model_dir),
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=steps,
        solver=solver,
        schedule=schedule,
        guidance="cfg",
        scale=SCALE,
        preview_every=0,
        **kw,
    )
    return sample(bundle, request, on_step=on_step)


def cfg(i, t, p):
    return p["uncond"] + SCALE * (p["cond"] - p["uncond"])


def seeded_noise() -> tuple[torch.Tensor, torch.Generator]:
    """The true noise and the generator after it: what a pipeline given generator=...manual_seed(SEED) holds."""
    generator = torch.Generator("cpu").manual_seed(SEED)
    return torch.randn(SHAPE, generator=generator, dtype=torch.float32), generator


def vp_start(result) -> torch.Tensor:
    """Our x_T as the DPM-family schedulers' (VP) latents: n init_noise_sigma / sqrt(1 + sigma_0^2)."""
    sigma_0 = result.stats["sigmas"][0]
    return result.true_noise * result.stats["init_noise_sigma"] / math.sqrt(1 + sigma_0**2)


# ---- Euler-family schedulers (leading SDXL config, the VE latent, generator noise) ----------------------------


@pytest.mark.parametrize(
    "solver, scheduler_name, steps, stochastic",
    [
        ("euler_ancestral", "EulerAncestralDiscreteScheduler", 8, True),
        ("dpm_2", "KDPM2DiscreteScheduler", 6, False),
        ("dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler", 6, True),
        ("lms", "LMSDiscreteScheduler", 8, False),
    ],
)
def test_equals_the_diffusers_scheduler(pipe, bundle, tiny_sdxl_dir, solver, scheduler_name, steps, stochastic):
    import diffusers

    scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    result = ours(bundle, tiny_sdxl_dir, solver, steps)
    n, generator = seeded_noise()
    assert torch.equal(n, result.true_noise)
    step_kwargs = (lambda i: {"generator": generator}) if stochastic else (lambda i: {})
    reference = reference_latent(pipe, scheduler, steps, cfg, latents=n, step_kwargs=step_kwargs)
    assert reference.abs().max() > 1.0
    assert relative_error(result.latent, reference) <= 1e-4
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"] == 2 * len(scheduler.timesteps)


def test_euler_ancestral_noise_matters_and_eta_zero_is_euler(pipe, bundle, tiny_sdxl_dir):
    """The comparison above is not trivially passed: without the noise the latents differ, eta 0 is euler."""
    from diffusers import EulerAncestralDiscreteScheduler

    n, _ = seeded_noise()
    other = torch.Generator("cpu").manual_seed(SEED + 1)
    scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    wrong = reference_latent(pipe, scheduler, 8, cfg, latents=n, step_kwargs=lambda i: {"generator": other})
    assert relative_error(ours(bundle, tiny_sdxl_dir, "euler_ancestral", 8).latent, wrong) > 1e-2
    quiet = ours(bundle, tiny_sdxl_dir, "euler_ancestral", 8, solver_params={"eta": 0.0}).latent
    assert torch.equal(quiet, ours(bundle, tiny_sdxl_dir, "euler", 8).latent)


# ---- DPMSolverSDE: the Brownian tree needs the identical float32 sigmas on both sides ------------------------


def test_dpmpp_sde_equals_dpm_solver_sde_with_the_same_float32_sigmas(pipe, bundle, tiny_sdxl_dir, monkeypatch):
    from diffusers import DPMSolverSDEScheduler

    steps = 6
    scheduler = DPMSolverSDEScheduler.from_config(pipe.scheduler.config, noise_sampler_seed=SEED)
    scheduler.set_timesteps(steps)
    theirs = scheduler.sigmas  # sigma_0, sigma_1 (twice), ..., sigma_(N-1) (twice), 0
    grid = torch.cat([theirs[:1], theirs[1:-1:2], theirs[-1:]]).double()
    first_order_t = scheduler.timesteps[0::2].double()
    original = Schedule.sampling_grid

    def same_float32_grid(self, n, kind="default", rho=None):
        planned = original(self, n, kind, rho)
        return SamplingGrid(
            kind=planned.kind,
            spacing=planned.spacing,
            sigmas=grid,
            timesteps=first_order_t,
            init_noise_sigma=float(scheduler.init_noise_sigma),
        )

    monkeypatch.setattr(Schedule, "sampling_grid", same_float32_grid)
    result = ours(bundle, tiny_sdxl_dir, "dpmpp_sde", steps)
    assert result.stats["sigmas"] == grid.tolist()
    n, _ = seeded_noise()
    reference = reference_latent(
        pipe, DPMSolverSDEScheduler.from_config(pipe.scheduler.config, noise_sampler_seed=SEED), steps, cfg, latents=n
    )
    assert relative_error(result.latent, reference) <= 1e-4
    other = reference_latent(
        pipe,
        DPMSolverSDEScheduler.from_config(pipe.scheduler.config, noise_sampler_seed=SEED + 1),
        steps,
        cfg,
        latents=n,
    )
    assert relative_error(result.latent, other) > 1e-2  # the tree's seed is what makes them equal
    assert result.stats["model_evaluations"] == 2 * (2 * steps - 1)


# ---- DPMSolverMultistep (trailing: the grid diffusers' multistep schedulers share with Euler) ----------------


def dpm_multistep(pipe, **config):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, lower_order_final=False, timestep_spacing="trailing", **config
    )


@pytest.mark.parametrize(
    "solver, solver_params, config",
    [
        ("dpmpp_2m", {}, dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint")),
        # k-diffusion's 3M takes its second (warm-up) step with the 'heun' 2M correction; diffusers' with its
        # solver_type, so that is 'heun' here.
        ("dpmpp_3m_sde", {"eta": 0.0}, dict(algorithm_type="dpmsolver++", solver_order=3, solver_type="heun")),
        ("res_multistep", {}, dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="heun")),
        ("dpmpp_2m_sde", {"eta": 0.0}, dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint")),
        ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, dict(algorithm_type="dpmsolver++", solver_type="heun")),
    ],
)
def test_multistep_equals_dpm_solver_multistep(pipe, bundle, tiny_sdxl_dir, solver, solver_params, config):
    steps = 8
    result = ours(bundle, tiny_sdxl_dir, solver, steps, "trailing", solver_params=solver_params)
    reference = reference_latent(pipe, dpm_multistep(pipe, **config), steps, cfg, latents=vp_start(result))
    assert relative_error(result.latent, reference) <= 1e-4


def brownian_noise(result):
    """The noise our run injected at each step (the Brownian tree over its grid): diffusers' `variance_noise`."""
    sigmas = result.stats["sigmas"]
    noise = BrownianNoise([SEED], SHAPE, min(s for s in sigmas if s > 0), max(sigmas))
    steps = [noise(a, b) if b > 0 else torch.zeros(SHAPE) for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)]
    return lambda i: {"variance_noise": steps[i]}


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_sde_equals_sde_dpmsolver_pp_with_our_noise(pipe, bundle, tiny_sdxl_dir, solver_type):
    steps = 8
    result = ours(bundle, tiny_sdxl_dir, "dpmpp_2m_sde", steps, "trailing", solver_params={"solver_type": solver_type})
    scheduler = dpm_multistep(pipe, algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver_type)
    reference = reference_latent(
        pipe, scheduler, steps, cfg, latents=vp_start(result), step_kwargs=brownian_noise(result)
    )
    assert relative_error(result.latent, reference) <= 1e-4
    deterministic = ours(bundle, tiny_sdxl_dir, "dpmpp_2m_sde", steps, "trailing", solver_params={"eta": 0.0}).latent
    assert relative_error(deterministic, reference) > 1e-2  # the noise is really there, and really the same


def test_dpmpp_3m_sde_follows_the_derivation_and_diffusers_3m_sde_has_the_d2_sign_wrong(pipe, bundle, tiny_sdxl_dir):
    """diffusers 0.42's third-order sde-dpmsolver++ update writes the D2 coefficient as (1 - e^-2h - 2h)/(2h)^2
    - 1/2; integrating 2 e^(-2(h - u)) u^2 / 2 over [0, h] gives + 1/2 (k-diffusion's -phi_3 with h_eta = 2h).
    Ours follows the derivation; diffusers with that one sign fixed equals it."""
    from diffusers import DPMSolverMultistepScheduler

    class FixedThirdOrder(DPMSolverMultistepScheduler):
        def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kw):
            sigma_t, sigma_s0, sigma_s1, sigma_s2 = (self.sigmas[self.step_index + k] for k in (1, 0, -1, -2))
            alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma_t)
            lambdas = []
            for s in (sigma_t, sigma_s0, sigma_s1, sigma_s2):
                a, s_vp = self._sigma_to_alpha_sigma_t(s) if s is not sigma_t else (alpha_t, sigma_t)
                lambdas.append(torch.log(a) - torch.log(s_vp))
            _, sigma_s0_vp = self._sigma_to_alpha_sigma_t(sigma_s0)
            m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
            h, h_0, h_1 = lambdas[0] - lambdas[1], lambdas[1] - lambdas[2], lambdas[2] - lambdas[3]
            r0, r1 = h_0 / h, h_1 / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            e = torch.exp(-2.0 * h)
            return (
                (sigma_t / sigma_s0_vp * torch.exp(-h)) * sample
                + alpha_t * (1.0 - e) * m0
                + alpha_t * ((1.0 - e) / (-2.0 * h) + 1.0) * d1
                + alpha_t * ((1.0 - e - 2.0 * h) / (2.0 * h) ** 2 + 0.5) * d2
                + sigma_t * torch.sqrt(1.0 - e) * noise
            )

    steps = 8
    result = ours(bundle, tiny_sdxl_dir, "dpmpp_3m_sde", steps, "trailing")
    config = dict(
        lower_order_final=False,
        timestep_spacing="trailing",
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
        solver_type="heun",  # the second (warm-up) step, as k-diffusion
    )
    start, noise = vp_start(result), brownian_noise(result)
    as_published = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **config)
    theirs = reference_latent(pipe, as_published, steps, cfg, latents=start, step_kwargs=noise)
    fixed = reference_latent(
        pipe, FixedThirdOrder.from_config(pipe.scheduler.config, **config), steps, cfg, latents=start, step_kwargs=noise
    )
    assert relative_error(result.latent, fixed) <= 1e-4
    assert relative_error(result.latent, theirs) > 1e-2


def test_discrete_timesteps_equal_diffusers_rounded_karras_timesteps(pipe, bundle, tiny_sdxl_dir):
    """DPMSolverMultistep with Karras sigmas (full trained range, as ours) hands the UNet rounded timesteps."""
    steps = 8
    scheduler = dpm_multistep(pipe, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    rounded = ours(bundle, tiny_sdxl_dir, "dpmpp_2m", steps, "karras", discrete_timesteps=True)
    reference = reference_latent(pipe, scheduler, steps, cfg, latents=vp_start(rounded))
    assert relative_error(rounded.latent, reference) <= 1e-4
    fractional = ours(bundle, tiny_sdxl_dir, "dpmpp_2m", steps, "karras")
    assert relative_error(fractional.latent, reference) > 1e-4  # the flag is what makes them equal
    ours_sigmas = torch.tensor(rounded.stats["sigmas"], dtype=torch.float64)
    torch.testing.assert_close(ours_sigmas, scheduler.sigmas.double(), rtol=2e-5, atol=0)
    assert [float(t) for t in scheduler.timesteps] == [round(t) for t in rounded.stats["timesteps"]]


# ---- DDIM (set_alpha_to_one: its grid ends at sigma 0, as every grid of the lab) -----------------------------


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_equals_ddim_scheduler(pipe, bundle, tiny_sdxl_dir, eta):
    from diffusers import DDIMScheduler

    steps = 8
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    result = ours(bundle, tiny_sdxl_dir, "ddim", steps, solver_params={"eta": eta})
    n, generator = seeded_noise()
    reference = reference_latent(
        pipe, scheduler, steps, cfg, latents=n, step_kwargs=lambda i: {"eta": eta, "generator": generator}
    )
    assert relative_error(result.latent, reference) <= 1e-4


# ---- UniPC and DEIS (trailing) ---------------------------------------------------------------------------------


def denoised_trace(pipe, scheduler, steps: int, start: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """diffusers' loop (as reference_latent), recording the guided D of every step in the VE variable."""
    scheduler.set_timesteps(steps)
    encoded = encode(pipe)
    x, denoised = start, []
    for i, t in enumerate(scheduler.timesteps):
        latent_in = scheduler.scale_model_input(x, t)
        eps = cfg(i, t, {kind: unet_eps(pipe, encoded[kind], latent_in, t) for kind in ("uncond", "cond")})
        sigma = float(scheduler.sigmas[i])
        denoised.append(x * math.sqrt(1 + sigma**2) - sigma * eps)
        x = scheduler.step(eps, t, x, return_dict=False)[0]
    return denoised, x


@pytest.mark.parametrize("solver, variant", [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
@pytest.mark.parametrize("order", [2, 3])
def test_uni_pc_equals_unipc_multistep(pipe, bundle, tiny_sdxl_dir, solver, variant, order):
    """The denoised estimate of every step (the predictor and the corrector before it) and the final latent.
    diffusers 0.42's bh1 ends in NaN: its last step to sigma 0 multiplies B(h) = -h = -inf by a zero residual,
    so there the last estimate (what bh2 and ours return, x = D) is what is compared."""
    from diffusers import UniPCMultistepScheduler

    steps = 8
    denoised: list[torch.Tensor] = []
    result = ours(
        bundle,
        tiny_sdxl_dir,
        solver,
        steps,
        "trailing",
        solver_params={"order": order},
        on_step=lambda e: denoised.append(e.denoised),
    )
    scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, solver_type=variant, solver_order=order, timestep_spacing="trailing"
    )
    theirs, final = denoised_trace(pipe, scheduler, steps, vp_start(result))
    assert max(relative_error(a, b) for a, b in zip(denoised, theirs, strict=True)) <= 1e-4
    assert torch.equal(result.latent, denoised[-1])
    if variant == "bh2":
        assert relative_error(result.latent, final) <= 1e-4
    else:
        assert torch.isnan(final).all()


@pytest.mark.parametrize("order", [2, 3])
def test_deis_equals_deis_multistep_at_every_step(pipe, bundle, tiny_sdxl_dir, order):
    """diffusers' DEIS ends at sigma_min (0.029), not 0: the denoised estimate of every step is compared (it
    depends on every step but the last, which ours takes to 0 as Euler, x = D)."""
    from diffusers import DEISMultistepScheduler

    steps = 20  # >= 15: diffusers' lower_order_final leaves the orders alone
    denoised: list[torch.Tensor] = []
    result = ours(
        bundle,
        tiny_sdxl_dir,
        "deis",
        steps,
        "trailing",
        solver_params={"order": order},
        on_step=lambda e: denoised.append(e.denoised),
    )
    scheduler = DEISMultistepScheduler.from_config(
        pipe.scheduler.config, solver_order=order, timestep_spacing="trailing"
    )
    theirs, _ = denoised_trace(pipe, scheduler, steps, vp_start(result))
    assert len(denoised) == len(theirs) == steps
    worst = max(relative_error(a, b) for a, b in zip(denoised, theirs, strict=True))
    assert worst <= 1e-4
    assert torch.equal(result.latent, denoised[-1])  # the last step to sigma 0 is x = D
