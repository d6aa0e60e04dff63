"""perp-neg and dual-cfg (ComfyUI's PerpNegGuider and DualCFGGuider, no diffusers twin) against their papers'
formulas written here independently, driving diffusers' own parts (tiny fixture, Euler, 1e-4)."""

from __future__ import annotations

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE, encode, load_pipe, reference_latent, relative_error

from engine.models import load_bundle
from engine.request import GenerationRequest, RequestError
from engine.sampler import sample

STEPS = 8
MIDDLE = "a blue square on a green field"


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_pipe(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


@pytest.fixture(scope="module")
def encoded(pipe):
    both = encode(pipe)
    # The empty prompt as the lab conditions it on SDXL: zeros (what diffusers gives a negative left unset).
    empty = encode(pipe, negative=None)["uncond"]
    middle = encode(pipe, prompt=MIDDLE)["cond"]
    return {**both, "empty": empty, "middle": middle}


def ours(bundle, model, guidance, scale, params):
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
        guidance_params=params,
        preview_every=0,
    )
    return sample(bundle, request)


def euler(pipe, encoded, kinds, combine):
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return reference_latent(pipe, scheduler, STEPS, lambda i, t, p: combine(p), kinds=lambda i: kinds, encoded=encoded)


# ---- perp-neg: eps = e + w (c - e) - w_neg perp(u - e | c - e)  (Armandpour et al. 2023, eq. 6-7) ----------


def paper_perp_neg(c, u, e, w, neg_scale):
    # the component of the negative's direction u - e that is orthogonal to the prompt's direction c - e
    a, b = (c - e).double(), (u - e).double()
    along = (a * b).sum() / (a * a).sum()
    orthogonal = b - along * a
    return (e.double() + w * a - (w * neg_scale) * orthogonal).float()


@pytest.mark.parametrize("scale, neg_scale", [(8.0, 1.0), (5.0, 2.5), (5.0, 0.0)])
def test_perp_neg_equals_the_paper(pipe, bundle, tiny_sdxl_dir, encoded, scale, neg_scale):
    reference = euler(
        pipe,
        encoded,
        ("uncond", "cond", "empty"),
        lambda p: paper_perp_neg(p["cond"], p["uncond"], p["empty"], scale, neg_scale),
    )
    result = ours(bundle, str(tiny_sdxl_dir), "perp-neg", scale, {"neg_scale": neg_scale})
    assert reference.abs().max() > 1.0
    assert relative_error(result.latent, reference) <= 1e-4
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"] == 3 * STEPS


def test_perp_neg_at_neg_scale_0_is_cfg_from_the_empty_prompt_and_differs_from_cfg(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    perp = ours(bundle, model, "perp-neg", 5.0, {"neg_scale": 1.0})
    cfg = ours(bundle, model, "cfg", 5.0, {})
    assert relative_error(perp.latent, cfg.latent) > 1e-3


def test_perp_neg_removes_only_the_orthogonal_part():
    from engine.guidance.perp_neg import perp_neg

    e = torch.zeros(1, 2, 1, 1)
    c = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    u_parallel = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)  # a negative along the prompt: ignored
    u_orthogonal = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(perp_neg(c, u_parallel, e, 4.0, 1.0), 4.0 * c)
    torch.testing.assert_close(perp_neg(c, u_orthogonal, e, 4.0, 0.5), 4.0 * (c - 0.5 * u_orthogonal))


# ---- dual-cfg: ComfyUI's DualCFGGuider ------------------------------------------------------------------


def paper_dual(c, m, u, g, g1, nested):
    if nested:  # CFG of the prompt against the middle, then CFG of that against the negative
        inner = m + g1 * (c - m)
        return u + g * (inner - u)
    return u + g * (m - u) + g1 * (c - m)


@pytest.mark.parametrize(
    "scale, g1, style, evaluations",
    [(6.0, 3.0, "regular", 24), (4.0, 2.0, "nested", 24), (1.0, 3.0, "regular", 16), (1.0, 1.0, "regular", 8)],
)
def test_dual_cfg_equals_the_formula(pipe, bundle, tiny_sdxl_dir, encoded, scale, g1, style, evaluations):
    ref = dict(encoded, cond2=encoded["middle"])
    reference = euler(
        pipe,
        ref,
        ("uncond", "cond2", "cond"),
        lambda p: paper_dual(p["cond"], p["cond2"], p["uncond"], scale, g1, style == "nested"),
    )
    params = {"cond2": MIDDLE, "cfg_conds": g1, "style": style}
    result = ours(bundle, str(tiny_sdxl_dir), "dual-cfg", scale, params)
    assert relative_error(result.latent, reference) <= 1e-4
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"] == evaluations


def test_dual_cfg_with_the_prompt_as_second_prompt_is_cfg(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    dual = ours(bundle, model, "dual-cfg", 5.0, {"cond2": PROMPT, "cfg_conds": 3.0})
    cfg = ours(bundle, model, "cfg", 5.0, {})
    assert relative_error(dual.latent, cfg.latent) <= 1e-5


def test_comfy_parameters_are_validated():
    with pytest.raises(RequestError, match="neg_scale must be at least 0"):
        GenerationRequest(prompt="x", guidance="perp-neg", guidance_params={"neg_scale": -1})
    with pytest.raises(RequestError, match="style must be one of regular, nested"):
        GenerationRequest(prompt="x", guidance="dual-cfg", guidance_params={"style": "sideways"})
