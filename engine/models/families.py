"""Model families: what differs between SD 1.5, SD 2.x and SDXL, in one table (docs/MATH.md 8).

Torch-free at import (the request and the CLI read the names). The loader picks a family from a diffusers
directory (`family_of_directory`: the UNet's added conditioning and the text encoder's activation) or from a
single file's keys (`family_of_keys`: where the text encoders live in the original layout).

| family | text encoders | conditioning | added conditioning | empty negative | VAE scaling | native |
|---|---|---|---|---|---|---|
| sd1 (SD 1.x) | CLIP ViT-L (768, quick_gelu) | last hidden state, after the final layer norm | none | the encoded "" | 0.18215 | 512 |
| sd2 (SD 2.x) | OpenCLIP ViT-H (1024, gelu; pads with "!") | the same (diffusers' copy stops one layer early) | none | the encoded "" | 0.18215 | 512 / 768-v |
| sdxl | CLIP ViT-L + OpenCLIP bigG | penultimate hidden states, concatenated | text_time | zeros (`force_zeros_for_empty_prompt`) | 0.13025 | 1024 |

"The encoded empty string" is what diffusers' StableDiffusionPipeline does for a negative prompt left unset
(it has no `force_zeros_for_empty_prompt`); SDXL's pipeline zeroes an unset negative unless its model index
turns that off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str  # "sd1", "sd2", "sdxl"
    label: str  # for people: "SD 1.5", "SD 2.x", "SDXL"
    text_encoders: int  # 1 or 2
    added_conditioning: bool  # SDXL's text_time (pooled text embedding + size/crop ids)
    zeros_for_empty_negative: bool  # the default when the model index is silent
    pipeline_class: str  # diffusers' pipeline of the family (single files, parity tests)
    vae_scaling_factor: float
    native_size: int  # pixels per side of the family's base models


SD1 = Family("sd1", "SD 1.5", 1, False, False, "StableDiffusionPipeline", 0.18215, 512)
SD2 = Family("sd2", "SD 2.x", 1, False, False, "StableDiffusionPipeline", 0.18215, 768)
SDXL = Family("sdxl", "SDXL", 2, True, True, "StableDiffusionXLPipeline", 0.13025, 1024)
FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL)}

# Where the original (CompVis/SGM) layout keeps each family's text encoders: the first prefix that a single
# file's keys start with decides (diffusers' single-file code uses the same places).
_SINGLE_FILE_MARKS: tuple[tuple[str, Family], ...] = (
    ("conditioner.embedders.1.model.", SDXL),  # OpenCLIP bigG beside CLIP-L (SGM layout)
    ("cond_stage_model.model.", SD2),  # OpenCLIP ViT-H (open_clip layout)
    ("cond_stage_model.transformer.", SD1),  # CLIP ViT-L (Hugging Face layout inside the checkpoint)
)
UNET_PREFIX = "model.diffusion_model."


class FamilyError(ValueError):
    """The family of a model cannot be told; the message says what was found."""


def family_of_keys(keys: list[str] | set[str], shapes: dict[str, tuple[int, ...]] | None = None) -> Family:
    """The family of a single-file checkpoint from its tensor names (original layout).

    `shapes` (optional, name -> shape) lets it refuse inpainting UNets (9 input channels) by name.
    """
    keys = set(keys)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise FamilyError(f"no UNet in the original layout (no '{UNET_PREFIX}*' keys); found {_prefixes(keys)}")
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys) and not any(
        k.startswith("conditioner.embedders.1.") for k in keys
    ):
        raise FamilyError("an SDXL refiner (one OpenCLIP text encoder, no CLIP-L): not supported")
    for prefix, family in _SINGLE_FILE_MARKS:
        if any(k.startswith(prefix) for k in keys):
            conv_in = (shapes or {}).get(UNET_PREFIX + "input_blocks.0.0.weight")
            if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
                raise FamilyError(
                    f"a {family.label} UNet with {conv_in[1]} input channels (inpainting or a variant): not supported"
                )
            return family
    raise FamilyError(
        "no SD 1.5 (cond_stage_model.transformer.*), SD 2.x (cond_stage_model.model.*) or SDXL "
        f"(conditioner.embedders.1.model.*) text encoder; found {_prefixes(keys)}"
    )


def family_of_directory(unet_config: dict[str, Any], text_encoder_config: dict[str, Any]) -> Family:
    """The family of a diffusers directory: SDXL's UNet has `text_time`; SD 2.x's text encoder uses gelu
    (OpenCLIP), SD 1.x's quick_gelu (OpenAI CLIP)."""
    if unet_config.get("addition_embed_type") == "text_time":
        return SDXL
    if unet_config.get("addition_embed_type") is not None:
        raise FamilyError(f"UNet addition_embed_type {unet_config.get('addition_embed_type')!r} is not SD 1.5/2.x/SDXL")
    return SD2 if text_encoder_config.get("hidden_act") == "gelu" else SD1


def _prefixes(keys: set[str], limit: int = 4) -> str:
    """'model.diffusion_model (686 keys), first_stage_model (248 keys), ...': what a file holds, briefly."""
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:2]) if parts[0] in ("model", "cond_stage_model", "conditioner") else parts[0]
        counts[head] = counts.get(head, 0) + 1
    if not counts:
        return "no tensors"
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} ({n} key{'s' if n != 1 else ''})" for name, n in top[:limit])
    return text + (f" and {len(top) - limit} more" if len(top) > limit else "")
