"""GenerationRequest: validation messages (issue 2) and the JSON round trip."""

from __future__ import annotations

import math

import pytest

from engine import units
from engine.request import (
    MAX_SEED,
    GenerationRequest,
    RequestError,
    WeightedPrompt,
    parse_field,
    validate_field,
)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"solver": "dpm"}, f"unknown solver 'dpm'; choose one of: {', '.join(units.SOLVERS.names())}"),
        ({"guidance": "pagg"}, f"unknown guidance method 'pagg'; choose one of: {', '.join(units.GUIDANCE.names())}"),
        ({"steps": 0}, "steps must be a whole number in 1..10000, got 0"),
        ({"steps": -3}, "steps must be a whole number in 1..10000, got -3"),
        ({"steps": 2.5}, "steps must be a whole number in 1..10000, got 2.5"),
        ({"scale": math.nan}, "scale must be a finite number, got nan"),
        ({"scale": math.inf}, "scale must be a finite number, got inf"),
        ({"scale": "big"}, "scale must be a number, got 'big'"),
        ({"width": 500}, "width must be a positive multiple of 8, got 500"),
        ({"width": 0}, "width must be a positive multiple of 8, got 0"),
        ({"height": 2**63}, "height must be at most 16384, got 9223372036854775808"),
        ({"steps": 10**20}, "steps must be a whole number in 1..10000, got 100000000000000000000"),
        ({"decode_every": 10_001}, "decode every must be a whole number in 0..10000, got 10001"),
        ({"height": -64}, "height must be a positive multiple of 8, got -64"),
        ({"height": 64.0}, "height must be a positive multiple of 8, got 64.0"),
        ({"seed": -1}, f"seed must be a whole number in 0..{MAX_SEED}, got -1"),
        ({"seed": 2**63}, f"seed must be a whole number in 0..{MAX_SEED}, got {2**63}"),
        (
            {"schedule": "cosine"},
            "unknown schedule 'cosine'; choose one of: default, leading, trailing, linspace, karras, karras_diffusers, "
            "exponential, sgm_uniform, simple, ddim_uniform, beta, kl_optimal, ays, power",
        ),
        ({"schedule_rho": 0.0}, "schedule rho must be positive, got 0.0"),
        ({"tnr_power": -1.0}, "TNR exponent p must be positive, got -1.0"),
        ({"cfg_rescale": 1.5}, "CFG rescale must be between 0 and 1, got 1.5"),
        (
            {"guidance_sigma_min": 5.0, "guidance_sigma_max": 1.0},
            "guidance sigma window: min (5.0) is larger than max (1.0)",
        ),
        ({"prompts": (("only one", 1.0),)}, "prompts: the N-prompt form needs at least two prompts"),
        ({"preview_every": -1}, "preview every must be a whole number in 0..10000, got -1"),
    ],
)
def test_bad_input_gives_its_message(changes: dict, message: str) -> None:
    with pytest.raises(RequestError) as error:
        GenerationRequest(prompt="a cat", **changes)
    assert str(error.value) == message


def test_seed_bounds_are_inclusive() -> None:
    assert GenerationRequest(prompt="x", seed=0).seed == 0
    assert GenerationRequest(prompt="x", seed=MAX_SEED).seed == MAX_SEED


def test_json_round_trip_keeps_every_field() -> None:
    request = GenerationRequest(
        prompt="a red square",
        negative_prompt="blurry",
        prompts=(WeightedPrompt("", 0.0), WeightedPrompt("a red square", 3.5)),
        width=512,
        height=768,
        seed=MAX_SEED,
        steps=15,
        solver="rk4",
        schedule="power",
        schedule_rho=2.0,
        guidance="tnr-cfg",
        scale=4.5,
        tnr_power=0.3,
        cfg_rescale=0.7,
        guidance_sigma_min=0.1,
        guidance_sigma_max=10.0,
        preview_every=2,
        decode_every=5,
        tags={"sweep": "abc"},
    )
    again = GenerationRequest.from_json(request.to_json())
    assert again == request
    assert again.to_dict() == request.to_dict()
    assert GenerationRequest.from_json(GenerationRequest(prompt="x").to_json()) == GenerationRequest(prompt="x")


def test_prompts_from_json_lists_and_dicts() -> None:
    a = GenerationRequest.from_dict({"prompt": "x", "prompts": [["u", 0.0], {"text": "c", "scale": 2.0}]})
    assert a.prompts == (WeightedPrompt("u", 0.0), WeightedPrompt("c", 2.0))


def test_bad_json_says_what_is_wrong() -> None:
    with pytest.raises(RequestError, match="request is not valid JSON"):
        GenerationRequest.from_json("{nope")
    with pytest.raises(RequestError, match="unknown request field\\(s\\): colour, size"):
        GenerationRequest.from_dict({"prompt": "x", "size": 3, "colour": 1})
    with pytest.raises(RequestError, match="a request needs a prompt"):
        GenerationRequest.from_dict({})
    with pytest.raises(RequestError, match="request format 99 is not supported"):
        GenerationRequest.from_dict({"prompt": "x", "format": 99})
    with pytest.raises(RequestError, match="a request must be a JSON object, got list"):
        GenerationRequest.from_json("[1]")


def test_parse_field_for_text_inputs() -> None:
    assert parse_field("steps", " 12 ") == 12
    assert parse_field("scale", "") is None
    assert parse_field("schedule_rho", "") is None  # the schedule's own default
    assert parse_field("tnr_power", "0.5") == 0.5
    with pytest.raises(RequestError, match="steps must be a whole number, got 'ten'"):
        parse_field("steps", "ten")
    with pytest.raises(RequestError, match="width must be a positive multiple of 8, got 100"):
        parse_field("width", "100")
    with pytest.raises(RequestError, match="scale must be a finite number"):
        parse_field("scale", "inf")
    assert validate_field("solver", "heun") is None


def test_model_evaluations_are_the_planned_count() -> None:
    # The last step, to sigma 0, is first order: rk4 cfg = 2 * (4 * 9 + 1), heun tnr = 1 * (2 * 9 + 1).
    assert GenerationRequest(prompt="x", solver="rk4", guidance="cfg", steps=10).model_evaluations == 74
    assert GenerationRequest(prompt="x", solver="heun", guidance="tnr", steps=10).model_evaluations == 19
    three = (WeightedPrompt("a", 1.0), WeightedPrompt("b", 1.0), WeightedPrompt("c", 1.0))
    assert GenerationRequest(prompt="x", prompts=three, guidance="cfg", steps=4).model_evaluations == 12
    assert GenerationRequest(prompt="x", scale=None, guidance="cfg++").effective_scale == 0.8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": "x", "tags": 5}, "tags must map text to text, got 5"),
        ({"prompt": "x", "prompts": 5}, "prompts must be a list of (text, scale) pairs, got 5"),
        ({"prompt": "x", "prompts": "ab"}, "prompts must be a list of (text, scale) pairs, got 'ab'"),
    ],
)
def test_from_dict_refuses_odd_field_types_with_a_request_error(data, message) -> None:
    with pytest.raises(RequestError) as caught:
        GenerationRequest.from_dict(data)
    assert str(caught.value) == message
