"""True Noise Removal as a modifier (--tnr, request.tnr): n + S (e - n) on every eps of any method's pair
(docs/MATH.md 5); tnr-cfg is cfg --tnr and tnr is none --tnr, run for run."""

from __future__ import annotations

import pytest
import torch
from diffusers_reference import NEGATIVE, PROMPT, SEED, SIZE

from engine.guidance import GuidancePlan, cfg_pp, tnr_push
from engine.models import load_bundle
from engine.request import GenerationRequest
from engine.sampler import sample
from engine.units import GUIDANCE


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    return load_bundle(str(tiny_sdxl_dir))


def run(bundle, model, guidance, **kw):
    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=model,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        steps=kw.pop("steps", 6),
        guidance=guidance,
        preview_every=0,
        **kw,
    )
    return sample(bundle, request)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_tnr_cfg_is_cfg_with_tnr_run_for_run(bundle, tiny_sdxl_dir, solver):
    model = str(tiny_sdxl_dir)
    named = run(bundle, model, "tnr-cfg", scale=4.0, solver=solver)
    modifier = run(bundle, model, "cfg", scale=4.0, tnr=True, solver=solver)
    assert torch.equal(named.latent, modifier.latent)
    assert named.stats["tnr_factors"] == modifier.stats["tnr_factors"] is not None
    assert named.stats["model_evaluations"] == modifier.stats["model_evaluations"]
    plain = run(bundle, model, "cfg", scale=4.0, solver=solver)
    assert not torch.equal(plain.latent, modifier.latent) and plain.stats["tnr_factors"] is None


def test_tnr_is_none_with_tnr(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    assert torch.equal(run(bundle, model, "tnr").latent, run(bundle, model, "none", tnr=True).latent)


@pytest.mark.parametrize("name", [n for n in GUIDANCE.names() if n not in ("tnr", "tnr-cfg")])
def test_tnr_pushes_every_methods_pair(name):
    """At the plan level, with --tnr every method's (den, ren) becomes (n + S (den - n), n + S (ren - n))."""
    torch.manual_seed(0)
    request = GenerationRequest(prompt="a", negative_prompt="b", guidance=name)
    plain_plan = GuidancePlan.from_request(request)
    tnr_plan = GuidancePlan.from_request(request.replace(tnr=True))
    plain, pushed = plain_plan.for_step(5.0, 3.0, 3, 8), tnr_plan.for_step(5.0, 3.0, 3, 8)
    assert pushed.S == pytest.approx(2 - (1 / 10) ** 0.25) and plain.S is None
    assert pushed.rows == plain.rows
    rows = len(plain.normal_rows)
    predictions = torch.randn(rows, 4, 4, 4)
    n = torch.randn(1, 4, 4, 4)
    perturbed = torch.randn(1, 4, 4, 4) if plain.perturbed_rows else None
    den, ren = plain.pair(predictions, n, perturbed)
    den2, ren2 = pushed.pair(predictions, n, perturbed)
    torch.testing.assert_close(den2, tnr_push(den, n, pushed.S))
    torch.testing.assert_close(ren2, tnr_push(ren, n, pushed.S))


def test_cfg_pp_with_tnr_is_cfg_pp_on_the_pushed_predictions():
    """Why both of cfg++'s eps are pushed: TNR is an affine map e -> n + S (e - n) that fixes n, so it
    commutes with every affine combination whose weights sum to 1. Pushing den and ren is cfg++ run on the
    TNR-corrected predictions c' and u' (den' = u' + g (c' - u'), ren' = u'); pushing den alone would
    re-noise with an eps TNR never saw, and is not cfg++ of anything."""
    torch.manual_seed(1)
    u, c, n = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    request = GenerationRequest(prompt="a", negative_prompt="b", guidance="cfg++", scale=0.8, tnr=True)
    step = GuidancePlan.from_request(request).for_step(5.0, 3.0, 0, 8)
    S = step.S
    den, ren = step.pair(torch.cat([u, c]), n)
    on_pushed = cfg_pp(tnr_push(u, n, S), tnr_push(c, n, S), 0.8)
    torch.testing.assert_close(den, on_pushed[0])
    torch.testing.assert_close(ren, on_pushed[1])
    assert not torch.allclose(ren, u)  # the re-noising eps is pushed too


def test_cfg_pp_with_tnr_runs_and_differs(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    with_tnr = run(bundle, model, "cfg++", scale=0.8, tnr=True)
    without = run(bundle, model, "cfg++", scale=0.8)
    assert not torch.allclose(with_tnr.latent, without.latent, atol=1e-3)
    assert with_tnr.stats["model_evaluations"] == without.stats["model_evaluations"]


def test_apg_with_tnr_changes_the_image_and_not_the_cost(bundle, tiny_sdxl_dir):
    model = str(tiny_sdxl_dir)
    apg = run(bundle, model, "apg", scale=5.0)
    apg_tnr = run(bundle, model, "apg", scale=5.0, tnr=True)
    assert apg_tnr.stats["tnr_factors"] and apg.stats["tnr_factors"] is None
    assert not torch.allclose(apg.latent, apg_tnr.latent, atol=1e-3)
    assert apg.stats["model_evaluations"] == apg_tnr.stats["model_evaluations"]


def test_the_tnr_field_round_trips_and_is_checked():
    from engine.request import RequestError

    request = GenerationRequest(prompt="a", guidance="pag", tnr=True)
    assert GenerationRequest.from_json(request.to_json()) == request
    assert GenerationRequest.from_dict({"prompt": "a"}).tnr is False  # stored requests without it
    with pytest.raises(RequestError, match="tnr must be true or false"):
        GenerationRequest(prompt="a", tnr="yes")


def test_generate_tnr_flag_sets_the_field():
    import argparse

    from tnr_tui.cli.generate import add_parser, build_request

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["generate", "--prompt", "x", "--guidance", "apg", "--tnr", "--out", "a.png"])
    assert build_request(args).tnr is True
    args = parser.parse_args(["generate", "--prompt", "x", "--out", "a.png"])
    assert build_request(args).tnr is False
