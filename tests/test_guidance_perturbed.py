"""pag, seg, slg and autoguidance: the perturbed pass is diffusers' own hooks on the lab's (sped-up) UNet, and
each method's latents equal a reference loop in which diffusers' guider object combines the predictions
(tiny fixture, Euler, 1e-4); pag end to end equals StableDiffusionXLPAGPipeline."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE, encode, load_pipe, relative_error, unet_eps

from engine.guidance.base import Perturbation
from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample

STEPS = 8
MID = "mid_block.attentions.0.transformer_blocks"  # the tiny UNet's mid block: one transformer block
UP = "up_blocks.0.attentions.0.transformer_blocks"


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_pipe(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


@contextmanager
def hooks(unet, apply, configs, prefix):
    """diffusers' hooks of a guider's configs, as its prepare_models / cleanup_models install and remove them."""
    from diffusers.hooks import HookRegistry

    names = [f"{prefix}_{i}" for i in range(len(configs))]
    for name, config in zip(names, configs, strict=True):
        apply(unet, config, name)
    try:
        yield
    finally:
        registry = HookRegistry.check_if_exists_or_initialize(unet)
        for name in names:
            registry.remove_hook(name, recurse=True)


def guider_loop(pipe, guider, perturbed_key, perturb, *, steps=STEPS, uncond_perturbed=False):
    """diffusers' Euler loop; the guider says which predictions a step needs (num_conditions and its own
    _is_cfg_enabled / _is_*_enabled, as its prepare_inputs does), `perturb()` wraps the perturbed call."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    encoded = encode(pipe)
    generator = torch.Generator("cpu").manual_seed(SEED)
    x = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=generator) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        guider.set_state(step=i, num_inference_steps=steps, timestep=t)
        latent_in = scheduler.scale_model_input(x, t)
        preds = {"pred_cond": unet_eps(pipe, encoded["cond"], latent_in, t)}
        if uncond_perturbed:  # AutoGuidance: u through the degraded model
            if guider.num_conditions == 2:
                with perturb():
                    preds["pred_uncond"] = unet_eps(pipe, encoded["uncond"], latent_in, t)
        else:
            if guider._is_cfg_enabled():
                preds["pred_uncond"] = unet_eps(pipe, encoded["uncond"], latent_in, t)
            if guider.num_conditions == 3 or (guider.num_conditions == 2 and not guider._is_cfg_enabled()):
                with perturb():
                    preds[perturbed_key] = unet_eps(pipe, encoded["cond"], latent_in, t)
        x = scheduler.step(guider.forward(**preds).pred, t, x, return_dict=False)[0]
    return x


def ours(bundle, model, guidance, scale, params, **kw):
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


def check(result, reference, evaluations=None):
    assert reference.abs().max() > 1.0
    assert relative_error(result.latent, reference) <= 1e-4
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"]
    if evaluations is not None:
        assert result.stats["model_evaluations"] == evaluations


# ---- the perturbed pass itself --------------------------------------------------------------------------


