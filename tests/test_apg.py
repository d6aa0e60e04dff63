"""apg (engine/guidance/apg.py) equals diffusers' AdaptiveProjectedGuidance driving the same predictions."""

from __future__ import annotations

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE, load_pipe, reference_latent, relative_error

from engine.models import load_bundle
from engine.request import GenerationRequest, RequestError
from engine.sampler import sample

STEPS = 8


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_pipe(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


def diffusers_apg(pipe, scale: float, params: dict) -> torch.Tensor:
    from diffusers import EulerDiscreteScheduler
    from diffusers.guiders import AdaptiveProjectedGuidance
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

    guider = AdaptiveProjectedGuidance(guidance_scale=scale, **params)
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def kinds(i):
        guider.set_state(step=i, num_inference_steps=STEPS, timestep=None)
        if i == 0 and guider.adaptive_projected_guidance_momentum is not None:
            # what the guider's prepare_inputs does at step 0
            guider.momentum_buffer = MomentumBuffer(guider.adaptive_projected_guidance_momentum)
        return ("uncond", "cond") if guider.num_conditions == 2 else ("cond",)

    def combine(i, t, p):
        return guider.forward(pred_cond=p["cond"], pred_uncond=p.get("uncond")).pred

    return reference_latent(pipe, scheduler, STEPS, combine, kinds=kinds)


def ours(bundle, model, scale: float, params: dict):
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=model,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=STEPS,
        guidance="apg",
        scale=scale,
        guidance_params=params,
        preview_every=0,
    )
    return sample(bundle, request)


@pytest.mark.parametrize(
    "scale, params",
    [
        (5.0, {}),  # the defaults: CFG while ||c - u|| <= 15
        (5.0, {"eta": 0.0, "adaptive_projected_guidance_rescale": 2.0}),  # clipped and projected
        (4.0, {"eta": 0.3, "adaptive_projected_guidance_rescale": 1.5, "adaptive_projected_guidance_momentum": -0.5}),
        (4.0, {"eta": 0.3, "use_original_formulation": True, "start": 0.25, "stop": 0.75}),
        (1.0, {"eta": 0.0}),  # scale 1: off, one prediction per step
    ],
)
def test_apg_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params):
    reference = diffusers_apg(pipe, scale, params)
    result = ours(bundle, str(tiny_sdxl_dir), scale, params)
    assert reference.abs().max() > 1.0
    assert relative_error(result.latent, reference) <= 1e-4
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"]


def test_apg_settings_change_the_result_and_its_window_changes_the_count(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    plain = ours(bundle, model, 5.0, {})
    projected = ours(bundle, model, 5.0, {"eta": 0.0, "adaptive_projected_guidance_rescale": 2.0})
    assert relative_error(projected.latent, plain.latent) > 1e-3
    windowed = ours(bundle, model, 5.0, {"start": 0.5})
    # int(0.5 * 8) = 4 steps outside the window evaluate c only: 4 * 1 + 4 * 2.
    assert windowed.stats["model_evaluations"] == 12


def test_apg_parameters_are_validated():
    with pytest.raises(RequestError, match="adaptive_projected_guidance_rescale must be at least 0"):
        GenerationRequest(prompt="x", guidance="apg", guidance_params={"adaptive_projected_guidance_rescale": -1})
    with pytest.raises(RequestError, match="has no parameter momentum"):
        GenerationRequest(prompt="x", guidance="apg", guidance_params={"momentum": 0.5})
