"""The lab's own VAE decoder (SDXL's and SD 1.5/2.x's: the same block structure, scaling 0.13025 or
0.18215 from the VAE's config): a compact torch module, no diffusers import (MATH.md 6).

    image = decoder(post_quant_conv(latent / scaling_factor))      in float32, always

The module mirrors the parameter names of diffusers' `AutoencoderKL` (`decoder.*`, `post_quant_conv.*`), so
the decoder half of a `vae/diffusion_pytorch_model.safetensors` loads as is and the encoder half is never read.
Layout (SDXL: block_out_channels [128, 256, 512, 512], layers_per_block 2):

    conv_in (latent -> widest) -> mid block (resnet, single-head self-attention, resnet)
    -> up blocks, widest first, each `layers_per_block + 1` resnets, all but the last followed by nearest 2x
       upsampling and a 3x3 conv -> GroupNorm -> SiLU -> conv_out (narrowest -> RGB)

Every GroupNorm uses the config's `norm_num_groups` and eps 1e-6.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus the (1x1-projected when widths differ) input."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # A list, as in diffusers (`to_out.0` is the projection, `to_out.1` a dropout without weights).
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.group_norm(x).view(n, c, h * w).transpose(1, 2)  # [N, HW, C]
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))
        out = self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)
        return x + out


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool = True) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: list[int],
        layers_per_block: int,
        groups: int,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        widest_first = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, widest_first[0], 3, padding=1)
        self.mid_block = MidBlock(widest_first[0], groups, mid_attention)
        self.up_blocks = nn.ModuleList()
        prev = widest_first[0]
        for i, width in enumerate(widest_first):
            last = i == len(widest_first) - 1
            self.up_blocks.append(UpBlock(prev, width, layers_per_block + 1, groups, upsample=not last))
            prev = width
        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class SDXLDecoder(nn.Module):
    """`decode(latent)`: latent in model space (as the sampler returns it) -> image in [-1, 1], float32."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        unsupported = [b for b in config.get("up_block_types", []) if b != "UpDecoderBlock2D"]
        if unsupported or config.get("norm_type", "group") != "group":
            raise ValueError(f"unsupported VAE decoder layout: up blocks {unsupported}, norm {config.get('norm_type')}")
        latent_channels = int(config.get("latent_channels", 4))
        self.scaling_factor = float(config.get("scaling_factor", 0.18215))
        shift = config.get("shift_factor")
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.decoder = Decoder(
            latent_channels=latent_channels,
            out_channels=int(config.get("out_channels", 3)),
            block_out_channels=[int(c) for c in config["block_out_channels"]],
            layers_per_block=int(config.get("layers_per_block", 2)),
            groups=int(config.get("norm_num_groups", 32)),
            mid_attention=bool(config.get("mid_block_add_attention", True)),
        )
        self.post_quant_conv = (
            nn.Conv2d(latent_channels, latent_channels, 1) if config.get("use_post_quant_conv", True) else None
        )
        self.scale_factor = 2 ** (len(config["block_out_channels"]) - 1)

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        device = self.decoder.conv_in.weight.device
        z = latent.to(device=device, dtype=torch.float32) / self.scaling_factor + self.shift_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    forward = decode

    def load_decoder_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load the `decoder.*` and `post_quant_conv.*` entries of a diffusers AutoencoderKL state dict."""
        wanted = {k: v.float() for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
        # Older checkpoints name the attention projections query/key/value/proj_attn.
        renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
        fixed = {}
        for k, v in wanted.items():
            for old, new in renames.items():
                k = k.replace(old, new)
            fixed[k] = v
        own = self.state_dict()
        missing = sorted(set(own) - set(fixed))
        unexpected = sorted(set(fixed) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"VAE decoder weights do not fit the config: missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        for k, v in fixed.items():
            if v.shape == own[k].shape:
                continue
            if v.numel() == own[k].numel():
                # Attention projections stored as 1x1 convs (original layout) become linear weights.
                fixed[k] = v.reshape(own[k].shape)
            else:
                raise ValueError(
                    f"VAE decoder weights do not fit the config: {k} is {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
        self.load_state_dict(fixed, strict=True)


def load_sdxl_decoder(vae_dir: str | Path, device: torch.device | str = "cpu") -> SDXLDecoder:
    """Build the decoder from `vae_dir/config.json` and load only its keys from the safetensors weights."""
    from safetensors import safe_open

    vae_dir = Path(vae_dir)
    config = json.loads((vae_dir / "config.json").read_text())
    weights = _vae_weights_file(vae_dir)
    decoder = SDXLDecoder(config)
    state = {}
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if key.startswith(("decoder.", "post_quant_conv.")):
                state[key] = f.get_tensor(key)
    decoder.load_decoder_state(state)
    return decoder.to(device).eval()


def _vae_weights_file(vae_dir: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (vae_dir / name).is_file():
            return vae_dir / name
    raise FileNotFoundError(f"{vae_dir}: no diffusion_pytorch_model.safetensors")


# The same decoder serves every family here (SD 1.5/2.x's VAE has SDXL's block structure); the neutral name.
VAEDecoder = SDXLDecoder
