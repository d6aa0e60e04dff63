"""Each model family samples exactly as its diffusers pipeline does (issue 14, "Exactness").

SD 1.5 (eps, linspace: its published scheduler config has no timestep_spacing), SD 2.x 768-v (v-prediction)
and SDXL v-prediction with zero terminal SNR (trailing): Euler and Heun + CFG latents equal to
StableDiffusionPipeline / StableDiffusionXLPipeline with EulerDiscreteScheduler / HeunDiscreteScheduler on the
same config, to 1e-4 relative. HeunDiscreteScheduler has no `rescale_betas_zero_snr`: it gets the same table
as `trained_betas` (the rescaled betas with the last one set so that abar[T-1] = 2**-24, Euler's clamp).

Heun at zero terminal SNR is the one exception, held to 2e-3: its first step, sigma 4096 -> 13.8, multiplies
the second stage's eps by (sigma - sigma_next) / 2 ~ 2000, so float32 rounding decides the third digit.
diffusers' float32 Heun is 1.8e-3 from the same pipeline loaded in float64 on this fixture, ours 2.6e-4
(diffusers' schedulers step in float32 even then, so that reference is not exact either).
"""

from __future__ import annotations

import pytest
import torch

from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample

PROMPT = "a red circle on a white background"
SIZE = 64
STEPS = 8
SEED = 1234
SCALE = 5.0


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.fixture(scope="module", params=["sd15", "sd2v", "sdxl_vzsnr"])
def family(request):
    """(name, model dir, loaded bundle, diffusers pipeline) of one family fixture."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    name = request.param
    path = request.getfixturevalue({"sd15": "tiny_sd15_dir", "sd2v": "tiny_sd2v_dir"}.get(name, "tiny_sdxl_vzsnr_dir"))
    if name == "sdxl_vzsnr":
        pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return name, path, load_bundle(str(path)), pipe


def heun_for(config: dict) -> object:
    from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler

    config = dict(config)
    if config.get("rescale_betas_zero_snr"):
        euler = EulerDiscreteScheduler.from_config(config)  # its betas are the rescaled ones
        betas = euler.betas.clone()
        abar = torch.cumprod(1.0 - betas, dim=0)
        betas[-1] = 1.0 - 2.0**-24 / abar[-2]
        config = {k: v for k, v in config.items() if k != "rescale_betas_zero_snr"}
        config["trained_betas"] = betas.tolist()
    return HeunDiscreteScheduler.from_config(config)


def diffusers_latent(pipe, scheduler, negative: str) -> torch.Tensor:
    pipe.scheduler = scheduler
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    return pipe(
        PROMPT,
        latents=noise.to(pipe.unet.dtype),  # the pipeline's own draw, cast for a float64 pipeline
        negative_prompt=negative or None,  # SD encodes "" for None; SDXL zeroes it (as our empty negative)
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        guidance_scale=SCALE,
        output_type="latent",
    ).images.float()


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
def test_family_samples_as_its_diffusers_pipeline(family, solver, negative):
    from diffusers import EulerDiscreteScheduler

    name, path, bundle, pipe = family
    config = dict(pipe.scheduler.config)
    scheduler = EulerDiscreteScheduler.from_config(config) if solver == "euler" else heun_for(config)
    reference = diffusers_latent(pipe, scheduler, negative)
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=negative,
        model=str(path),
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=STEPS,
        solver=solver,
        scale=SCALE,
        cfg_rescale=0.0,  # the zero-SNR model's own default is 0.7; diffusers' pipeline default is 0
        preview_every=0,
    )
    result = sample(bundle, request)
    assert reference.abs().max() > 0.5  # a real comparison, not two near-zero latents
    tolerance = 2e-3 if (name, solver) == ("sdxl_vzsnr", "heun") else 1e-4  # module docstring
    assert relative_error(result.latent, reference) <= tolerance, name
    expected_kind = {"sd15": "linspace", "sd2v": "linspace", "sdxl_vzsnr": "trailing"}[name]
    assert result.stats["schedule"] == expected_kind


def test_zero_snr_schedule_is_diffusers_euler_with_its_clamp(tiny_sdxl_vzsnr_dir):
    from diffusers import EulerDiscreteScheduler

    from engine.schedule import ZERO_SNR_LAST_ABAR

    bundle = load_bundle(str(tiny_sdxl_vzsnr_dir))
    assert bundle.zero_snr and bundle.prediction_type == "v_prediction"
    schedule = bundle.schedule
    assert ZERO_SNR_LAST_ABAR == 2.0**-24
    assert float(schedule.alphas_cumprod[-1]) == 2.0**-24
    assert float(schedule.sigmas[-1]) == pytest.approx(4096.0, rel=1e-6)  # sqrt(2**24 - 1)
    euler = EulerDiscreteScheduler.from_config(bundle.scheduler_config)
    # diffusers' table is float32 (its rescale cancels near the top: 1.9e-5 at t = 998), ours float64
    assert torch.allclose(schedule.sigmas.flip(0), euler.sigmas[:-1].double(), rtol=3e-5)
    euler.set_timesteps(20)
    grid = schedule.sampling_grid(20)
    assert grid.kind == "trailing" and grid.warnings == ()
    assert torch.allclose(grid.sigmas, euler.sigmas.double(), rtol=1e-5)
    assert grid.init_noise_sigma == pytest.approx(float(euler.init_noise_sigma), rel=1e-6)


def test_a_zero_snr_model_defaults_to_cfg_rescale_07_and_tnr_lab_json_overrides(tiny_sdxl_vzsnr_dir, tmp_path):
    import shutil

    bundle = load_bundle(str(tiny_sdxl_vzsnr_dir))
    request = GenerationRequest(prompt=PROMPT, steps=2, width=SIZE, height=SIZE, preview_every=0)
    assert sample(bundle, request).request.cfg_rescale == 0.7
    assert sample(bundle, request.replace(cfg_rescale=0.0)).request.cfg_rescale == 0.0
    model = shutil.copytree(tiny_sdxl_vzsnr_dir, tmp_path / "m")
    (model / "tnr_lab.json").write_text('{"cfg_rescale": 0.5}')
    assert sample(load_bundle(str(model)), request).request.cfg_rescale == 0.5
    (model / "tnr_lab.json").write_text('{"cfg_rescale": 2}')
    with pytest.raises(Exception, match="cfg_rescale must be a number between 0 and 1, got 2"):
        load_bundle(str(model))


def test_tnr_on_the_first_step_scales_the_denoised_estimate_by_s(tiny_sd2v_dir, tiny_sdxl_vzsnr_dir):
    """MATH.md 8: where the grid starts at x = sigma_0 n (linspace/trailing), TNR's first step gives
    D_tnr = S * D_c for any prediction type (v is converted to eps in eps())."""
    for path, tolerance in ((tiny_sd2v_dir, 1e-5), (tiny_sdxl_vzsnr_dir, 2e-3)):  # sigma_0 4096: float32 x - sigma eps
        bundle = load_bundle(str(path))
        events: dict[str, object] = {}
        for method in ("none", "tnr"):
            request = GenerationRequest(
                prompt=PROMPT, steps=4, guidance=method, width=SIZE, height=SIZE, seed=SEED, preview_every=0
            )
            sample(bundle, request, on_step=lambda e, m=method, seen=events: seen.setdefault(m, e))
        none, tnr = events["none"], events["tnr"]
        assert tnr.tnr_factor > 1.0
        expected = tnr.tnr_factor * none.denoised
        assert relative_error(tnr.denoised, expected) <= tolerance, path.name
