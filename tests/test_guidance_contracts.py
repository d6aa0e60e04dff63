"""What every registered guidance method (current and future) must do, parametrised over engine.units.GUIDANCE:
its counted evaluations equal the planned count (a fake closed-form bundle with a fake perturbed pass), its
request round-trips through JSON with non-default parameters, it appears in `tnr-lab generate --help` and
`tnr-lab units`, and an out-of-range parameter is a RequestError naming it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from engine.guidance.base import FloatsParam, LayerParam
from engine.preview import SDXL_LATENT_RGB_BIAS, SDXL_LATENT_RGB_FACTORS, latent_to_rgb
from engine.request import GenerationRequest, RequestError
from engine.sampler import sample
from engine.schedule import Schedule
from engine.units import GUIDANCE, Param

SDXL = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
METHODS = GUIDANCE.names()


@dataclass
class FakeConditioning:
    means: torch.Tensor

    @property
    def batch(self) -> int:
        return len(self.means)

    def select(self, idx):
        return FakeConditioning(self.means[idx])

    def repeat(self, n):
        return FakeConditioning(self.means.repeat_interleave(n))


class FakeBundle:
    """Closed-form eps of Gaussian data per text (as tests/test_sampler.py) and a perturbed pass that shifts
    the data mean; every call is counted by rows."""

    def __init__(self, prediction_type: str = "epsilon") -> None:
        self.schedule = Schedule.from_config(SDXL)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.latent_channels = 4
        self.vae_scale_factor = 8
        self.default_size = (32, 32)
        self.force_zeros_for_empty_prompt = True
        self.prediction_type = prediction_type
        self.latent_rgb = (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS)
        self.rows = 0
        self.perturbations = []

    def encode(self, texts, height, width, zero_if_empty=None):
        zero = zero_if_empty or [False] * len(texts)
        means = [0.0 if z else (sum(map(ord, t)) % 7 - 3) / 3 for t, z in zip(texts, zero, strict=True)]
        return FakeConditioning(torch.tensor(means))

    @staticmethod
    def dropped_text(texts):
        return ["" for _ in texts]

    def eps(self, x, sigma, t, cond):
        assert x.shape[0] == cond.batch
        self.rows += x.shape[0]
        mu = cond.means.view(-1, 1, 1, 1)
        return sigma * (x - mu) / (sigma**2 + 0.25)

    def eps_perturbed(self, x, sigma, t, cond, perturbation):
        self.perturbations.append(perturbation)
        self.rows += x.shape[0]
        mu = cond.means.view(-1, 1, 1, 1) + 0.5
        return sigma * (x - mu) / (sigma**2 + 0.3)

    def decode(self, latent):
        return F.interpolate(torch.tanh(latent[:, :3]), scale_factor=8)

    def preview(self, denoised):
        return latent_to_rgb(denoised, *self.latent_rgb)


def every_step_params(name: str) -> dict:
    """Parameters that make a method's optional passes run (PAG's window from step 0, ...)."""
    unit = GUIDANCE.get(name)
    names = {p.name for p in unit.params}
    params = {}
    for prefix in ("perturbed_guidance", "seg_guidance", "skip_layer_guidance"):
        if f"{prefix}_start" in names:
            params[f"{prefix}_start"] = -1.0 if prefix == "perturbed_guidance" else 0.0
            params[f"{prefix}_stop"] = 1.0
    if "cond2" in names:
        params["cond2"] = "a second prompt"
    return params


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("window", [None, (1.0, 6.0)])
def test_counted_evaluations_equal_the_plan(name, solver, window):
    unit = GUIDANCE.get(name)
    params = every_step_params(name)
    if "start" in {p.name for p in unit.params} and window is not None:
        params.update(start=0.2, stop=0.8)  # the guider's window too
    for prediction_type in ("epsilon", "v_prediction"):
        bundle = FakeBundle(prediction_type)
        request = GenerationRequest(
            prompt="a red square",
            negative_prompt="blurry",
            steps=10,
            solver=solver,
            guidance=name,
            guidance_params=params,
            guidance_sigma_min=None if window is None else window[0],
            guidance_sigma_max=None if window is None else window[1],
            preview_every=0,
        )
        result = sample(bundle, request)
        assert torch.isfinite(result.latent).all()
        assert result.stats["model_evaluations"] == result.stats["planned_evaluations"] == bundle.rows
        if "perturbed" in unit.kinds:
            assert bundle.perturbations, f"{name} never ran its perturbed pass"
            assert all(p.layers for p in bundle.perturbations)


def nondefault(param: Param):
    """A valid value other than the default."""
    if isinstance(param, LayerParam):
        return "mid, up_blocks.0"
    if isinstance(param, FloatsParam):
        return [3.0, 2.0] if param.name == "guidance_scales" else 0.5 if param.single else [0.5, 0.5]
    if param.kind == "bool":
        return not param.default
    if param.kind == "choice":
        return next(c for c in param.choices if c != param.default)
    if param.kind == "text":
        return "another text"
    base = 0.0 if param.default is None else param.default
    for candidate in (base + 1, base - 1, base / 2, base + 0.25, 0.5):
        value = int(candidate) if param.kind == "int" else float(candidate)
        if value != param.default and param.check(value) is None:
            return value
    raise AssertionError(f"no non-default value for {param.name}")


@pytest.mark.parametrize("name", METHODS)
def test_request_round_trips_with_non_default_params(name):
    unit = GUIDANCE.get(name)
    for param in unit.params:
        params = {param.name: nondefault(param)}
        if param.name in ("start", "perturbed_guidance_start", "seg_guidance_start", "skip_layer_guidance_start"):
            params[param.name.replace("start", "stop")] = 1.0  # keep start <= stop
        if param.name.endswith("stop"):
            params[param.name] = min(1.0, params[param.name])
            params[param.name.replace("stop", "start")] = 0.0
        request = GenerationRequest(prompt="p", negative_prompt="n", guidance=name, guidance_params=params, tnr=True)
        again = GenerationRequest.from_json(request.to_json())
        assert again == request and again.guidance_params == params
        assert again.to_dict()["guidance_params"] == params


@pytest.mark.parametrize("name", METHODS)
def test_out_of_range_parameters_are_request_errors_naming_them(name):
    unit = GUIDANCE.get(name)
    for param in unit.params:
        bad = []
        if param.minimum is not None:
            bad.append(param.minimum - 1)
        if param.maximum is not None:
            bad.append(param.maximum + 1)
        if param.kind in ("choice", "bool"):
            bad.append(12.5)
        if not isinstance(param, (FloatsParam, LayerParam)) and param.kind in ("float", "int"):
            bad.append("not a number")
        if isinstance(param, LayerParam):
            bad.append("up_blocks.(")
        if isinstance(param, FloatsParam):
            bad.append("ten")
        for value in bad:
            with pytest.raises(RequestError, match=param.name):
                GenerationRequest(prompt="p", guidance=name, guidance_params={param.name: value})
    with pytest.raises(RequestError, match="has no parameter no_such_knob"):
        GenerationRequest(prompt="p", guidance=name, guidance_params={"no_such_knob": 1})


def test_every_method_is_in_generate_help_and_units(capsys, monkeypatch):
    from tnr_tui.cli import main

    monkeypatch.setenv("COLUMNS", "4000")  # argparse wraps help at hyphens ("cfg-zero-" / "star")

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert main(["units"]) == 0
    listing = "\n" + capsys.readouterr().out
    for name in METHODS:
        assert name in help_text
        assert f"\n{name}: " in listing
        for param in GUIDANCE.get(name).params:
            assert f"    {param.name}=" in listing


@pytest.mark.parametrize("name", METHODS)
def test_declarations_are_complete(name):
    unit = GUIDANCE.get(name)
    assert unit.summary and set(unit.kinds) <= {"uncond", "cond", "perturbed", "empty", "cond2"}
    assert "cond" in unit.kinds
    names = [p.name for p in unit.params]
    assert len(names) == len(set(names))
    for param in unit.params:
        assert param.check(param.default) is None, param.name
        assert param.help, f"{name}: {param.name} has no help"
