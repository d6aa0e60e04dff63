"""The sampling loop on a fake bundle whose eps is exact for Gaussian data, so every number is known."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from engine.preview import SDXL_LATENT_RGB_BIAS, SDXL_LATENT_RGB_FACTORS, latent_to_rgb
from engine.request import GenerationRequest, RequestError, WeightedPrompt
from engine.sampler import SamplingCancelled, SamplingError, StepEvent, make_true_noise, sample
from engine.schedule import Schedule

SDXL = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
S_D = 0.5  # data std of the fake model


@dataclass
class FakeConditioning:
    means: torch.Tensor  # one data mean per row

    @property
    def batch(self) -> int:
        return len(self.means)

    def select(self, idx: list[int]) -> FakeConditioning:
        return FakeConditioning(self.means[idx])


class GaussianBundle:
    """A ModelBundle stand-in: the data of prompt r is N(mu_r, S_D^2), eps is its exact posterior mean.

    eps(x, sigma) = sigma (x - mu) / (sigma^2 + S_D^2), so the probability-flow ODE has the closed form
    x(sigma) = mu + (x_T - mu) sqrt(sigma^2 + S_D^2) / sqrt(sigma_T^2 + S_D^2).
    """

    def __init__(self, config: dict | None = None, nan_at_call: int | None = None) -> None:
        self.schedule = Schedule.from_config(config or SDXL)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.latent_channels = 4
        self.vae_scale_factor = 8
        self.default_size = (32, 48)  # (height, width)
        self.force_zeros_for_empty_prompt = True
        self.latent_rgb = (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS)
        self.nan_at_call = nan_at_call
        self.calls: list[tuple[torch.Tensor, float, float, torch.Tensor]] = []
        self.encoded: list[tuple[list[str], list[bool] | None]] = []
        self.decodes = 0

    @staticmethod
    def text_mean(text: str) -> float:
        return 0.0 if text == "" else (sum(map(ord, text)) % 7 - 3) / 3

    def encode(self, texts: list[str], height: int, width: int, zero_if_empty: list[bool] | None = None):
        self.encoded.append((list(texts), zero_if_empty))
        zero = zero_if_empty or [False] * len(texts)
        return FakeConditioning(
            torch.tensor([0.0 if z else self.text_mean(t) for t, z in zip(texts, zero, strict=True)])
        )

    @staticmethod
    def dropped_text(texts: list[str]) -> list[str]:
        return ["" for _ in texts]

    def eps(self, x: torch.Tensor, sigma: float, t: float, cond: FakeConditioning) -> torch.Tensor:
        assert x.shape[0] == cond.batch and x.dtype == torch.float32
        self.calls.append((x.clone(), sigma, t, cond.means.clone()))
        if self.nan_at_call is not None and len(self.calls) == self.nan_at_call:
            return torch.full_like(x, float("nan"))
        mu = cond.means.view(-1, 1, 1, 1)
        return sigma * (x - mu) / (sigma**2 + S_D**2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        self.decodes += 1
        return F.interpolate(torch.tanh(latent[:, :3]), scale_factor=8)

    def preview(self, denoised: torch.Tensor):
        return latent_to_rgb(denoised, *self.latent_rgb)


def request(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red square", "negative_prompt": "blurry", "steps": 8, **kw})


def test_true_noise_and_initial_latent_follow_the_seed() -> None:
    bundle = GaussianBundle()
    result = sample(bundle, request(seed=1234, guidance="none"))
    expected = torch.randn((1, 4, 4, 6), generator=torch.Generator("cpu").manual_seed(1234), dtype=torch.float32)
    assert torch.equal(result.true_noise, expected)
    assert torch.equal(make_true_noise(1234, (1, 4, 4, 6)), expected)
    # x_T = n * init_noise_sigma; leading spacing: sqrt(max sigma^2 + 1).
    sigma_max = result.stats["sigmas"][0]
    assert result.stats["init_noise_sigma"] == pytest.approx(math.sqrt(sigma_max**2 + 1))
    torch.testing.assert_close(bundle.calls[0][0], expected * result.stats["init_noise_sigma"])


def test_same_seed_same_latent_other_seed_other_latent() -> None:
    a = sample(GaussianBundle(), request(seed=7, solver="heun"))
    b = sample(GaussianBundle(), request(seed=7, solver="heun"))
    c = sample(GaussianBundle(), request(seed=8, solver="heun"))
    assert torch.equal(a.latent, b.latent) and a.image.tobytes() == b.image.tobytes()
    assert not torch.allclose(a.latent, c.latent)


def test_rk4_reaches_the_closed_form_solution() -> None:
    bundle = GaussianBundle()
    result = sample(bundle, request(guidance="none", solver="rk4", steps=30, schedule="karras_diffusers"))
    mu = bundle.text_mean("a red square")
    sigma_T = result.stats["sigmas"][0]
    x_T = result.true_noise * result.stats["init_noise_sigma"]
    sigma_min = result.stats["sigmas"][-2]
    exact_at_sigma_min = mu + (x_T - mu) * math.sqrt(sigma_min**2 + S_D**2) / math.sqrt(sigma_T**2 + S_D**2)
    # ... and the last step, from sigma_min to 0, is one Euler step: x - sigma_min * eps.
    expected = exact_at_sigma_min - sigma_min * sigma_min * (exact_at_sigma_min - mu) / (sigma_min**2 + S_D**2)
    assert float((result.latent - expected).abs().max()) < 2e-5
    # Without the Euler tail it would be mu + (x_T - mu) S_D / sqrt(sigma_T^2 + S_D^2): the tail costs ~3e-3.
    assert float((result.latent - (mu + (x_T - mu) * S_D / math.sqrt(sigma_T**2 + S_D**2))).abs().max()) > 1e-3
    assert result.latent.dtype == torch.float32 and result.latent.device.type == "cpu"


def test_euler_cfg_run_equals_a_hand_written_loop() -> None:
    bundle = GaussianBundle()
    result = sample(bundle, request(guidance="cfg", scale=4.0, seed=5))
    schedule = bundle.schedule
    sigmas = schedule.grid(8).tolist()
    u_mu, c_mu = bundle.text_mean("blurry"), bundle.text_mean("a red square")
    x = make_true_noise(5, (1, 4, 4, 6)).double() * result.stats["init_noise_sigma"]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        u = sigma * (x - u_mu) / (sigma**2 + S_D**2)
        c = sigma * (x - c_mu) / (sigma**2 + S_D**2)
        x = x + (sigma_next - sigma) * (u + 4.0 * (c - u))
    torch.testing.assert_close(result.latent.double(), x, rtol=1e-5, atol=1e-5)
    # Every call is one batch of [negative, prompt] at the grid's integer timesteps.
    assert [t for _, _, t, _ in bundle.calls] == schedule.grid_timesteps(8).tolist()
    assert all(m.tolist() == [u_mu, c_mu] for _, _, _, m in bundle.calls)


def test_euler_cfg_pp_run_is_the_published_rule() -> None:
    bundle = GaussianBundle()
    g = 0.7
    result = sample(bundle, request(guidance="cfg++", scale=g, seed=2, schedule="trailing"))
    sigmas = bundle.schedule.grid(8, "trailing").tolist()
    u_mu, c_mu = bundle.text_mean("blurry"), bundle.text_mean("a red square")
    x = make_true_noise(2, (1, 4, 4, 6)).double() * sigmas[0]  # trailing: init_noise_sigma = max sigma
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        u = sigma * (x - u_mu) / (sigma**2 + S_D**2)
        c = sigma * (x - c_mu) / (sigma**2 + S_D**2)
        x0_guided = x - sigma * (u + g * (c - u))
        x = x0_guided + sigma_next * u
    torch.testing.assert_close(result.latent.double(), x, rtol=1e-5, atol=1e-5)


def test_heun_second_stage_uses_sigma_next_and_its_grid_timestep() -> None:
    bundle = GaussianBundle(dict(SDXL, timestep_spacing="linspace"))
    sample(bundle, request(solver="heun", guidance="none", steps=4))
    t = bundle.schedule.grid_timesteps(4).tolist()
    sigmas = bundle.schedule.grid(4).tolist()
    # As HeunDiscreteScheduler: t0, t1, t1, t2, t2, t3, t3 (the last step to 0 is Euler).
    assert [call[2] for call in bundle.calls] == [t[0], t[1], t[1], t[2], t[2], t[3], t[3]]
    assert [call[1] for call in bundle.calls] == [
        sigmas[0],
        sigmas[1],
        sigmas[1],
        sigmas[2],
        sigmas[2],
        sigmas[3],
        sigmas[3],
    ]


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4"])
@pytest.mark.parametrize("method", ["none", "cfg", "cfg++", "tnr", "tnr-cfg"])
def test_model_evaluations_are_counted_exactly(solver: str, method: str) -> None:
    bundle = GaussianBundle()
    steps = 5
    result = sample(bundle, request(solver=solver, guidance=method, steps=steps))
    stages = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}[solver]
    predictions = 2 if method in ("cfg", "cfg++", "tnr-cfg") else 1
    expected = ((steps - 1) * stages + 1) * predictions  # the last step (to sigma 0) is Euler
    assert result.stats["model_evaluations"] == expected
    assert sum(call[0].shape[0] for call in bundle.calls) == expected
    assert len(bundle.calls) == (steps - 1) * stages + 1  # one batched call per stage
    assert result.stats["model_evaluations"] <= request(solver=solver, guidance=method, steps=steps).model_evaluations


def test_sigma_window_skips_the_unconditional_evaluation() -> None:
    bundle = GaussianBundle()
    sigmas = bundle.schedule.grid(8).tolist()
    # Guidance only on the first three steps.
    result = sample(bundle, request(guidance="cfg", guidance_sigma_min=sigmas[2]))
    assert result.stats["model_evaluations"] == 3 * 2 + 5 * 1
    assert [len(m) for _, _, _, m in bundle.calls] == [2, 2, 2, 1, 1, 1, 1, 1]


def test_n_prompt_form_batches_all_prompts_in_one_call() -> None:
    bundle = GaussianBundle()
    prompts = (WeightedPrompt("", 0.0), WeightedPrompt("a red square", 2.0), WeightedPrompt("a circle", 1.0))
    result = sample(bundle, request(prompts=prompts, guidance="tnr-cfg", steps=3))
    assert bundle.encoded == [(["", "a red square", "a circle"], [True, False, False])]
    assert [len(m) for _, _, _, m in bundle.calls] == [3, 3, 3]
    assert result.stats["model_evaluations"] == 9
    assert result.stats["equivalent_cfg_scale"] is None and len(result.stats["tnr_factors"]) == 3


def test_empty_negative_prompt_asks_for_zero_conditioning() -> None:
    bundle = GaussianBundle()
    sample(bundle, request(negative_prompt="", steps=2))
    assert bundle.encoded == [(["", "a red square"], [True, False])]
    bundle = GaussianBundle()
    bundle.force_zeros_for_empty_prompt = False
    sample(bundle, request(negative_prompt="", steps=2))
    assert bundle.encoded == [(["", "a red square"], [False, False])]


def test_cancel_raises_before_the_next_evaluation() -> None:
    bundle = GaussianBundle()
    stop_after = 5

    def should_stop() -> bool:
        return len(bundle.calls) >= stop_after

    with pytest.raises(SamplingCancelled):
        sample(bundle, request(solver="rk4", steps=10), should_stop=should_stop)
    assert len(bundle.calls) == stop_after


def test_cancel_before_anything_runs_evaluates_nothing() -> None:
    bundle = GaussianBundle()
    with pytest.raises(SamplingCancelled):
        sample(bundle, request(), should_stop=lambda: True)
    assert bundle.calls == [] and bundle.encoded == []


def test_non_finite_latent_names_the_step() -> None:
    bundle = GaussianBundle(nan_at_call=5)  # heun: calls 1-2 are step 1, 3-4 step 2, 5-6 step 3
    with pytest.raises(SamplingError, match=r"non-finite latent at step 3 of 8"):
        sample(bundle, request(solver="heun"))


def test_running_out_of_memory_is_a_sampling_error_that_says_so(monkeypatch) -> None:
    bundle = GaussianBundle()

    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 1600 GB")

    monkeypatch.setattr(bundle, "eps", refuse)
    with pytest.raises(SamplingError, match=r"^out of memory on cpu at 16x16: try a smaller size"):
        sample(bundle, request(width=16, height=16))
    with pytest.raises(SamplingError, match=r"can't allocate memory: 1600 GB\)$"):  # the allocator's detail kept
        sample(bundle, request(width=16, height=16))
    monkeypatch.setattr(bundle, "eps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through unchanged
        sample(bundle, request())

    def callback(event):
        raise RuntimeError("CUDA out of memory in the caller's own code")

    with pytest.raises(RuntimeError, match="the caller's own code") as caught:  # not relabelled as sampling's
        sample(GaussianBundle(), request(), on_step=callback)
    assert not isinstance(caught.value, SamplingError)


def test_events_previews_and_decodes() -> None:
    bundle = GaussianBundle()
    events: list[StepEvent] = []
    result = sample(bundle, request(guidance="tnr", steps=7, preview_every=3, decode_every=4), on_step=events.append)
    assert [e.index for e in events] == list(range(7)) and all(e.steps == 7 for e in events)
    assert [e.preview is not None for e in events] == [False, False, True, False, False, True, True]
    assert [e.image is not None for e in events] == [False, False, False, True, False, False, True]
    assert bundle.decodes == 2  # step 4 and the final image, decoded once and shared with the last event
    assert events[-1].image is result.image
    assert [e.evaluations for e in events] == list(range(1, 8))
    assert [e.sigma for e in events] == result.stats["sigmas"][:-1]
    assert [e.tnr_factor for e in events] == result.stats["tnr_factors"]
    assert events[-1].tnr_factor == 1.0 and all(e.elapsed >= 0 for e in events)
    assert events[2].preview.size == (6, 4)  # one pixel per latent pixel
    # The last step ends at sigma 0 with Euler, so its denoised estimate is the final latent.
    torch.testing.assert_close(events[-1].denoised, result.latent)
    assert events[0].denoised.device.type == "cpu" and events[0].denoised.dtype == torch.float32


def test_denoised_is_x_minus_sigma_den() -> None:
    bundle = GaussianBundle()
    events: list[StepEvent] = []
    sample(bundle, request(guidance="none", steps=3), on_step=events.append)
    x, sigma, _, means = bundle.calls[1]
    eps = sigma * (x - means.view(-1, 1, 1, 1)) / (sigma**2 + S_D**2)
    torch.testing.assert_close(events[1].denoised, x - sigma * eps)


def test_result_image_size_and_stats() -> None:
    bundle = GaussianBundle()
    result = sample(bundle, request(steps=3))
    assert result.image.size == (48, 32) and result.image.mode == "RGB"  # default_size is (height, width)
    assert result.request.width == 48 and result.request.height == 32
    stats = result.stats
    for key in (
        "seconds",
        "seconds_per_step",
        "model_evaluations",
        "steps",
        "device",
        "dtype",
        "sigmas",
        "tnr_factors",
    ):
        assert key in stats
    assert stats["request"]["width"] == 48 and stats["device"] == "cpu" and stats["dtype"] == "float32"
    assert stats["equivalent_cfg_scale"] == 5.0 and stats["tnr_factors"] is None and len(stats["sigmas"]) == 4


def test_size_must_fit_the_model_factor() -> None:
    bundle = GaussianBundle()
    bundle.vae_scale_factor = 16
    with pytest.raises(RequestError, match="width must be a multiple of 16 for this model, got 40"):
        sample(bundle, request(width=40, height=32))


def test_a_request_without_a_scale_takes_the_models_default_scale() -> None:
    bundle = GaussianBundle()
    bundle.default_scales = {"cfg": 2.0}
    model_default = sample(bundle, request(guidance="cfg"))
    assert model_default.request.scale == 2.0 and model_default.stats["request"]["scale"] == 2.0
    explicit = sample(GaussianBundle(), request(guidance="cfg", scale=2.0))
    assert torch.equal(model_default.latent, explicit.latent)
    assert sample(bundle, request(guidance="cfg", scale=4.0)).request.scale == 4.0  # a given scale wins
    assert sample(bundle, request(guidance="cfg++")).request.scale is None  # not listed: DEFAULT_SCALE
    assert sample(GaussianBundle(), request(guidance="cfg")).request.scale is None  # no defaults at all
