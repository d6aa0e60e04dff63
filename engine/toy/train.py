"""Train the embedded toy model from scratch: rendered data, the VAE, then the UNet and both text encoders.

    python -m engine.toy.train --out DIR --seed 0

is the whole recipe of the committed model (data/models/shapes-xl): render the pictures, train the
autoencoder, polish its decoder with the encoder frozen, then train the UNet and both text encoders. It writes an
ordinary diffusers StableDiffusionXLPipeline directory (float16 safetensors) plus `latent_rgb.json`
(latent-to-RGB preview factors), `training_log.tsv` (the loss curve) and `training.json` (sizes, steps, times). The conditioning
is exactly SDXL's (diffusers' `encode_prompt`): penultimate hidden states of both text encoders concatenated,
the second encoder's projected pooled output, time ids `[H, W, 0, 0, H, W]`; prompt dropout replaces both
embeddings with zeros, which is what the pipeline feeds for an empty negative prompt when
`force_zeros_for_empty_prompt` is true, so that zero conditioning is CFG's unconditional branch.

The step counts default to the recipe's (`Sizes`); `--minutes` instead derives the ones not given from the speed
of the first steps and prints them; passing them back with `--vae-steps/--decoder-steps/--unet-steps` reproduces
a run exactly (same seed, same thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.models.tiny import sdxl_scheduler_config, train_clip_bpe
from engine.toy.data import IMAGE_SIZE, all_scenes, grammar_corpus, make_dataset

PROMPT_DROPOUT = 0.12
EOS, BOS = "<|endoftext|>", "<|startoftext|>"


@dataclass(frozen=True)
class Sizes:
    """Widths of every part; `full` is the committed model, `tiny` the smoke test's."""

    # Narrow where the resolution is high: the cost of a level goes with (resolution * width)^2.
    vae_channels: tuple[int, ...] = (16, 16, 32, 64)
    vae_groups: int = 8
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_heads: tuple[int, ...] = (2, 4, 4)
    unet_layers: int = 1
    unet_groups: int = 32
    time_embed_dim: int = 32
    # The UNet projects all 77 text tokens to keys and values in every cross-attention block, which is most of
    # its cost at 8x8 latents: the text widths are kept small (they still differ, as SDXL's do).
    text1_width: int = 48
    text2_width: int = 64
    text2_projection: int = 64
    text_layers: int = 3
    images: int = 20000
    vae_batch: int = 16
    unet_batch: int = 64
    # The recipe's step counts (--vae-steps, --decoder-steps, --unet-steps override them).
    vae_steps: int = 1400
    decoder_steps: int = 1500
    unet_steps: int = 3200


SIZES = {
    "full": Sizes(),
    "tiny": Sizes(
        vae_channels=(8, 8, 16, 16),
        vae_groups=4,
        unet_channels=(16, 32),
        unet_heads=(1, 2),
        unet_groups=8,
        time_embed_dim=8,
        text1_width=16,
        text2_width=24,
        text2_projection=16,
        text_layers=2,
        images=64,
        vae_batch=8,
        unet_batch=16,
        vae_steps=3,
        decoder_steps=2,
        unet_steps=4,
    ),
}


def log(message: str) -> None:
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)


# ---------------------------------------------------------------- tokenizers


