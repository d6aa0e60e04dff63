"""A closed-form fake model bundle for solver tests (the idea of tests/test_sampler.py's GaussianBundle).

The data of prompt r is N(mu_r, S_D^2) and eps is its exact posterior mean, eps(x, sigma) = sigma (x - mu) /
(sigma^2 + S_D^2), so runs are fast, deterministic and every number is known. It records each call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.preview import SDXL_LATENT_RGB_BIAS, SDXL_LATENT_RGB_FACTORS, latent_to_rgb
from engine.request import GenerationRequest
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
S_D = 0.5


@dataclass
class FakeConditioning:
    means: torch.Tensor

    @property
    def batch(self) -> int:
        return len(self.means)

    def select(self, idx: list[int]) -> FakeConditioning:
        return FakeConditioning(self.means[idx])

    def repeat(self, n: int) -> FakeConditioning:
        return FakeConditioning(self.means.repeat_interleave(n))


class GaussianBundle:
    def __init__(self, config: dict | None = None) -> None:
        self.schedule = Schedule.from_config(config or SDXL)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.latent_channels = 4
        self.vae_scale_factor = 8
        self.default_size = (32, 32)
        self.force_zeros_for_empty_prompt = True
        self.latent_rgb = (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS)
        self.calls: list[tuple[float, float, int]] = []  # (sigma, timestep, batch) of each call

    @staticmethod
    def text_mean(text: str) -> float:
        return 0.0 if text == "" else (sum(map(ord, text)) % 7 - 3) / 3

    def encode(self, texts, height, width, zero_if_empty=None):  # noqa: ANN001, ANN201
        zero = zero_if_empty or [False] * len(texts)
        return FakeConditioning(
            torch.tensor([0.0 if z else self.text_mean(t) for t, z in zip(texts, zero, strict=True)])
        )

    @staticmethod
    def dropped_text(texts: list[str]) -> list[str]:
        return ["" for _ in texts]

    def eps(self, x: torch.Tensor, sigma: float, t: float, cond: FakeConditioning) -> torch.Tensor:
        self.calls.append((sigma, t, x.shape[0]))
        mu = cond.means.view(-1, 1, 1, 1).to(x.dtype)
        return sigma * (x - mu) / (sigma**2 + S_D**2)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return F.interpolate(torch.tanh(latent[:, :3]), scale_factor=8)

    def preview(self, denoised: torch.Tensor):  # noqa: ANN201
        return latent_to_rgb(denoised, *self.latent_rgb)


def request(**kw) -> GenerationRequest:  # noqa: ANN003
    return GenerationRequest(**{"prompt": "a red square", "negative_prompt": "blurry", "steps": 8, **kw})
