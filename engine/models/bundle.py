"""ModelBundle: one loaded SDXL-topology model behind the small interface the sampler needs (CONTRACTS.md).

encode(texts, height, width) -> Conditioning       (SDXL's conditioning, exactly as diffusers builds it)
eps(x, sigma, t, cond)       -> eps, float32        (MATH.md 2: the UNet sees x / sqrt(sigma**2 + 1))
decode(latent)               -> image in [-1, 1]    (engine.decoder, float32)
preview(denoised)            -> PIL.Image           (latent-to-RGB factors, MATH.md 6)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL import Image

    from engine.decoder import SDXLDecoder
    from engine.schedule import Schedule


class ModelError(Exception):
    """A model cannot be loaded or used; the message names the path and the problem, for the user as is."""


@dataclass
class Conditioning:
    """SDXL conditioning, one row per text, on the model's device in the UNet dtype.

    `prompt_embeds` [N, 77, D1 + D2]: penultimate hidden states of both text encoders, concatenated;
    `text_embeds` [N, P]: the pooled projection of text encoder 2; `time_ids` [N, 6]: original size,
    crop top-left (0, 0), target size.
    """

    prompt_embeds: torch.Tensor
    text_embeds: torch.Tensor
    time_ids: torch.Tensor
    texts: list[str] = field(default_factory=list)
    # Per-model work that depends only on this conditioning (engine.models.speedups): treat the tensors above
    # as immutable once the object has been used.
    unet_cache: dict[int, dict] = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def repeat(self, n: int) -> Conditioning:
        """Each row repeated `n` times in place (rows a, b -> a, a, b, b), like num_images_per_prompt."""
        return Conditioning(
            self.prompt_embeds.repeat_interleave(n, dim=0),
            self.text_embeds.repeat_interleave(n, dim=0),
            self.time_ids.repeat_interleave(n, dim=0),
            [t for t in self.texts for _ in range(n)],
        )

    def select(self, idx: list[int] | torch.Tensor) -> Conditioning:
        index = torch.as_tensor(idx, dtype=torch.long, device=self.prompt_embeds.device)
        texts = [self.texts[i] for i in index.tolist()] if self.texts else []
        return Conditioning(self.prompt_embeds[index], self.text_embeds[index], self.time_ids[index], texts)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        return Conditioning(
            torch.cat([p.prompt_embeds for p in parts]),
            torch.cat([p.text_embeds for p in parts]),
            torch.cat([p.time_ids for p in parts]),
            [t for p in parts for t in p.texts],
        )


# A token per bundle, never reused (unlike id()), to key the per-model caches a Conditioning holds.
_BUNDLE_TOKENS = itertools.count()


class ModelBundle:
    """A loaded model. Build it with `engine.models.load_bundle`, not directly."""

    def __init__(
        self,
        *,
        ref: str,
        path: Path,
        name: str,
        identity: str,
        device: torch.device,
        dtype: torch.dtype,
        unet: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        decoder: SDXLDecoder,
        scheduler_config: dict[str, Any],
        force_zeros_for_empty_prompt: bool = True,
        latent_rgb: tuple[torch.Tensor, torch.Tensor] | None = None,
        default_scales: dict[str, float] | None = None,
    ) -> None:
        self.ref = ref
        self.path = path
        self.name = name
        self.identity = identity
        self.device = device
        self.dtype = dtype
        if device.type == "cuda":
            # NHWC is the layout cuDNN prefers for half-precision convolutions (not measured here: no GPU at
            # hand). On CPU oneDNN was faster with NCHW at 32x32 to 128x128 latents (measured), so CPU keeps it.
            unet = unet.to(memory_format=torch.channels_last)
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.decoder = decoder
        self.scheduler_config = dict(scheduler_config)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.latent_channels = int(unet.config.in_channels)
        self.vae_scale_factor = int(decoder.scale_factor)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        self.default_size = (int(h) * self.vae_scale_factor, int(w) * self.vae_scale_factor)
        self.scaling_factor = float(decoder.scaling_factor)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if latent_rgb is None:
            latent_rgb = default_latent_rgb(self.latent_channels)
        self.latent_rgb = latent_rgb
        # The guidance scale a request without one gets on this model (tnr_lab.json beside it); methods not
        # listed keep engine.request.DEFAULT_SCALE.
        self.default_scales = dict(default_scales or {})
        # Reuse the cross-attention keys/values and the added embedding across steps, and a lean forward for
        # the transformer blocks' attention (exact; see speedups.py).
        from engine.models.speedups import install_speedups

        self._cache_token = next(_BUNDLE_TOKENS)
        self._unet_cache = install_speedups(unet)
        self.reuse_conditioning_work = True

    def __repr__(self) -> str:
        return f"ModelBundle({self.name!r}, identity={self.identity}, device={self.device}, dtype={self.dtype})"

    @cached_property
    def schedule(self) -> Schedule:
        from engine.schedule import Schedule

        return Schedule.from_config(self.scheduler_config)

    # ---- conditioning --------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(
        self, texts: list[str], height: int, width: int, zero_if_empty: list[bool] | None = None
    ) -> Conditioning:
        """SDXL conditioning for each text, as StableDiffusionXLPipeline.encode_prompt builds it.

        A row whose text is empty and whose `zero_if_empty` flag is set (the negative prompt) gets zero
        embeddings when the model's `force_zeros_for_empty_prompt` is on: diffusers does this for a
        negative prompt left unset.
        """
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError("encode: no texts")
        flags = list(zero_if_empty) if zero_if_empty is not None else [False] * len(texts)
        if len(flags) != len(texts):
            raise ValueError(f"encode: {len(texts)} texts but {len(flags)} zero_if_empty flags")
        zero = [self.force_zeros_for_empty_prompt and f and t == "" for t, f in zip(texts, flags, strict=True)]
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(
                texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if encoder is self.text_encoder_2:
                pooled = out.text_embeds
        prompt_embeds = torch.cat(hidden, dim=-1).to(self.dtype)
        text_embeds = pooled.to(self.dtype)
        if any(zero):
            mask = torch.tensor(zero, device=self.device)
            prompt_embeds = torch.where(mask[:, None, None], torch.zeros_like(prompt_embeds), prompt_embeds)
            text_embeds = torch.where(mask[:, None], torch.zeros_like(text_embeds), text_embeds)
        # time_ids: original size, crop top-left, target size (no micro-conditioning tricks).
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype, device=self.device)
        return Conditioning(prompt_embeds, text_embeds, time_ids.repeat(len(texts), 1), texts)

    def dropped_text(self, texts: list[str]) -> list[str]:
        """For each text, what the text encoders never see: the words past their context (77 tokens for CLIP).

        `encode` truncates as diffusers does; this says what was cut ("" when nothing was), so callers can warn
        instead of dropping the end of a long prompt silently.
        """
        dropped = []
        for text in texts:
            cut = ""
            for tokenizer in (self.tokenizer, self.tokenizer_2):
                ids = tokenizer(str(text), truncation=False, verbose=False).input_ids
                limit = tokenizer.model_max_length
                if len(ids) > limit:
                    # The last kept position holds end-of-text; the cut text is between it and the real end.
                    cut = tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True).strip(" \ufffd")
                    break
            dropped.append(cut)
        return dropped

    # ---- the model -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def eps(self, x: torch.Tensor, sigma: float, t: float, cond: Conditioning) -> torch.Tensor:
        """The noise prediction for the VE latent `x` at `sigma` (timestep `t`), one batched UNet call.

        `x` has one row per conditioning row. Returns float32 on the model's device.
        """
        if x.shape[0] != cond.batch:
            raise ValueError(f"eps: {x.shape[0]} latents but {cond.batch} conditioning rows")
        sigma = float(sigma)
        c_in = 1.0 / math.sqrt(sigma * sigma + 1.0)
        x = x.to(device=self.device, dtype=torch.float32)
        model_input = (x * c_in).to(self.dtype)
        timesteps = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=self.device)
        cache = cond.unet_cache.setdefault(self._cache_token, {}) if self.reuse_conditioning_work else None
        with self._unet_cache.active(cache):
            out = self.unet(
                model_input,
                timesteps,
                encoder_hidden_states=cond.prompt_embeds,
                added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids},
                return_dict=False,
            )[0].float()
        if self.prediction_type == "v_prediction":
            # v = a*eps - s*x0 and z = a*x0 + s*eps (a = c_in, s = sigma*c_in)  =>  eps = a*v + s*z.
            return c_in * out + sigma * c_in * (x * c_in)
        if self.prediction_type != "epsilon":
            raise ModelError(f"{self.path}: prediction_type {self.prediction_type!r} is not supported")
        return out

    def eps_perturbed(
        self, x: torch.Tensor, sigma: float, t: float, cond: Conditioning, perturbation: Any
    ) -> torch.Tensor:
        """`eps` through a perturbed model (PAG, SEG, SLG, autoguidance): diffusers' hooks for this one call
        (engine/models/perturb.py; `perturbation` is an engine.guidance.base.Perturbation)."""
        from engine.models.perturb import perturbed

        with perturbed(self.unet, perturbation):
            return self.eps(x, sigma, t, cond)

    # ---- images --------------------------------------------------------------------------------------

    def decode(self, latent_model_space: torch.Tensor) -> torch.Tensor:
        """Full decode with the lab's SDXL decoder: [N, C, h, w] -> [N, 3, H, W] float32 (on the device)."""
        return self.decoder.decode(latent_model_space)

    def preview(self, denoised_model_space: torch.Tensor) -> Image.Image:
        """Cheap latent-to-RGB preview of the first row (MATH.md 6)."""
        from engine.preview import latent_to_rgb

        return latent_to_rgb(denoised_model_space, *self.latent_rgb)


def default_latent_rgb(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's public factors for 4-channel latents; a grey projection of the channel mean otherwise."""
    from engine.preview import SDXL_LATENT_RGB_BIAS, SDXL_LATENT_RGB_FACTORS

    if channels == 4:
        return SDXL_LATENT_RGB_FACTORS.clone(), SDXL_LATENT_RGB_BIAS.clone()
    return torch.full((channels, 3), 1.0 / channels), torch.zeros(3)
