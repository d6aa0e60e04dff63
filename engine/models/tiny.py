"""Tiny random pipeline directories of each model family, built offline (tests, the benchmark, the toy trainer).

- `build_tiny_sdxl`: SDXL base's topology (two CLIP text encoders of different widths, the UNet's `text_time`
  added conditioning, a VAE with the SDXL decoder's block structure, the SDXL scheduler config); with
  `prediction_type="v_prediction", zero_snr=True` the scheduler of the v-prediction, zero-terminal-SNR
  finetunes (NoobAI-XL v-pred and its kin: trailing spacing, `rescale_betas_zero_snr`).
- `build_tiny_sd(family="sd1")`: SD 1.5's (one CLIP-L-shaped text encoder, quick_gelu, no added conditioning,
  conv projections, VAE scaling 0.18215, the published scheduler config with no `timestep_spacing`);
  `family="sd2"`: SD 2.x 768-v's (OpenCLIP-H-shaped: gelu, the tokenizer pads with "!", linear projections,
  `upcast_attention`, v-prediction).
- `write_single_file(directory, path)`: the same weights as one `.safetensors` file in the original
  (CompVis/SGM) key layout, with the `v_pred` / `ztsnr` marker keys when asked: the inverse of diffusers'
  single-file conversion for these blocks.

Widths are small enough that a directory builds in seconds and a 64x64 generation takes a fraction of a
second on CPU. The tokenizers are trained on the fly from a small corpus (PITFALLS.md: transformers 5
tokenizer traps).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Widths: the two text encoders must differ (PITFALLS.md: same widths confuse single-file conversion).
TEXT1_WIDTH = 32
TEXT2_WIDTH = 48
TEXT2_PROJECTION = 48
ADDITION_TIME_EMBED_DIM = 8

_CORPUS = (
    "a red circle on a white background . a blue square on a black background . a green triangle on a grey "
    "background . a yellow star , a photo of a cat , a painting of a dog , an astronaut riding a horse on the "
    "moon , high quality , blurry , low quality , ugly , detailed , sharp , colourful , dark , bright , orange , "
    "purple , pink , brown , small , large , centered , shapes , toy , lab , noise , true noise removal"
)


def sdxl_scheduler_config() -> dict:
    """SDXL base's EulerDiscreteScheduler configuration (public values, PITFALLS.md)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "sample_max_value": 1.0,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
    }


