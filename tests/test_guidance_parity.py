"""The methods named after diffusers' CFG-family guiders equal a reference loop in which diffusers' own guider
object combines the predictions (tiny fixture, Euler, 1e-4 relative): cfg-zero-star, tcfg, mag, fdg."""

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


def guider_latent(pipe, guider, *, flat: bool = False, steps: int = STEPS) -> torch.Tensor:
    """diffusers' Euler loop with `guider` combining (set_state, then forward(pred_cond=, pred_uncond=)).
    `flat`: the predictions are handed over as [B, C, H*W] (the form MagnitudeAwareGuidance accepts)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def kinds(i):
        guider.set_state(step=i, num_inference_steps=steps, timestep=None)
        return ("uncond", "cond") if guider.num_conditions == 2 else ("cond",)

    def combine(i, t, p):
        c, u = p["cond"], p.get("uncond")
        if flat:
            shape = c.shape
            c = c.flatten(2)
            u = None if u is None else u.flatten(2)
            return guider.forward(pred_cond=c, pred_uncond=u).pred.reshape(shape)
        return guider.forward(pred_cond=c, pred_uncond=u).pred

    return reference_latent(pipe, scheduler, steps, combine, kinds=kinds)


def ours(bundle, model, guidance: str, scale: float | None, params: dict, **kw):
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=model,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=kw.pop("steps", STEPS),
        guidance=guidance,
        scale=scale,
        guidance_params=params,
        preview_every=0,
        **kw,
    )
    return sample(bundle, request)


def check(result, reference, evaluations: int | None = None) -> None:
    assert reference.abs().max() > 1.0
    assert relative_error(result.latent, reference) <= 1e-4
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"]
    if evaluations is not None:
        assert result.stats["model_evaluations"] == evaluations


# ---- cfg-zero-star ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, params, rescale, evaluations",
    [
        (5.0, {}, 0.0, 1 + 7 * 2),  # zero-init step 0: one evaluation, then CFG-Zero*
        (5.0, {"zero_init_steps": 0, "use_original_formulation": True}, 0.0, 16),
        (4.0, {"zero_init_steps": 2, "start": 0.25, "stop": 0.75}, 0.0, 2 + 4 * 2 + 2),
        (4.0, {"zero_init_steps": 0}, 0.7, 16),  # guidance_rescale is the request's cfg_rescale
        (1.0, {"zero_init_steps": 1}, 0.0, 8),  # scale 1: c only, zero-init still first
    ],
)
def test_cfg_zero_star_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params, rescale, evaluations):
    from diffusers.guiders import ClassifierFreeZeroStarGuidance

    reference = guider_latent(
        pipe, ClassifierFreeZeroStarGuidance(guidance_scale=scale, guidance_rescale=rescale, **params)
    )
    result = ours(bundle, str(tiny_sdxl_dir), "cfg-zero-star", scale, params, cfg_rescale=rescale)
    check(result, reference, evaluations)


def test_cfg_zero_star_defaults_are_the_guiders():
    from diffusers.guiders import ClassifierFreeZeroStarGuidance

    from engine.units import GUIDANCE

    unit = GUIDANCE.get("cfg-zero-star")
    guider = ClassifierFreeZeroStarGuidance()
    assert unit.default_scale == guider.guidance_scale
    defaults = {p.name: p.default for p in unit.params}
    assert defaults["zero_init_steps"] == guider.zero_init_steps
    assert (defaults["start"], defaults["stop"]) == (guider._start, guider._stop)


# ---- tcfg -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, params, rescale",
    [(5.0, {}, 0.0), (3.0, {"use_original_formulation": True, "start": 0.25}, 0.0), (5.0, {}, 0.5), (1.0, {}, 0.0)],
)
def test_tcfg_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params, rescale):
    from diffusers.guiders import TangentialClassifierFreeGuidance

    reference = guider_latent(
        pipe, TangentialClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=rescale, **params)
    )
    result = ours(bundle, str(tiny_sdxl_dir), "tcfg", scale, params, cfg_rescale=rescale)
    check(result, reference)


def test_tcfg_differs_from_cfg(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    tcfg = ours(bundle, model, "tcfg", 5.0, {})
    cfg = ours(bundle, model, "cfg", 5.0, {})
    assert relative_error(tcfg.latent, cfg.latent) > 1e-3


# ---- mag ------------------------------------------------------------------------------------------------


def test_diffusers_mag_guider_raises_on_4d_latents_so_its_reference_is_flattened():
    from diffusers.guiders import MagnitudeAwareGuidance

    guider = MagnitudeAwareGuidance(guidance_scale=5.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=None)
    c, u = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with pytest.raises(RuntimeError, match="dim must be a 2-tuple"):  # torch.norm over three dims
        guider.forward(pred_cond=c, pred_uncond=u)
    flat = guider.forward(pred_cond=c.flatten(2), pred_uncond=u.flatten(2)).pred
    assert flat.shape == (1, 4, 64)


@pytest.mark.parametrize(
    "scale, params, rescale",
    [
        (10.0, {}, 0.0),
        (6.0, {"alpha": 2.0, "use_original_formulation": True}, 0.0),
        (6.0, {"alpha": 0.5, "stop": 0.5}, 0.3),
        (6.0, {"alpha": 0.0}, 0.0),  # alpha 0: plain CFG
    ],
)
def test_mag_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params, rescale):
    from diffusers.guiders import MagnitudeAwareGuidance

    reference = guider_latent(
        pipe, MagnitudeAwareGuidance(guidance_scale=scale, guidance_rescale=rescale, **params), flat=True
    )
    result = ours(bundle, str(tiny_sdxl_dir), "mag", scale, params, cfg_rescale=rescale)
    check(result, reference)


def test_mag_at_alpha_0_is_cfg(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    mag = ours(bundle, model, "mag", 6.0, {"alpha": 0.0})
    cfg = ours(bundle, model, "cfg", 6.0, {})
    assert relative_error(mag.latent, cfg.latent) <= 1e-6


def test_parameters_are_validated():
    with pytest.raises(RequestError, match="zero_init_steps must be a whole number"):
        GenerationRequest(prompt="x", guidance="cfg-zero-star", guidance_params={"zero_init_steps": 1.5})
    with pytest.raises(RequestError, match="start .* is after stop"):
        GenerationRequest(prompt="x", guidance="tcfg", guidance_params={"start": 0.6, "stop": 0.4})
    with pytest.raises(RequestError, match="alpha must be a number"):
        GenerationRequest(prompt="x", guidance="mag", guidance_params={"alpha": "big"})


# ---- fdg ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, rescale",
    [
        ({}, 0.0),  # the guider's defaults: [10, 5]
        ({"guidance_scales": [6.0, 3.0], "parallel_weights": 0.3}, 0.0),
        ({"guidance_scales": [5.0, 4.0, 2.0], "parallel_weights": [0.5, 1.0, 0.2], "upcast_to_double": False}, 0.0),
        ({"guidance_scales": [6.0, 3.0], "use_original_formulation": True, "start": 0.25, "stop": 0.75}, 0.0),
        ({"guidance_scales": [6.0, 3.0]}, 0.5),
        ({"guidance_scales": [6.0, 3.0], "guidance_rescale_space": "freq"}, 0.5),
    ],
)
def test_fdg_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, params, rescale):
    from diffusers.guiders import FrequencyDecoupledGuidance

    reference = guider_latent(pipe, FrequencyDecoupledGuidance(guidance_rescale=rescale, **params))
    result = ours(bundle, str(tiny_sdxl_dir), "fdg", None, params, cfg_rescale=rescale)
    check(result, reference)


def test_fdg_with_equal_scales_is_cfg(bundle, tiny_sdxl_dir):
    # A Laplacian pyramid sums back exactly, so one scale on every level is CFG with that scale.
    model = str(tiny_sdxl_dir)
    fdg = ours(bundle, model, "fdg", None, {"guidance_scales": [4.0, 4.0]})
    cfg = ours(bundle, model, "cfg", 4.0, {})
    assert relative_error(fdg.latent, cfg.latent) <= 1e-5
    split = ours(bundle, model, "fdg", None, {"guidance_scales": [8.0, 2.0]})
    assert relative_error(split.latent, cfg.latent) > 1e-3


def test_fdg_keeps_a_level_outside_its_own_window_where_diffusers_fails():
    import torch
    from diffusers.guiders import FrequencyDecoupledGuidance

    from engine.guidance.base import StepInfo
    from engine.guidance.fdg import FrequencyDecoupled, from_pyramid, laplacian_pyramid

    torch.manual_seed(0)
    c, u = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    params = {"guidance_scales": [6.0, 3.0], "start": 0.0, "stop": [1.0, 0.5]}
    guider = FrequencyDecoupledGuidance(**params)
    guider.set_state(step=6, num_inference_steps=8, timestep=None)
    with pytest.raises(RuntimeError):  # diffusers 0.42 appends level 0's c for level 1: shapes do not match
        guider.forward(pred_cond=c, pred_uncond=u)
    from engine.guidance.base import Predictions

    den, _ = FrequencyDecoupled(1.0, params).combine(Predictions(cond=c, uncond=u), StepInfo(6, 8, 1.0, 0.5))
    pc, pu = laplacian_pyramid(c, 2), laplacian_pyramid(u, 2)
    expected = from_pyramid([pu[0] + 6.0 * (pc[0] - pu[0]), pc[1]])
    torch.testing.assert_close(den, expected)


def test_fdg_works_on_sizes_kornia_pads():
    import torch

    from engine.guidance.base import Predictions, StepInfo
    from engine.guidance.fdg import FrequencyDecoupled

    torch.manual_seed(0)
    c, u = torch.randn(1, 4, 12, 9), torch.randn(1, 4, 12, 9)
    method = FrequencyDecoupled(1.0, {"guidance_scales": [4.0, 4.0, 4.0]})
    den, _ = method.combine(Predictions(cond=c, uncond=u), StepInfo(0, 4, 1.0, 0.5))
    assert den.shape == c.shape
    torch.testing.assert_close(den, u + 4.0 * (c - u), atol=1e-5, rtol=1e-5)


def test_fdg_parameters_are_validated():
    with pytest.raises(RequestError, match="parallel_weights has 3 values but guidance_scales has 2"):
        GenerationRequest(prompt="x", guidance="fdg", guidance_params={"parallel_weights": [0.1, 0.2, 0.3]})
    with pytest.raises(RequestError, match="guidance_scales must be a list of numbers"):
        GenerationRequest(prompt="x", guidance="fdg", guidance_params={"guidance_scales": "big"})
    with pytest.raises(RequestError, match="stop must be at most 1"):
        GenerationRequest(prompt="x", guidance="fdg", guidance_params={"stop": [1.0, 1.5]})