def train_grammar_bpe(vocab_size: int = 600) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE over the prompt grammar: every grammar word becomes one `word</w>` token.

    The vocabulary starts with the 256 byte-level symbols, alone and with `</w>` (as CLIP's does), so any
    text tokenizes without unknown tokens; words outside the grammar just split into pieces.
    """
    return train_clip_bpe(grammar_corpus(), vocab_size)


def build_tokenizers():
    from transformers import CLIPTokenizer

    vocab, merges = train_grammar_bpe()
    # SDXL: the first tokenizer pads with end-of-text, the second with "!" (PITFALLS.md for the 5.x keywords).
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")
    return tokenizer, tokenizer_2


# ---------------------------------------------------------------- models


def build_models(sizes: Sizes, vocab_size: int, bos: int, eos: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(sizes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(sizes.vae_channels),
        block_out_channels=sizes.vae_channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=sizes.vae_groups,
        sample_size=IMAGE_SIZE,
        force_upcast=True,
    )
    # eos_token_id != 2 makes CLIP pool at the first end-of-text token (not at the largest id).
    common = dict(
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=4 if sizes.text1_width >= 48 else 2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=sizes.text1_width, intermediate_size=4 * sizes.text1_width, hidden_act="quick_gelu", **common
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=sizes.text2_width,
            intermediate_size=4 * sizes.text2_width,
            hidden_act="gelu",
            projection_dim=sizes.text2_projection,
            **common,
        )
    )
    levels = len(sizes.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=sizes.unet_channels,
        layers_per_block=sizes.unet_layers,
        # Cross-attention at every level but the coarsest (2x2 at 64x64 images): the 8x8 level is where the
        # prompt's colours meet the shape's pixels, and the mid block still attends at the coarsest one.
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        transformer_layers_per_block=1,
        attention_head_dim=sizes.unet_heads,  # diffusers' legacy name: the number of heads per level
        cross_attention_dim=sizes.text1_width + sizes.text2_width,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=sizes.time_embed_dim,
        projection_class_embeddings_input_dim=6 * sizes.time_embed_dim + sizes.text2_projection,
        norm_num_groups=sizes.unet_groups,
    )
    return vae, text_encoder, text_encoder_2, unet


# ---------------------------------------------------------------- training helpers


class LossLog:
    """Tab-separated loss curve (stage, step, loss, learning rate, seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.time()
        path.write_text("stage\tstep\tloss\tlr\tseconds\n")

    def add(self, stage: str, step: int, loss: float, lr: float) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{stage}\t{step}\t{loss:.6f}\t{lr:.3e}\t{time.time() - self.start:.1f}\n")


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine down to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def steps_for_budget(measured_seconds: float, measured_steps: int, seconds: float, minimum: int) -> int:
    return max(minimum, int(seconds / max(1e-6, measured_seconds / measured_steps)))


def budgeted_steps(stage: str, first_20_seconds: float, seconds: float, bar) -> int:
    """The step count of a stage run by time budget, from the speed of its first 20 steps (printed, so that
    passing it back reproduces the run)."""
    total = steps_for_budget(first_20_seconds, 20, seconds, 40)
    flag = {"vae": "--vae-steps", "decoder": "--decoder-steps", "unet": "--unet-steps"}[stage]
    log(f"{stage}: {total} steps fit the budget (rerun with {flag} {total} to reproduce)")
    bar.total = total
    return total


def to_unit(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def foreground_weight(x: torch.Tensor, weight: float = 5.0) -> torch.Tensor:
    """Per-pixel loss weight 1 + `weight` on pixels away from the border colour (the shape).

    The shape covers a tenth of the picture: unweighted, the loss is mostly background, and a first autoencoder
    trained that way lost the shapes' colours.
    """
    border = torch.cat([x[:, :, :2].flatten(2), x[:, :, -2:].flatten(2), x[:, :, :, :2].flatten(2)], dim=2)
    background = border.median(dim=2).values[:, :, None, None]
    shape = ((x - background).norm(dim=1, keepdim=True) > 0.2).float()
    return 1.0 + weight * shape


def train_vae(vae, images: np.ndarray, steps: int | None, seconds: float, batch: int, gen: torch.Generator, loss_log):
    """A deterministic autoencoder in AutoencoderKL's format: the posterior mean is the latent.

    Sampling the posterior (with the tiny KL weight sharpness needs, its std stays near 1) buried the small
    shape's colour in noise; here the decoder sees the mean plus 5 % noise relative to the latents' own spread,
    enough to forgive a sampler's small errors. L1 + L2, weighted towards the shape.
    """
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    count = len(images)
    total = 10**9 if steps is None else steps
    warmup = 50
    bar = tqdm(total=steps, desc="vae", unit="step", dynamic_ncols=True)
    step, start = 0, time.time()
    while step < total:
        if steps is None and step == 20:
            total = budgeted_steps("vae", time.time() - start, seconds, bar)
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * warmup_cosine(step, total, warmup, floor=0.05)
        index = torch.randint(0, count, (batch,), generator=gen)
        x = to_unit(images[index.numpy()])
        mean = vae.encode(x).latent_dist.mean
        z = mean + 0.05 * mean.detach().std() * torch.randn(mean.shape, generator=gen)
        reconstruction = vae.decode(z).sample
        weight = foreground_weight(x)
        error = (reconstruction - x).abs()
        loss = ((error + error**2) * weight).mean() / weight.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0:
            loss_log.add("vae", step, loss.item(), optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update(1)
        step += 1
    bar.close()
    return step


def polish_decoder(
    vae,
    images: np.ndarray,
    latents: torch.Tensor,
    steps: int | None,
    batch: int,
    gen: torch.Generator,
    loss_log,
    seconds: float = 0.0,
) -> int:
    """More training for the decoder alone, encoder frozen: the latents (and so a trained UNet) stay valid.

    A little noise on the latents teaches the decoder to forgive the small errors of sampled latents. With
    `steps` None the count is derived from `seconds`. Returns the steps taken.
    """
    decoder_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.AdamW(decoder_params, lr=1e-3, weight_decay=0.0)
    vae.train()
    total = 10**9 if steps is None else steps
    bar = tqdm(total=steps, desc="decoder", unit="step", dynamic_ncols=True)
    step, start = 0, time.time()
    while step < total:
        if steps is None and step == 20:
            total = budgeted_steps("decoder", time.time() - start, seconds, bar)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * warmup_cosine(step, total, 20, floor=0.05)
        index = torch.randint(0, len(images), (batch,), generator=gen)
        x = to_unit(images[index.numpy()])
        z = latents[index]
        z = z + 0.05 * z.std() * torch.randn(z.shape, generator=gen)
        reconstruction = vae.decode(z).sample
        weight = foreground_weight(x)
        error = (reconstruction - x).abs()
        loss = ((error + error**2) * weight).mean() / weight.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder_params, 1.0)
        optimizer.step()
        if step % 10 == 0:
            loss_log.add("decoder", step, loss.item(), optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update(1)
        step += 1
    bar.close()
    vae.eval()
    return step


def resume_denoiser(directory: Path, seed: int, steps: int, images_count: int, batch: int, threads: int) -> None:
    """More UNet + text-encoder training of a saved model, in place (fresh optimizer, warm-up and cosine).

    The autoencoder is untouched; the latents are re-encoded with the saved encoder.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.set_num_threads(threads)
    vae = AutoencoderKL.from_pretrained(directory / "vae").float().eval()
    unet = UNet2DConditionModel.from_pretrained(directory / "unet").float()
    text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder").float()
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(directory / "text_encoder_2").float()
    tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(directory / "tokenizer_2")
    log(f"rendering {images_count} images")
    images, scenes = make_dataset(images_count, seed)
    scene_list = all_scenes()
    position = {scene: i for i, scene in enumerate(scene_list)}
    scene_index = torch.tensor([position[s] for s in scenes])
    prompts = [s.prompt for s in scene_list]
    ids1 = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tokenizer_2(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    latents = encode_latents(vae, images) * float(vae.config.scaling_factor)
    gen = torch.Generator().manual_seed(seed + 104729)
    loss_log = LossLog(directory / "resume_log.tsv")
    (unet_ema, te_ema, te2_ema), done = train_denoiser(
        unet, text_encoder, text_encoder_2, latents, scene_index, ids1, ids2, steps, 0.0, batch, gen, loss_log
    )
    save_pipeline(directory, vae, te_ema, te2_ema, tokenizer, tokenizer_2, unet_ema)
    summary_path = directory / "training.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["resumed_unet_steps"] = summary.get("resumed_unet_steps", 0) + done
    summary.setdefault("resume_commands", []).append(
        f"python -m engine.toy.train --resume {directory} --seed {seed} --unet-steps {steps} "
        f"--images {images_count} --threads {threads}"
    )
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"resumed {done} unet steps -> {directory}")


def polish_saved_decoder(directory: Path, seed: int, steps: int, images_count: int, threads: int) -> None:
    """Polish the decoder of a trained model directory in place (same rendered data, same seed)."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(threads)
    vae = AutoencoderKL.from_pretrained(directory / "vae").float()
    log(f"rendering {images_count} images")
    images, _ = make_dataset(images_count, seed)
    raw_latents = encode_latents(vae, images)
    # Its own generator: the result does not depend on how many numbers the earlier stages drew.
    gen = torch.Generator().manual_seed(seed + 7919)
    loss_log = LossLog(directory / "decoder_log.tsv")
    polish_decoder(vae, images, raw_latents, steps, 16, gen, loss_log)
    vae.to(torch.float16).save_pretrained(directory / "vae", safe_serialization=True)
    scaling_factor = float(vae.config.scaling_factor)
    vae16 = vae.float()
    latent_rgb = latent_rgb_factors(vae16, raw_latents[:512] * scaling_factor, scaling_factor)
    (directory / "latent_rgb.json").write_text(json.dumps(latent_rgb, indent=2) + "\n")
    summary_path = directory / "training.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["decoder_polish_steps"] = steps
        summary["polish_command"] = (
            f"python -m engine.toy.train --polish-decoder {directory} --seed {seed} --decoder-steps {steps} "
            f"--images {images_count} --threads {threads}"
        )
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"decoder polished ({steps} steps) -> {directory / 'vae'}")


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means (unscaled) of all images: the VAE encoder is not needed again after this."""
    vae.eval()
    parts = [vae.encode(to_unit(images[i : i + batch])).latent_dist.mean for i in range(0, len(images), batch)]
    return torch.cat(parts)


def encode_prompts(text_encoder, text_encoder_2, ids1: torch.Tensor, ids2: torch.Tensor):
    """SDXL conditioning exactly as diffusers' encode_prompt builds it (no attention mask, penultimate layer)."""
    out1 = text_encoder(ids1, output_hidden_states=True)
    out2 = text_encoder_2(ids2, output_hidden_states=True)
    prompt_embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return prompt_embeds, out2.text_embeds


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadows = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.modules = modules
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for shadow, module in zip(self.shadows, self.modules, strict=True):
            for s, p in zip(shadow.parameters(), module.parameters(), strict=True):
                s.lerp_(p, 1 - decay)


def train_denoiser(
    unet,
    text_encoder,
    text_encoder_2,
    latents: torch.Tensor,
    scene_index: torch.Tensor,
    ids1: torch.Tensor,
    ids2: torch.Tensor,
    steps: int | None,
    seconds: float,
    batch: int,
    gen: torch.Generator,
    loss_log: LossLog,
    ema_decay: float = 0.999,
    snapshot=None,
    snapshot_seconds: float = 0.0,
):
    """UNet + both text encoders on the epsilon objective, VP forward process, t uniform over 0..999."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(sdxl_scheduler_config())
    alphas_cumprod = scheduler.alphas_cumprod.float()
    modules = [unet, text_encoder, text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    base_lr = 5e-4
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.01)
    ema = EMA(modules, ema_decay)
    for m in modules:
        m.train()
    size = latents.shape[-1] * 8
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
    count = len(latents)
    total = 10**9 if steps is None else steps
    warmup = 100
    bar = tqdm(total=steps, desc="unet", unit="step", dynamic_ncols=True)
    step, start, running = 0, time.time(), None
    last_snapshot = start
    while step < total:
        if snapshot is not None and snapshot_seconds > 0 and time.time() - last_snapshot > snapshot_seconds:
            snapshot(ema.shadows, step)
            last_snapshot = time.time()
        if steps is None and step == 20:
            total = budgeted_steps("unet", time.time() - start, seconds, bar)
        for group in optimizer.param_groups:
            group["lr"] = base_lr * warmup_cosine(step, total, warmup)
        index = torch.randint(0, count, (batch,), generator=gen)
        x0 = latents[index]
        scenes = scene_index[index]
        # Encode each distinct prompt of the batch once, then gather rows.
        unique, inverse = torch.unique(scenes, return_inverse=True)
        prompt_embeds, pooled = encode_prompts(text_encoder, text_encoder_2, ids1[unique], ids2[unique])
        prompt_embeds, pooled = prompt_embeds[inverse], pooled[inverse]
        keep = (torch.rand(batch, generator=gen) >= PROMPT_DROPOUT).float()
        prompt_embeds = prompt_embeds * keep[:, None, None]
        pooled = pooled * keep[:, None]
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        abar = alphas_cumprod[t][:, None, None, None]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        eps = unet(
            x_t,
            t,
            encoder_hidden_states=prompt_embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(batch, -1)},
        ).sample
        loss = F.mse_loss(eps, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0:
            loss_log.add("unet", step, loss.item(), optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{running:.4f}")
        bar.update(1)
        step += 1
    bar.close()
    return ema.shadows, step


@torch.no_grad()
def checker_accuracy_of_reconstructions(vae, images: np.ndarray, scenes: list, raw_latents: torch.Tensor) -> float:
    """Share of decoded training latents the checker finds right: the most the denoiser can reach."""
    from engine.toy.check import check

    decoded = vae.decode(raw_latents).sample.clamp(-1, 1)
    pixels = ((decoded.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return float(np.mean([check(image, scene.prompt).all for image, scene in zip(pixels, scenes, strict=True)]))


@torch.no_grad()
def latent_rgb_factors(vae, latents_model_space: torch.Tensor, scaling_factor: float) -> dict:
    """Least-squares latent-to-RGB preview factors (MATH 6) of this VAE's decoder, for latent_rgb.json."""
    from engine.preview import fit_latent_rgb

    decoded = vae.decode(latents_model_space / scaling_factor).sample.clamp(-1, 1)
    factors, bias = fit_latent_rgb(latents_model_space, decoded)
    return {"factors": factors.tolist(), "bias": bias.tolist()}


def save_pipeline(out: Path, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(sdxl_scheduler_config()),
        force_zeros_for_empty_prompt=True,
    )
    pipe = copy.deepcopy(pipe)  # the caller's float32 modules stay as they are
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)


def train(
    out: Path,
    seed: int,
    minutes: float | None,
    vae_steps: int | None,
    unet_steps: int | None,
    sizes: Sizes,
    threads: int,
    snapshot_minutes: float = 0.0,
    decoder_steps: int | None = None,
    size_name: str = "full",
) -> dict:
    """The whole recipe; returns the summary written to `out/training.json`.

    A step count of None is derived from the `minutes` budget: a fifth for the autoencoder, a tenth for the
    decoder polish, the rest for the denoiser.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    budget = (minutes or 0) * 60
    loss_log = LossLog(out / "training_log.tsv")

    log(f"rendering {sizes.images} images")
    images, scenes = make_dataset(sizes.images, seed)
    scene_list = all_scenes()
    position = {scene: i for i, scene in enumerate(scene_list)}
    scene_index = torch.tensor([position[s] for s in scenes])

    tokenizer, tokenizer_2 = build_tokenizers()
    prompts = [s.prompt for s in scene_list]
    ids1 = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tokenizer_2(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    vocab = tokenizer.get_vocab()
    vae, text_encoder, text_encoder_2, unet = build_models(sizes, len(vocab), vocab[BOS], vocab[EOS])
    counts = {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (
            ("vae", vae),
            ("text_encoder", text_encoder),
            ("text_encoder_2", text_encoder_2),
            ("unet", unet),
        )
    }
    log(f"parameters: {counts}")

    gen = torch.Generator().manual_seed(seed)
    vae_start = time.time()
    # The autoencoder's sharpness bounds what the denoiser can show: a fifth of the budget, then the polish.
    vae_done = train_vae(vae, images, vae_steps, 0.2 * budget, sizes.vae_batch, gen, loss_log)
    raw_latents = encode_latents(vae, images)
    # The decoder alone, encoder frozen, on the final latents; its own generator, so the polish does not depend
    # on how many numbers the autoencoder stage drew.
    decoder_gen = torch.Generator().manual_seed(seed + 7919)
    decoder_done = polish_decoder(
        vae, images, raw_latents, decoder_steps, sizes.vae_batch, decoder_gen, loss_log, seconds=0.1 * budget
    )
    vae_seconds = time.time() - vae_start
    scaling_factor = float(1.0 / raw_latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    latents = raw_latents * scaling_factor
    reconstruction_accuracy = checker_accuracy_of_reconstructions(vae, images[:200], scenes[:200], raw_latents[:200])
    log(f"checker on 200 reconstructions: {100 * reconstruction_accuracy:.1f} % all right (the ceiling)")
    log(
        f"vae done in {vae_seconds / 60:.1f} min; latent std {raw_latents.std():.4f} -> scaling_factor {scaling_factor:.4f}"
    )

    # Preview factors for the float16 VAE the loader will see.
    vae16 = copy.deepcopy(vae).to(torch.float16).float()
    latent_rgb = latent_rgb_factors(vae16, latents[:512], scaling_factor)

    def write(modules, unet_steps_done: int, partial: bool) -> dict:
        unet_ema, te_ema, te2_ema = modules
        save_pipeline(out, vae, te_ema, te2_ema, tokenizer, tokenizer_2, unet_ema)
        (out / "latent_rgb.json").write_text(json.dumps(latent_rgb, indent=2) + "\n")
        summary = {
            "partial": partial,
            "seed": seed,
            "sizes": asdict(sizes),
            "parameters": counts,
            "vae_steps": vae_done,
            "decoder_steps": decoder_done,
            "unet_steps": unet_steps_done,
            "vae_minutes": round(vae_seconds / 60, 2),  # autoencoder and decoder polish
            "unet_minutes": round((time.time() - unet_start) / 60, 2),
            "total_minutes": round((time.time() - began) / 60, 2),
            "threads": threads,
            "scaling_factor": scaling_factor,
            "reconstruction_checker_accuracy": reconstruction_accuracy,
            # Every count spelled out: the same weights, bit for bit, on the same torch and thread count.
            "command": f"python -m engine.toy.train --out {out.name} --seed {seed} --size {size_name} "
            f"--vae-steps {vae_done} --decoder-steps {decoder_done} --unet-steps {unet_steps_done} "
            f"--images {sizes.images} --threads {threads}",
            "torch": torch.__version__,
        }
        (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def snapshot(modules, unet_steps_done: int) -> None:
        # A loadable model while training goes on (teammates, and insurance against a cut-short run).
        write(modules, unet_steps_done, partial=True)
        log(f"snapshot after {unet_steps_done} unet steps -> {out}")

    unet_start = time.time()
    remaining = max(60.0, budget - (unet_start - began) - 60)
    (unet_ema, te_ema, te2_ema), unet_done = train_denoiser(
        unet, text_encoder, text_encoder_2, latents, scene_index, ids1, ids2, unet_steps, remaining,
        sizes.unet_batch, gen, loss_log, snapshot=snapshot, snapshot_seconds=60 * snapshot_minutes,
    )  # fmt: skip
    summary = write((unet_ema, te_ema, te2_ema), unet_done, partial=False)
    log(f"done in {summary['total_minutes']} min -> {out}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.toy.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="directory to write the model to")
    parser.add_argument("--polish-decoder", type=Path, default=None, help="train only the decoder of a model dir")
    parser.add_argument(
        "--decoder-steps",
        type=int,
        default=None,
        help="decoder polish steps (the recipe's, or 600 for --polish-decoder)",
    )
    parser.add_argument("--resume", type=Path, default=None, help="train the UNet of a model dir --unet-steps more")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--minutes", type=float, default=None, help="total time budget: step counts not given are derived from speed"
    )
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--images", type=int, default=None, help="rendered training images (default per size)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    # One thread: on a shared, oversubscribed machine two spinning OpenMP threads ran 3 to 10x slower.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--snapshot-minutes", type=float, default=0.0, help="save a loadable model this often")
    args = parser.parse_args(argv)
    sizes = SIZES[args.size]
    if args.images is not None:
        if args.images < 1:
            parser.error("--images must be at least 1")
        sizes = Sizes(**{**asdict(sizes), "images": args.images})
    if args.polish_decoder is not None:
        if not (args.polish_decoder / "vae" / "config.json").exists():
            parser.error(f"{args.polish_decoder}: no vae/config.json there (not a trained model directory)")
        steps = 600 if args.decoder_steps is None else args.decoder_steps
        polish_saved_decoder(args.polish_decoder, args.seed, steps, sizes.images, args.threads)
        return 0
    if args.resume is not None:
        if not (args.resume / "unet" / "config.json").exists() or args.unet_steps is None:
            parser.error("--resume needs a trained model directory and --unet-steps")
        resume_denoiser(args.resume, args.seed, args.unet_steps, sizes.images, sizes.unet_batch, args.threads)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    for name in ("vae_steps", "decoder_steps", "unet_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be at least 0")

    def steps(name: str) -> int | None:
        given = getattr(args, name)
        if given is not None:
            return given
        return None if args.minutes is not None else getattr(sizes, name)

    train(
        args.out, args.seed, args.minutes, steps("vae_steps"), steps("unet_steps"), sizes, args.threads,
        args.snapshot_minutes, decoder_steps=steps("decoder_steps"), size_name=args.size,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