def train_clip_bpe(
    corpus: Iterable[str] | None = None, vocab_size: int = 400
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE (lower-case words, `</w>` end-of-word suffix, byte-level alphabet) on `corpus`
    (default: the fixture's small corpus). Shared by the test fixture and the embedded model's training."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # CLIP's alphabet: the 256 byte-level symbols, each alone and with `</w>`, so any text tokenizes.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4 if corpus is None else corpus, trainer=trainer)
    spec = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab.setdefault(sym, len(vocab))
    for sym in alphabet:
        vocab.setdefault(sym + "</w>", len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tiny_sdxl(
    directory: str | Path, seed: int = 0, *, prediction_type: str = "epsilon", zero_snr: bool = False
) -> Path:
    """Write a tiny random SDXL-topology diffusers directory to `directory` and return its path.

    `prediction_type` / `zero_snr` change only the scheduler config (the weights are the same for a seed):
    v-prediction with zero terminal SNR gets trailing spacing, as those finetunes ship it.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    directory = Path(directory)
    vocab, merges = train_clip_bpe()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(vocab),
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        intermediate_size=64,
        num_hidden_layers=3,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=TEXT1_WIDTH, num_attention_heads=2, hidden_act="quick_gelu", **common)
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=TEXT2_WIDTH,
            num_attention_heads=2,
            hidden_act="gelu",
            projection_dim=TEXT2_PROJECTION,
            **common,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4),
        cross_attention_dim=TEXT1_WIDTH + TEXT2_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=ADDITION_TIME_EMBED_DIM * 6 + TEXT2_PROJECTION,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    # Random init leaves the VAE's output near zero; spread the weights a little so that decoder parity
    # is tested on non-trivial numbers.
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = sdxl_scheduler_config()
    config["prediction_type"] = prediction_type
    if zero_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    scheduler = EulerDiscreteScheduler.from_config(config)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


# The published scheduler configs of SD 1.5 (PNDM) and SD 2.x 768-v (DDIM): no `timestep_spacing`, so
# diffusers' Euler spaces linearly ("linspace"), as our Schedule does when the key is absent.
SD1_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD2_V_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD1_TEXT_WIDTH = 32
SD2_TEXT_WIDTH = 48


def build_tiny_sd(directory: str | Path, family: str = "sd1", seed: int = 0) -> Path:
    """Write a tiny random SD 1.5 (`family="sd1"`) or SD 2.x 768-v (`"sd2"`) diffusers directory; its path.

    One text encoder (SD 1.5: quick_gelu, pads with end-of-text; SD 2.x: gelu, pads with "!"), a UNet with
    no added conditioning (SD 2.x: linear projections and `upcast_attention`, as 768-v), a VAE with the
    SD VAE's block structure and scaling 0.18215, and the family's published scheduler config.
    """
    import json

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if family not in ("sd1", "sd2"):
        raise ValueError(f"build_tiny_sd: family must be sd1 or sd2, got {family!r}")
    sd2 = family == "sd2"
    directory = Path(directory)
    vocab, merges = train_clip_bpe()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, **({"pad_token": "!"} if sd2 else {}))
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    width = SD2_TEXT_WIDTH if sd2 else SD1_TEXT_WIDTH

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=width,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # SD's first blocks have attention (SDXL's do not): the other half of the single-file block mapping.
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4) if sd2 else 8,
        cross_attention_dim=width,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
    with torch.no_grad():  # as in build_tiny_sdxl: non-trivial decoder outputs
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    published = SD2_V_SCHEDULER_CONFIG if sd2 else SD1_SCHEDULER_CONFIG
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(published),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    # save_pretrained writes every key of the scheduler class it holds; the published file has only these.
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(published, indent=2) + "\n")
    index = json.loads((directory / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", published["_class_name"]]
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory


# ---- single files in the original key layout -------------------------------------------------------------------

_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _original_unet(unet: dict[str, Any], per_block: int) -> dict[str, Any]:
    """diffusers UNet2DConditionModel keys -> the original `model.diffusion_model.*` layout."""
    out = {}
    for key, value in unet.items():
        parts = key.split(".")
        head = next((name for name in _UNET_FIXED if key.startswith(name + ".")), None)
        if head is not None:
            new = _UNET_FIXED[head] + key.removeprefix(head)
        elif parts[0] == "down_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{(i + 1) * (per_block + 1)}.0.op.{rest.removeprefix('conv.')}"
            else:
                new = f"input_blocks.{i * (per_block + 1) + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        elif parts[0] == "up_blocks":
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":
                has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in unet)
                new = f"output_blocks.{i * (per_block + 1) + per_block}.{2 if has_attention else 1}.{rest}"
            else:
                new = f"output_blocks.{i * (per_block + 1) + j}.{0 if kind == 'resnets' else 1}.{rest}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{1 if kind == 'attentions' else 2 * j}.{rest}"
        else:
            raise ValueError(f"unmapped UNet key {key}")
        if ".resnets." in key:  # only resnets rename their layers (a transformer block has norm1/norm2 too)
            new = "." + new
            for a, b in _RESNET_RENAMES:
                new = new.replace(f".{a}.", f".{b}.")
            new = new[1:]
        out["model.diffusion_model." + new] = value
    return out


def _original_vae(vae: dict[str, Any], n_up: int) -> dict[str, Any]:
    """diffusers AutoencoderKL keys -> the original `first_stage_model.*` layout (attention as 1x1 convs)."""
    import re

    out = {}
    for key, value in vae.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
            lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.upsample", new
        )
        new = new.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0" in new:
            new = new.replace("mid_block.attentions.0", "mid.attn_1")
            new = new.replace("group_norm", "norm").replace("to_out.0", "proj_out")
            new = new.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def _original_open_clip(te: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIP text model's keys -> open_clip's layout under `prefix` (fused q/k/v in-projection,
    `text_projection` stored transposed; a model without a projection gets the identity, which diffusers'
    conversion reads for the width and SD 2.x never uses)."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, dict[str, Any]] = {}
    width = None
    for key, value in te.items():
        key = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
            width = value.shape[-1]
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.split(".")[-1]] = value
        elif key.startswith("encoder.layers."):
            index, name = key.removeprefix("encoder.layers.").split(".", 1)
            base = f"{prefix}transformer.resblocks.{index}."
            if name.startswith("self_attn.") and name.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                fused.setdefault(base, {})[name.split(".", 1)[1]] = value
                continue
            name = name.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
            name = name.replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj")
            out[base + name] = value
        elif key == "embeddings.position_ids":
            continue
        else:
            raise ValueError(f"unmapped text encoder key {key}")
    for base, parts in fused.items():
        for kind in ("weight", "bias"):
            out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts[f"{p}_proj.{kind}"] for p in "qkv"])
    if prefix + "text_projection" not in out and width is not None:
        out[prefix + "text_projection"] = torch.eye(width)
    return out


def write_single_file(
    directory: str | Path, path: str | Path, *, v_pred: bool = False, ztsnr: bool = False, dtype: Any = None
) -> Path:
    """Write the diffusers directory `directory` (any family here) as one safetensors file in the original layout.

    SD 1.x: CLIP under `cond_stage_model.transformer.text_model.`; SD 2.x: open_clip under
    `cond_stage_model.model.`; SDXL: CLIP-L under `conditioner.embedders.0.transformer.text_model.` and bigG
    under `conditioner.embedders.1.model.`. UNet under `model.diffusion_model.`, VAE under
    `first_stage_model.`. `v_pred` / `ztsnr` add the empty marker tensors ComfyUI and A1111 write.
    """
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from engine.models.families import family_of_directory

    directory, path = Path(directory), Path(path)

    def weights(component: str) -> dict[str, Any]:
        files = sorted((directory / component).glob("*.safetensors"))
        return load_file(files[0])

    unet_config = json.loads((directory / "unet" / "config.json").read_text())
    te_config = json.loads((directory / "text_encoder" / "config.json").read_text())
    family = family_of_directory(unet_config, te_config)
    state = _original_unet(weights("unet"), unet_config["layers_per_block"])
    n_up = len(json.loads((directory / "vae" / "config.json").read_text())["block_out_channels"])
    state.update(_original_vae(weights("vae"), n_up))
    te = weights("text_encoder")
    if family.name == "sd2":
        state.update(_original_open_clip(te, "cond_stage_model.model."))
    else:
        prefix = "conditioner.embedders.0.transformer." if family.name == "sdxl" else "cond_stage_model.transformer."
        for key, value in te.items():
            state[prefix + (key if key.startswith("text_model.") else "text_model." + key)] = value
    if family.name == "sdxl":
        state.update(_original_open_clip(weights("text_encoder_2"), "conditioner.embedders.1.model."))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if v_pred:
        state["v_pred"] = torch.tensor([])
    if ztsnr:
        state["ztsnr"] = torch.tensor([])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
