"""Our sampler equals diffusers' StableDiffusionXLPipeline on the fixture model (issue 2, "Done when").

Same seed (the true noise comes from a CPU generator, as diffusers' `generator=torch.Generator("cpu")` draws
it), prompts, negative prompt, size and steps; diffusers returns the latent with `output_type="latent"`.
An empty negative prompt is compared with diffusers' `negative_prompt=None` (zero embeddings through
`force_zeros_for_empty_prompt`, which is what an unset negative gives a diffusers user).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler, StableDiffusionXLPipeline

from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample

PROMPT = "a red circle on a white background"
SIZE = 64
STEPS = 10
SEED = 1234
SCALE = 5.0


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_latent(pipe, scheduler_class, negative: str, steps: int = STEPS) -> torch.Tensor:
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    out = pipe(
        PROMPT,
        negative_prompt=negative or None,
        num_inference_steps=steps,
        height=SIZE,
        width=SIZE,
        guidance_scale=SCALE,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(SEED),
    )
    return out.images


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def request(model: str, solver: str, negative: str, **kw) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=negative,
        model=model,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=STEPS,
        solver=solver,
        guidance=kw.pop("guidance", "cfg"),
        scale=kw.pop("scale", SCALE),
        preview_every=0,
        **kw,
    )


@pytest.mark.parametrize(
    "solver, scheduler_class, negative",
    [
        ("euler", EulerDiscreteScheduler, ""),
        ("euler", EulerDiscreteScheduler, "blurry, low quality"),
        ("heun", HeunDiscreteScheduler, ""),
        ("heun", HeunDiscreteScheduler, "blurry, low quality"),
    ],
)
def test_sample_equals_diffusers_pipeline(bundle, pipe, tiny_sdxl_dir, solver, scheduler_class, negative):
    reference = diffusers_latent(pipe, scheduler_class, negative)
    result = sample(bundle, request(str(tiny_sdxl_dir), solver, negative))
    assert result.latent.shape == reference.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert reference.abs().max() > 1.0  # the random model makes a large latent: a real comparison
    assert relative_error(result.latent, reference) <= 1e-4
    evaluations_per_step = 2 * (2 if solver == "heun" else 1)
    # The last step (to sigma 0) is Euler whatever the solver.
    assert result.stats["model_evaluations"] == evaluations_per_step * (STEPS - 1) + 2


def test_an_empty_negative_is_not_the_encoded_empty_string(bundle, pipe, tiny_sdxl_dir):
    # diffusers with negative_prompt="" encodes the empty string instead of zeroing: a different latent.
    # Our empty negative follows the zero-embedding convention; make sure the two really differ here, so the
    # parity above is not vacuous about which convention is used.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    encoded_empty = pipe(
        PROMPT,
        negative_prompt="",
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        guidance_scale=SCALE,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images
    ours = sample(bundle, request(str(tiny_sdxl_dir), "euler", "")).latent
    assert relative_error(ours, encoded_empty) > 1e-3


def test_cli_generate_latent_equals_diffusers(pipe, tiny_sdxl_dir, tmp_data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from tnr_tui.cli import main

    for solver, scheduler_class in (("euler", EulerDiscreteScheduler), ("heun", HeunDiscreteScheduler)):
        latent_file = tmp_path / f"{solver}.safetensors"
        code = main(
            [
                "generate",
                "--model",
                str(tiny_sdxl_dir),
                "--prompt",
                PROMPT,
                "--negative",
                "blurry, low quality",
                "--solver",
                solver,
                "--guidance",
                "cfg",
                "--scale",
                str(SCALE),
                "--steps",
                str(STEPS),
                "--seed",
                str(SEED),
                "--width",
                str(SIZE),
                "--height",
                str(SIZE),
                "--out",
                str(tmp_path / f"{solver}.png"),
                "--save-latent",
                str(latent_file),
                "--json",
            ]
        )
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["status"] == "done"
        latent = load_file(latent_file)["latent"]
        reference = diffusers_latent(pipe, scheduler_class, "blurry, low quality")
        assert relative_error(latent, reference) <= 1e-4
        assert (tmp_path / f"{solver}.png").stat().st_size > 0


def test_cfg_pp_follows_the_published_euler_rule(bundle, pipe, tiny_sdxl_dir):
    """Euler CFG++ (Chung et al. 2024): x_next = x - sigma * (u + g (c - u)) + sigma_next * u.

    The reference loop uses diffusers' own sigmas and timesteps and the bundle's eps only.
    """
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    g = 0.8
    cond = bundle.encode(["blurry", PROMPT], SIZE, SIZE, zero_if_empty=[True, False])
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(SEED))
    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        u, c = bundle.eps(x.expand(2, -1, -1, -1), sigma, float(t), cond).chunk(2)
        x = x - sigma * (u + g * (c - u)) + sigma_next * u
    result = sample(bundle, request(str(tiny_sdxl_dir), "euler", "blurry", guidance="cfg++", scale=g))
    assert relative_error(result.latent, x) <= 1e-4
    # and it is not plain CFG at the same scale
    plain = sample(bundle, request(str(tiny_sdxl_dir), "euler", "blurry", guidance="cfg", scale=g))
    assert relative_error(plain.latent, x) > 1e-3


def test_tnr_runs_end_to_end_with_its_schedule_weight(bundle, pipe, tiny_sdxl_dir):
    """TNR (single prediction): den = n + S (c - n), S = 2 - abar(sigma_next)**p, Euler move (MATH.md 5)."""
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    p = 0.25
    cond = bundle.encode([PROMPT], SIZE, SIZE)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(SEED))
    x = noise * scheduler.init_noise_sigma
    factors = []
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        S = 2.0 - (1.0 / (1.0 + sigma_next**2)) ** p
        factors.append(S)
        c = bundle.eps(x, sigma, float(t), cond)
        x = x + (sigma_next - sigma) * (noise + S * (c - noise))
    result = sample(bundle, request(str(tiny_sdxl_dir), "euler", "", guidance="tnr", scale=1.0, tnr_power=p))
    assert result.stats["model_evaluations"] == STEPS
    assert result.stats["tnr_factors"] == pytest.approx(factors, abs=1e-6)
    assert factors[-1] == pytest.approx(1.0)
    assert relative_error(result.latent, x) <= 1e-4
    assert result.image.size == (SIZE, SIZE)


@pytest.mark.slow
def test_benchmark_script_runs_and_reports_a_ratio(tiny_sdxl_dir, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "engine_vs_diffusers.py"
    spec = importlib.util.spec_from_file_location("engine_vs_diffusers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model", str(tiny_sdxl_dir), "--steps", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"ratio ours/diffusers (\d+\.\d+) \(medians\)", out).group(1))
    difference = float(re.search(r"max relative difference (\S+)", out).group(1))
    assert ratio > 0 and difference <= 1e-4