class IdentitySelfAttention:
    """A hand-written identity-attention processor: every token attends only to itself (PAG's perturbation)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        out = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
        return out / attn.rescale_output_factor


def test_hooked_pass_equals_an_identity_attention_reference_and_keeps_the_speedups(pipe, bundle):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.models.speedups import FastAttention

    cond = bundle.encode([PROMPT], SIZE, SIZE)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 3.0
    sigma, t = 3.0, 700.0
    plain = bundle.eps(x, sigma, t, cond)
    hooked = bundle.eps_perturbed(x, sigma, t, cond, Perturbation("attention_scores", ("mid",)))
    # The reference: diffusers' UNet without the lab's speed-ups, the mid block's self-attention replaced.
    attn = pipe.unet.get_submodule(f"{MID}.0.attn1")
    attn.set_processor(IdentitySelfAttention())
    try:
        embeds = cond.prompt_embeds
        added = {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}
        c_in = 1.0 / (sigma**2 + 1) ** 0.5
        ts = torch.full((1,), t)
        with torch.no_grad():
            reference = pipe.unet(x * c_in, ts, encoder_hidden_states=embeds, added_cond_kwargs=added)[0]
    finally:
        attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(hooked, reference, rtol=1e-5, atol=1e-6)
    assert relative_error(hooked, plain) > 1e-3  # the perturbation does something
    # The hooks are gone after the call, and the lean attention is still installed.
    assert torch.equal(bundle.eps(x, sigma, t, cond), plain)
    assert isinstance(bundle.unet.get_submodule(f"{MID}.0.attn1").forward, FastAttention)


def test_layer_names_resolve_as_the_pag_pipelines_name_them(bundle):
    from engine.models.perturb import PerturbationError, matching_modules, resolve_layers

    assert resolve_layers(bundle.unet, ("mid",)) == {MID: [0]}
    assert resolve_layers(bundle.unet, ("mid", "up_blocks.0.attentions.0")) == {MID: [0], UP: [0]}
    assert len(resolve_layers(bundle.unet, ("up_blocks.0",))) == 2  # both attentions of the block
    assert matching_modules(bundle.unet, ("down_blocks.1",)) == [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    ]
    with pytest.raises(PerturbationError, match="no self-attention layer of this model matches 'down_blocks.7'"):
        resolve_layers(bundle.unet, ("down_blocks.7",))


def test_an_unknown_layer_is_one_clear_error_at_sampling(bundle, tiny_sdxl_dir):
    from engine.models.perturb import PerturbationError

    with pytest.raises(PerturbationError, match="matches 'nowhere'"):
        ours(
            bundle,
            str(tiny_sdxl_dir),
            "pag",
            5.0,
            {"perturbed_guidance_layers": "nowhere", "perturbed_guidance_start": -1},
        )


@pytest.mark.parametrize("guidance,key", [("pag", "perturbed_guidance_layers"), ("seg", "seg_guidance_layers")])
def test_an_unknown_layer_is_refused_even_when_no_step_is_perturbed(bundle, tiny_sdxl_dir, guidance, key):
    # The default window (0.01, 0.2) perturbs no step of 3: the typo used to pass unnoticed (hostile pass 2).
    from engine.models.perturb import PerturbationError

    with pytest.raises(PerturbationError, match="matches 'zzz'"):
        ours(bundle, str(tiny_sdxl_dir), guidance, 5.0, {key: "zzz"}, steps=3)


# ---- pag ------------------------------------------------------------------------------------------------


def pag_reference(pipe, scale, params, layers=((MID, [0]),)):
    from diffusers.guiders import PerturbedAttentionGuidance
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    configs = [
        LayerSkipConfig(indices=idx, fqn=fqn, skip_attention=False, skip_attention_scores=True, skip_ff=False)
        for fqn, idx in layers
    ]
    guider = PerturbedAttentionGuidance(guidance_scale=scale, perturbed_guidance_config=configs, **params)
    return guider_loop(
        pipe,
        guider,
        "pred_cond_skip",
        lambda: hooks(pipe.unet, _apply_layer_skip_hook, guider.skip_layer_config, "PAG"),
    )


@pytest.mark.parametrize(
    "scale, params, evaluations",
    [
        (5.0, {}, 16),  # the guider's window 0.01..0.2 of 8 steps: never perturbed
        (5.0, {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}, 2 + 7 * 3),  # steps 1..7
        (
            4.0,
            {"perturbed_guidance_scale": 1.5, "perturbed_guidance_start": 0.2, "perturbed_guidance_stop": 0.8},
            16 + 4,
        ),
        (4.0, {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0, "use_original_formulation": True}, 23),
        (4.0, {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0, "start": 0.5}, 1 + 3 * 2 + 4 * 3),
        (1.0, {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}, 1 + 7 * 2),  # CFG off, PAG on
    ],
)
def test_pag_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params, evaluations):
    reference = pag_reference(pipe, scale, params)
    result = ours(bundle, str(tiny_sdxl_dir), "pag", scale, params)
    check(result, reference, evaluations)


def test_pag_on_two_layer_stacks_and_with_rescale(pipe, bundle, tiny_sdxl_dir):
    params = {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}
    from diffusers.guiders import PerturbedAttentionGuidance
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    configs = [
        LayerSkipConfig(indices=[0], fqn=fqn, skip_attention=False, skip_attention_scores=True, skip_ff=False)
        for fqn in (MID, UP)
    ]
    guider = PerturbedAttentionGuidance(
        guidance_scale=4.0, perturbed_guidance_config=configs, guidance_rescale=0.6, **params
    )
    reference = guider_loop(
        pipe, guider, "pred_cond_skip", lambda: hooks(pipe.unet, _apply_layer_skip_hook, guider.skip_layer_config, "P")
    )
    result = ours(
        bundle,
        str(tiny_sdxl_dir),
        "pag",
        4.0,
        {**params, "perturbed_guidance_layers": "mid, up_blocks.0.attentions.0"},
        cfg_rescale=0.6,
    )
    check(result, reference)


def test_pag_guider_driven_through_its_own_prepare_models_agrees(pipe):
    # With CFG and PAG both on, the guider's own prepare_models/cleanup_models install the same hooks.
    from diffusers import EulerDiscreteScheduler
    from diffusers.guiders import PerturbedAttentionGuidance
    from diffusers.hooks import LayerSkipConfig

    config = LayerSkipConfig(indices=[0], fqn=MID, skip_attention=False, skip_attention_scores=True, skip_ff=False)
    params = {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}
    guider = PerturbedAttentionGuidance(guidance_scale=4.0, perturbed_guidance_config=config, **params)
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    encoded = encode(pipe)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(SEED)) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        guider.set_state(step=i, num_inference_steps=4, timestep=t)
        latent_in = scheduler.scale_model_input(x, t)
        names = ["pred_cond", "pred_uncond", "pred_cond_skip"][: guider.num_conditions]
        inputs = [encoded["cond"], encoded["uncond"], encoded["cond"]]
        preds = {}
        for name, inp in zip(names, inputs, strict=False):
            guider.prepare_models(pipe.unet)
            preds[name] = unet_eps(pipe, inp, latent_in, t)
            guider.cleanup_models(pipe.unet)
        x = scheduler.step(guider.forward(**preds).pred, t, x, return_dict=False)[0]
    own = x
    guider2 = PerturbedAttentionGuidance(guidance_scale=4.0, perturbed_guidance_config=config, **params)
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    ours_ref = guider_loop(
        pipe,
        guider2,
        "pred_cond_skip",
        lambda: hooks(pipe.unet, _apply_layer_skip_hook, guider2.skip_layer_config, "Q"),
        steps=4,
    )
    assert relative_error(own, ours_ref) <= 1e-6


def test_pag_equals_the_sdxl_pag_pipeline(bundle, tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPAGPipeline

    pag_pipe = StableDiffusionXLPAGPipeline.from_pretrained(
        tiny_sdxl_dir, local_files_only=True, pag_applied_layers=["mid"]
    )
    pag_pipe.set_progress_bar_config(disable=True)
    reference = pag_pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        pag_scale=3.0,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent",
    ).images
    # The pipeline perturbs every step, with no window: perturbed_guidance_start -1 (step 0 included).
    params = {"perturbed_guidance_scale": 3.0, "perturbed_guidance_start": -1.0, "perturbed_guidance_stop": 1.0}
    result = ours(bundle, str(tiny_sdxl_dir), "pag", 5.0, params)
    check(result, reference, STEPS * 3)
    # ... and with the guider's start 0 step 0 is left out: a different image.
    other = ours(bundle, str(tiny_sdxl_dir), "pag", 5.0, {**params, "perturbed_guidance_start": 0.0})
    assert relative_error(other.latent, reference) > 1e-4


# ---- seg ------------------------------------------------------------------------------------------------


def seg_reference(pipe, scale, params):
    from diffusers.guiders import SmoothedEnergyGuidance
    from diffusers.hooks import SmoothedEnergyGuidanceConfig
    from diffusers.hooks.smoothed_energy_guidance_utils import _apply_smoothed_energy_guidance_hook

    guider = SmoothedEnergyGuidance(
        guidance_scale=scale, seg_guidance_config=SmoothedEnergyGuidanceConfig(indices=[0], fqn=MID), **params
    )

    def apply(unet, config, name):
        _apply_smoothed_energy_guidance_hook(unet, config, guider.seg_blur_sigma, name=name)

    # The guider's own prepare_models never installs its hook (it does not count its calls in 0.42), so
    # the reference installs the same hook around the perturbed call.
    return guider_loop(pipe, guider, "pred_cond_seg", lambda: hooks(pipe.unet, apply, guider.seg_guidance_config, "S"))


@pytest.mark.parametrize(
    "scale, params",
    [
        (5.0, {}),
        (5.0, {"seg_blur_sigma": 2.0}),  # below the threshold: diffusers' hook takes the mean
        (4.0, {"seg_guidance_scale": 1.0, "seg_guidance_start": 0.25, "seg_guidance_stop": 0.75}),
        (1.0, {"use_original_formulation": True}),
    ],
)
def test_seg_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params):
    reference = seg_reference(pipe, scale, params)
    result = ours(bundle, str(tiny_sdxl_dir), "seg", scale, params)
    check(result, reference)
    plain = ours(bundle, str(tiny_sdxl_dir), "cfg", scale, {})
    assert relative_error(result.latent, plain.latent) > 1e-5  # the blurred pass does something


# ---- slg ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, params",
    [
        (5.0, {"skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 1.0}),
        (4.0, {"skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 0.6, "skip_ff": False}),
        (4.0, {"skip_layer_guidance_scale": 1.0, "skip_layer_guidance_stop": 1.0, "skip_attention": False}),
    ],
)
def test_slg_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params):
    from diffusers.guiders import SkipLayerGuidance
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    window = {k: v for k, v in params.items() if k not in ("skip_attention", "skip_ff")}
    config = LayerSkipConfig(
        indices=[0], fqn=MID, skip_attention=params.get("skip_attention", True), skip_ff=params.get("skip_ff", True)
    )
    guider = SkipLayerGuidance(guidance_scale=scale, skip_layer_config=config, **window)
    reference = guider_loop(
        pipe, guider, "pred_cond_skip", lambda: hooks(pipe.unet, _apply_layer_skip_hook, guider.skip_layer_config, "L")
    )
    result = ours(bundle, str(tiny_sdxl_dir), "slg", scale, params)
    check(result, reference)


# ---- autoguidance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, params", [(5.0, {}), (3.0, {"use_original_formulation": True, "stop": 0.5})])
def test_autoguidance_equals_diffusers_guider(pipe, bundle, tiny_sdxl_dir, scale, params):
    from diffusers.guiders import AutoGuidance
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    guider = AutoGuidance(guidance_scale=scale, auto_guidance_config=LayerSkipConfig(indices=[0], fqn=MID), **params)
    reference = guider_loop(
        pipe,
        guider,
        None,
        lambda: hooks(pipe.unet, _apply_layer_skip_hook, guider.auto_guidance_config, "A"),
        uncond_perturbed=True,
    )
    result = ours(bundle, str(tiny_sdxl_dir), "autoguidance", scale, params)
    check(result, reference)
    plain = ours(bundle, str(tiny_sdxl_dir), "cfg", scale, params if "stop" not in params else {})
    assert relative_error(result.latent, plain.latent) > 1e-4


def test_autoguidance_dropout_is_seeded_by_the_run(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    a = ours(bundle, model, "autoguidance", 4.0, {"dropout": 0.3})
    b = ours(bundle, model, "autoguidance", 4.0, {"dropout": 0.3})
    skip = ours(bundle, model, "autoguidance", 4.0, {"dropout": 1.0})
    assert torch.equal(a.latent, b.latent)
    assert relative_error(a.latent, skip.latent) > 1e-4
    state = torch.random.get_rng_state()
    ours(bundle, model, "autoguidance", 4.0, {"dropout": 0.3}, steps=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was
