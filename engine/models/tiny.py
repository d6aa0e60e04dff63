"""A tiny random SDXL-topology pipeline directory, built offline (tests, the benchmark, the toy trainer).

Same topology as SDXL base (two CLIP text encoders of different widths, the UNet's `text_time` added
conditioning, a VAE with the SDXL decoder's block structure, the SDXL scheduler config) at a width small
enough that the whole directory builds in seconds and a 64x64 generation takes a fraction of a second on CPU.
The tokenizers are trained on the fly from a small corpus (PITFALLS.md: transformers 5 tokenizer traps).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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


def build_tiny_sdxl(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SDXL-topology diffusers directory to `directory` and return its path."""
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
    scheduler = EulerDiscreteScheduler.from_config(sdxl_scheduler_config())
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
