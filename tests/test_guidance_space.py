"""Where guidance combines: diffusers' guiders act on the model's raw output (v on a v-prediction model). On a
v-prediction copy of the tiny fixture, nonlinear methods equal diffusers' guider fed the raw v outputs; linear
ones are the same in either space; eps models never convert (docs/MATH.md 5)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE, load_pipe, reference_latent, relative_error

from engine.guidance.base import eps_to_v, v_to_eps
from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample

STEPS = 8


@pytest.fixture(scope="module")
def v_dir(tiny_sdxl_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("tiny-v") / "tiny-sdxl-v"
    shutil.copytree(tiny_sdxl_dir, target)
    config_path = target / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def v_pipe(v_dir):
    return load_pipe(v_dir)


@pytest.fixture(scope="module")
def v_bundle(v_dir):
    return load_bundle(str(v_dir))


def guider_on_raw_output(pipe, guider, *, to_eps: bool = False):
    """diffusers' Euler loop (v_prediction) with the guider combining the UNet's raw outputs; `to_eps`: the
    wrong way, the outputs converted to eps first and the guided eps converted back, for contrast."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert scheduler.config.prediction_type == "v_prediction"

    def kinds(i):
        guider.set_state(step=i, num_inference_steps=STEPS, timestep=None)
        return ("uncond", "cond") if guider.num_conditions == 2 else ("cond",)

    def combine(i, t, p):
        c, u = p["cond"], p.get("uncond")
        if not to_eps:
            return guider.forward(pred_cond=c, pred_uncond=u).pred
        sigma = float(scheduler.sigmas[i])
        x = x_of_step[0]
        c, u = v_to_eps(c, x, sigma), None if u is None else v_to_eps(u, x, sigma)
        return eps_to_v(guider.forward(pred_cond=c, pred_uncond=u).pred, x, sigma)

    x_of_step = [None]
    original_scale = scheduler.scale_model_input

    def scale_model_input(x, t):
        x_of_step[0] = x  # the VE latent of the step (Euler's sample), for the contrast's conversion
        return original_scale(x, t)

    scheduler.scale_model_input = scale_model_input
    return reference_latent(pipe, scheduler, STEPS, combine, kinds=kinds)


def ours(bundle, model, guidance, scale, params=None, **kw):
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=model,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=STEPS,
        guidance=guidance,
        scale=scale,
        guidance_params=params or {},
        preview_every=0,
        **kw,
    )
    return sample(bundle, request)


def test_the_conversion_is_the_bundles_and_inverts():
    x = torch.randn(1, 4, 8, 8)
    eps = torch.randn(1, 4, 8, 8)
    for sigma in (14.6, 1.0, 0.03):
        torch.testing.assert_close(v_to_eps(eps_to_v(eps, x, sigma), x, sigma), eps, rtol=1e-5, atol=1e-5)
        a = 1 / math.sqrt(sigma**2 + 1)
        v = eps_to_v(eps, x, sigma)
        # eps = a v + s z with s = sigma a and z = a x (the bundle's formula, engine/models/bundle.py eps)
        torch.testing.assert_close(a * v + sigma * a * (x * a), eps, rtol=1e-5, atol=1e-5)


def guiders():
    from diffusers.guiders import (
        AdaptiveProjectedGuidance,
        ClassifierFreeGuidance,
        ClassifierFreeZeroStarGuidance,
        TangentialClassifierFreeGuidance,
    )

    return {
        "apg": (AdaptiveProjectedGuidance, {"eta": 0.0, "adaptive_projected_guidance_rescale": 2.0}, 0.0),
        "cfg-zero-star": (ClassifierFreeZeroStarGuidance, {"zero_init_steps": 1}, 0.0),
        "tcfg": (TangentialClassifierFreeGuidance, {}, 0.0),
        "cfg": (ClassifierFreeGuidance, {}, 0.7),  # CFG rescale is nonlinear: it rescales v, as diffusers does
    }


@pytest.mark.parametrize("name", ["apg", "cfg-zero-star", "tcfg", "cfg"])
def test_nonlinear_methods_on_a_v_model_equal_the_guider_fed_raw_v(v_pipe, v_bundle, v_dir, name):
    cls, params, rescale = guiders()[name]
    reference = guider_on_raw_output(v_pipe, cls(guidance_scale=5.0, guidance_rescale=rescale, **params))
    result = ours(v_bundle, str(v_dir), name, 5.0, params, cfg_rescale=rescale)
    assert reference.abs().max() > 1.0
    assert relative_error(result.latent, reference) <= 1e-4
    # Combining the eps instead (what the lab did before) is a different image: the space matters.
    wrong = guider_on_raw_output(v_pipe, cls(guidance_scale=5.0, guidance_rescale=rescale, **params), to_eps=True)
    assert relative_error(wrong, reference) > 1e-3


def test_mag_on_a_v_model_equals_the_guider_fed_raw_v(v_pipe, v_bundle, v_dir):
    from diffusers.guiders import MagnitudeAwareGuidance

    guider = MagnitudeAwareGuidance(guidance_scale=6.0, alpha=2.0)
    original = guider.forward

    def flat_forward(pred_cond, pred_uncond=None):  # the 3-D form the guider accepts
        shape = pred_cond.shape
        out = original(
            pred_cond=pred_cond.flatten(2), pred_uncond=None if pred_uncond is None else pred_uncond.flatten(2)
        )
        out.pred = out.pred.reshape(shape)
        return out

    guider.forward = flat_forward
    reference = guider_on_raw_output(v_pipe, guider)
    result = ours(v_bundle, str(v_dir), "mag", 6.0, {"alpha": 2.0})
    assert relative_error(result.latent, reference) <= 1e-4


def test_linear_methods_are_the_same_in_either_space(v_pipe, v_bundle, v_dir):
    from diffusers.guiders import ClassifierFreeGuidance

    reference = guider_on_raw_output(v_pipe, ClassifierFreeGuidance(guidance_scale=5.0))
    result = ours(v_bundle, str(v_dir), "cfg", 5.0)
    assert relative_error(result.latent, reference) <= 1e-4
    contrast = guider_on_raw_output(v_pipe, ClassifierFreeGuidance(guidance_scale=5.0), to_eps=True)
    assert relative_error(contrast, reference) <= 1e-5


def test_eps_models_never_convert(monkeypatch):
    # On an eps model the plan hands combine the eps predictions untouched (bit-identity of every method
    # there; tests/test_legacy_history.py holds the stored runs).
    from engine.guidance import GuidancePlan, base, plan

    calls = []
    monkeypatch.setattr(plan, "eps_to_v", lambda *a: calls.append(a) or base.eps_to_v(*a))
    request = GenerationRequest(prompt="a", negative_prompt="b", guidance="apg", scale=5.0)
    u, c, n = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    x = torch.randn(1, 4, 2, 2)
    for prediction_type, expected in (("epsilon", 0), ("v_prediction", 2)):
        step = GuidancePlan.from_request(request, prediction_type=prediction_type).for_step(5.0, 3.0, 0, 4)
        step.pair(torch.cat([u, c]), n, x=x, sigma=5.0)
        assert len(calls) == expected
        calls.clear()
