"""A reference sampling loop built from diffusers' own parts, for parity tests of solvers and guidance methods.

It does what `StableDiffusionXLPipeline.__call__` does (encode with the pipeline, scale_model_input, one UNet
call per prediction, scheduler.step), but lets a test pick the combination of predictions (a diffusers
guider object, or a formula written in the test), inject the scheduler's noise, and start from a given latent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

PROMPT = "a red circle on a white background"
NEGATIVE = "blurry, low quality"
SIZE = 64
SEED = 1234


def load_pipe(model_dir: Any) -> Any:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(pipe: Any, prompt: str = PROMPT, negative: str | None = NEGATIVE, size: int = SIZE) -> dict[str, Any]:
    """Conditional and unconditional UNet inputs, as the pipeline makes them (negative None: zeros)."""
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompt, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative
    )
    time_ids = pipe._get_add_time_ids(
        (size, size),
        (0, 0),
        (size, size),
        dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    return {
        "cond": (embeds, {"text_embeds": pooled, "time_ids": time_ids}),
        "uncond": (negative_embeds, {"text_embeds": negative_pooled, "time_ids": time_ids}),
    }


def unet_eps(pipe: Any, inputs: tuple[Any, dict], latent_in: torch.Tensor, t: Any) -> torch.Tensor:
    embeds, added = inputs
    with torch.no_grad():
        return pipe.unet(latent_in, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]


def reference_latent(
    pipe: Any,
    scheduler: Any,
    steps: int,
    combine: Callable[[int, Any, dict[str, torch.Tensor]], torch.Tensor],
    *,
    latents: torch.Tensor | None = None,
    kinds: Callable[[int], tuple[str, ...]] = lambda i: ("uncond", "cond"),
    step_kwargs: Callable[[int], dict[str, Any]] = lambda i: {},
    encoded: dict[str, Any] | None = None,
    seed: int = SEED,
) -> torch.Tensor:
    """The final latent (VP, as `output_type="latent"`): `combine(i, t, predictions)` makes the guided eps."""
    scheduler.set_timesteps(steps)
    encoded = encoded or encode(pipe)
    if latents is None:
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=generator, dtype=torch.float32)
    x = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        latent_in = scheduler.scale_model_input(x, t)
        predictions = {kind: unet_eps(pipe, encoded[kind], latent_in, t) for kind in kinds(i)}
        x = scheduler.step(combine(i, t, predictions), t, x, **step_kwargs(i), return_dict=False)[0]
    return x


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()
