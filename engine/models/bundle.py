"""ModelBundle: one loaded model (SD 1.5, SD 2.x or SDXL) behind the small interface the sampler needs (CONTRACTS.md).

encode(texts, height, width) -> Conditioning       (the family's conditioning, exactly as diffusers builds it)
eps(x, sigma, t, cond)       -> eps, float32        (MATH.md 2: the UNet sees x / sqrt(sigma**2 + 1))
decode(latent)               -> image in [-1, 1]    (engine.decoder, float32)
preview(denoised)            -> PIL.Image           (latent-to-RGB factors, MATH.md 6)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.models.errors import ModelError  # re-exported: engine.models.bundle.ModelError is public

if TYPE_CHECKING:
    from PIL import Image

    from engine.decoder import SDXLDecoder
    from engine.models.families import Family
    from engine.schedule import Schedule


@dataclass
class Conditioning:
    """The conditioning of one row per text, on the model's device in the UNet dtype.

    SDXL: `prompt_embeds` [N, 77, D1 + D2]: penultimate hidden states of both text encoders, concatenated;
    `text_embeds` [N, P]: the pooled projection of text encoder 2; `time_ids` [N, 6]: original size,
    crop top-left (0, 0), target size. SD 1.5 / 2.x: `prompt_embeds` [N, 77, D], the text encoder's last
    hidden state after its final layer norm; `text_embeds` and `time_ids` are None (no added conditioning).
    """

    prompt_embeds: torch.Tensor
    text_embeds: torch.Tensor | None
    time_ids: torch.Tensor | None
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
            _rows(self.text_embeds, lambda t: t.repeat_interleave(n, dim=0)),
            _rows(self.time_ids, lambda t: t.repeat_interleave(n, dim=0)),
            [t for t in self.texts for _ in range(n)],
        )

    def select(self, idx: list[int] | torch.Tensor) -> Conditioning:
        index = torch.as_tensor(idx, dtype=torch.long, device=self.prompt_embeds.device)
        texts = [self.texts[i] for i in index.tolist()] if self.texts else []
        return Conditioning(
            self.prompt_embeds[index],
            _rows(self.text_embeds, lambda t: t[index]),
            _rows(self.time_ids, lambda t: t[index]),
            texts,
        )

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        pooled = [p.text_embeds for p in parts]
        time_ids = [p.time_ids for p in parts]
        return Conditioning(
            torch.cat([p.prompt_embeds for p in parts]),
            None if any(t is None for t in pooled) else torch.cat(pooled),  # type: ignore[arg-type]
            None if any(t is None for t in time_ids) else torch.cat(time_ids),  # type: ignore[arg-type]
            [t for p in parts for t in p.texts],
        )


def _rows(tensor: torch.Tensor | None, pick: Any) -> torch.Tensor | None:
    return None if tensor is None else pick(tensor)


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
        text_encoder_2: Any = None,
        tokenizer: Any,
        tokenizer_2: Any = None,
        decoder: SDXLDecoder,
        scheduler_config: dict[str, Any],
        force_zeros_for_empty_prompt: bool | None = None,
        latent_rgb: tuple[torch.Tensor, torch.Tensor] | None = None,
        default_scales: dict[str, float] | None = None,
        family: Family | None = None,
        default_cfg_rescale: float | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        from engine.models.families import SDXL

        self.family = family or SDXL
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
        # The scheduler config as the model ships it (with a single file's v_pred / ztsnr markers applied);
        # `scheduler_config` is it with the current request's overrides (`configure`).
        self.base_scheduler_config = dict(scheduler_config)
        self._overrides: dict[str, Any] = {}
        self._schedule: tuple[str, Schedule] | None = None
        # Which rows of an empty negative are zeros: the family's rule unless the model index says otherwise
        # (families.py: SD 1.5/2.x encode "", SDXL zeroes).
        if force_zeros_for_empty_prompt is None:
            force_zeros_for_empty_prompt = self.family.zeros_for_empty_negative
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        # What the loader had to say about the model (markers read, overrides); shown by the CLI.
        self.notes = tuple(notes)
        self.latent_channels = int(unet.config.in_channels)
        self.vae_scale_factor = int(decoder.scale_factor)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        self.default_size = (int(h) * self.vae_scale_factor, int(w) * self.vae_scale_factor)
        self.scaling_factor = float(decoder.scaling_factor)
        if latent_rgb is None:
            latent_rgb = default_latent_rgb(self.latent_channels, self.family.name)
        self.latent_rgb = latent_rgb
        # The guidance scale a request without one gets on this model (tnr_lab.json beside it); methods not
        # listed keep engine.request.DEFAULT_SCALE.
        self.default_scales = dict(default_scales or {})
        # The CFG rescale (phi) a request without one gets: tnr_lab.json's, else 0.7 for a zero-terminal-SNR
        # model (MATH.md 8), else 0.
        self._default_cfg_rescale = default_cfg_rescale
        # Reuse the cross-attention keys/values and the added embedding across steps, and a lean forward for
        # the transformer blocks' attention (exact; see speedups.py).
        from engine.models.speedups import install_speedups

        self._cache_token = next(_BUNDLE_TOKENS)
        self._unet_cache = install_speedups(unet)
        self.reuse_conditioning_work = True

    def __repr__(self) -> str:
        return f"ModelBundle({self.name!r}, identity={self.identity}, device={self.device}, dtype={self.dtype})"

    # ---- the scheduler config, the prediction type, per-request overrides ----------------------------------

    @property
    def scheduler_config(self) -> dict[str, Any]:
        """The model's scheduler config with the current overrides (`configure`) applied."""
        config = dict(self.base_scheduler_config)
        if "prediction_type" in self._overrides:
            config["prediction_type"] = self._overrides["prediction_type"]
        if "zero_snr" in self._overrides:
            zero_snr = self._overrides["zero_snr"]
            if zero_snr and not config.get("rescale_betas_zero_snr"):
                # Zero terminal SNR is sampled from the last timestep (Lin et al. 2023): trailing spacing.
                config["timestep_spacing"] = "trailing"
            config["rescale_betas_zero_snr"] = bool(zero_snr)
        return config

    @property
    def prediction_type(self) -> str:
        """ "epsilon" or "v_prediction": what the UNet predicts (eps() converts v to eps)."""
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def zero_snr(self) -> bool:
        return bool(self.scheduler_config.get("rescale_betas_zero_snr", False))

    @property
    def default_cfg_rescale(self) -> float:
        if self._default_cfg_rescale is not None:
            return float(self._default_cfg_rescale)
        return 0.7 if self.zero_snr else 0.0

    @property
    def schedule(self) -> Schedule:
        import json

        from engine.schedule import Schedule, ScheduleError

        config = self.scheduler_config
        key = json.dumps(config, sort_keys=True, default=str)
        if self._schedule is None or self._schedule[0] != key:
            try:
                self._schedule = (key, Schedule.from_config(config))
            except ScheduleError as exc:  # a ModelError naming the model: one line in the CLI and the TUI
                raise ModelError(f"{self.path}: {exc}") from exc
        return self._schedule[1]

    def set_prediction(self, prediction_type: str | None = None, zero_snr: bool | None = None) -> None:
        """Override what the model's files say (None: keep it): a single file without markers, a wrong config.

        Cheap (no reload); the sampler sets both from each request (`GenerationRequest.prediction_type`,
        `zero_snr`), so a run's overrides never leak into the next.
        """
        if prediction_type not in (None, "epsilon", "v_prediction"):
            raise ModelError(f"prediction type {prediction_type!r}: choose epsilon or v_prediction")
        self._overrides = {}
        if prediction_type is not None:
            self._overrides["prediction_type"] = prediction_type
        if zero_snr is not None:
            self._overrides["zero_snr"] = bool(zero_snr)

    # ---- LoRAs and per-request options ----------------------------------------------------------------------

    def set_loras(self, loras: Any = ()) -> tuple[Any, ...]:
        """Make exactly these LoRAs active (LoraSpec or (path, weight); () turns them all off), without
        reloading the model: each file is loaded once as a peft adapter and kept (engine.models.lora).
        Returns LoraSpecs with each file's sha256; LoraError (a ModelError) names a file that does not fit."""
        from engine.models.lora import set_loras

        return set_loras(self, loras)

    @property
    def active_loras(self) -> list[dict[str, Any]]:
        """[{"name", "path", "sha256", "a1111_hash", "weight"}] of the active LoRAs."""
        from engine.models.lora import active_loras

        return active_loras(self)

    def configure(self, request: Any) -> Any:
        """Set what a request asks of the model (its LoRAs, prediction-type and zero-SNR overrides) and
        return the request with each LoRA's sha256 filled in. The sampler calls it before every run."""
        self.set_prediction(getattr(request, "prediction_type", None), getattr(request, "zero_snr", None))
        loras = self.set_loras(getattr(request, "loras", ()))
        return request if tuple(loras) == tuple(request.loras) else request.replace(loras=tuple(loras))

    def describe(self) -> str:
        """'SDXL, v-prediction, zero terminal SNR': the family and what its UNet predicts."""
        parts = [self.family.label]
        parts.append("v-prediction" if self.prediction_type == "v_prediction" else "eps-prediction")
        if self.zero_snr:
            parts.append("zero terminal SNR")
        return ", ".join(parts)

    # ---- conditioning --------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(
        self, texts: list[str], height: int, width: int, zero_if_empty: list[bool] | None = None
    ) -> Conditioning:
        """The conditioning of each text, as the family's diffusers pipeline builds it in `encode_prompt`.

        SDXL: both encoders' penultimate hidden states and encoder 2's pooled projection, with `time_ids`.
        SD 1.5 / 2.x: the text encoder's last hidden state (after its final layer norm; no clip skip), padded
        with the tokenizer's own pad token (SD 2.x pads with "!").
        A row whose text is empty and whose `zero_if_empty` flag is set (the negative prompt) gets zero
        embeddings when the model's `force_zeros_for_empty_prompt` is on: SDXL's pipeline does this for a
        negative prompt left unset; SD 1.5/2.x's encodes "" instead (the flag is off for them).
        """
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError("encode: no texts")
        flags = list(zero_if_empty) if zero_if_empty is not None else [False] * len(texts)
        if len(flags) != len(texts):
            raise ValueError(f"encode: {len(texts)} texts but {len(flags)} zero_if_empty flags")
        zero = [self.force_zeros_for_empty_prompt and f and t == "" for t, f in zip(texts, flags, strict=True)]
        if not self.family.added_conditioning:
            ids = self.tokenizer(
                texts,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            # StableDiffusionPipeline: text_encoder(ids)[0], the last hidden state after the final layer norm.
            prompt_embeds = self.text_encoder(ids)[0].to(self.dtype)
            if any(zero):
                mask = torch.tensor(zero, device=self.device)
                prompt_embeds = torch.where(mask[:, None, None], torch.zeros_like(prompt_embeds), prompt_embeds)
            return Conditioning(prompt_embeds, None, None, texts)
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
            for tokenizer in (t for t in (self.tokenizer, self.tokenizer_2) if t is not None):
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

        `x` has one row per conditioning row. Returns float32 on the model's device; a v-prediction model's
        eps is float64 (float32 on MPS, which has no float64), see below.
        """
        if x.shape[0] != cond.batch:
            raise ValueError(f"eps: {x.shape[0]} latents but {cond.batch} conditioning rows")
        sigma = float(sigma)
        c_in = 1.0 / math.sqrt(sigma * sigma + 1.0)
        x_given = x.to(device=self.device)
        x = x_given.to(dtype=torch.float32)
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
            )[0]
        if self.prediction_type == "v_prediction":
            # v = a*eps - s*x0 and z = a*x0 + s*eps (a = c_in, s = sigma*c_in)  =>  eps = a*v + s*z.
            # In float64: x0's share of eps is about x0 / sigma, and at zero terminal SNR sigma reaches 4096,
            # where a float32 eps keeps it to ~2.5e-4 only (the denoised estimate x - sigma * eps inherits
            # that; measured 9.5e-5 from a float64 run after 8 steps, diffusers' float32 v-space step 2.8e-5).
            # The sampler keeps float64 predictions, so the step that follows is float64 too.
            wide = torch.float32 if self.device.type == "mps" else torch.float64
            x_wide = x_given.to(wide)
            return c_in * out.to(wide) + sigma * c_in * (x_wide * c_in)
        if self.prediction_type != "epsilon":
            raise ModelError(f"{self.path}: prediction_type {self.prediction_type!r} is not supported")
        return out.float()

    def check_perturbation(self, perturbation: Any) -> None:
        """Raise PerturbationError (a ModelError: one line) where this UNet cannot take `perturbation`: an unknown
        kind, or layers that match no self-attention layer or only part of a block (engine/models/perturb.py)."""
        from engine.models.perturb import PERTURBATION_KINDS, PerturbationError, resolve_layers

        if perturbation.kind not in PERTURBATION_KINDS:
            raise PerturbationError(f"unknown perturbation {perturbation.kind!r}")
        resolve_layers(self.unet, perturbation.layers)

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


def default_latent_rgb(channels: int, family: str = "sdxl") -> tuple[torch.Tensor, torch.Tensor]:
    """The family's public factors for 4-channel latents (engine.preview); a grey projection of the channel
    mean otherwise."""
    from engine.preview import public_latent_rgb

    if channels == 4:
        return public_latent_rgb(family)
    return torch.full((channels, 3), 1.0 / channels), torch.zeros(3)
