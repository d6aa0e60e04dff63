"""Our SDXL decoder equals diffusers' AutoencoderKL.decode (MATH.md 6: 1e-4 max abs, float32)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from engine.decoder import SDXLDecoder, load_sdxl_decoder

SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=0.13025,
    force_upcast=True,
)


def reference_decode(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(latent / vae.config.scaling_factor).sample


def test_decoder_equals_autoencoderkl_on_the_fixture_vae(tiny_sdxl_dir):
    vae = AutoencoderKL.from_pretrained(tiny_sdxl_dir / "vae", local_files_only=True).eval()
    ours = load_sdxl_decoder(tiny_sdxl_dir / "vae")
    latent = 3.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = reference_decode(vae, latent)
    decoded = ours.decode(latent)
    assert decoded.shape == (2, 3, 64, 64)
    assert decoded.dtype == torch.float32
    assert reference.abs().max() > 0.5  # a non-trivial picture, not a near-zero output
    assert (decoded - reference).abs().max().item() <= 1e-4


def test_decoder_equals_autoencoderkl_at_sdxl_size():
    torch.manual_seed(1)
    vae = AutoencoderKL(**SDXL_VAE).eval()
    ours = SDXLDecoder(dict(vae.config))
    ours.load_decoder_state(vae.state_dict())
    ours.eval()
    # SDXL's widths and depth: conv_in 4 -> 512, four up blocks of three resnets, three 2x upsamplings.
    assert ours.decoder.conv_in.weight.shape == (512, 4, 3, 3)
    assert [len(b.resnets) for b in ours.decoder.up_blocks] == [3, 3, 3, 3]
    assert ours.scale_factor == 8
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    reference = reference_decode(vae, latent)
    assert (ours.decode(latent) - reference).abs().max().item() <= 1e-4


def test_decoder_loads_only_decoder_keys_and_upcasts_fp16(tiny_sdxl_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text((tiny_sdxl_dir / "vae" / "config.json").read_text())
    state = load_file(tiny_sdxl_dir / "vae" / "diffusion_pytorch_model.safetensors")
    # Drop the encoder entirely: the decoder must not need it. Store half precision, as fp16 variants do.
    kept = {k: v.half() for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
    save_file(kept, vae_dir / "diffusion_pytorch_model.safetensors")
    ours = load_sdxl_decoder(vae_dir)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    full = load_sdxl_decoder(tiny_sdxl_dir / "vae")
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    difference = (ours.decode(latent) - full.decode(latent)).abs().max().item()
    assert 0 < difference < 0.05  # the fp16 rounding of the weights, nothing more


def test_decoder_refuses_weights_of_another_layout(tiny_sdxl_dir):
    config = json.loads((tiny_sdxl_dir / "vae" / "config.json").read_text())
    from safetensors.torch import load_file

    state = load_file(tiny_sdxl_dir / "vae" / "diffusion_pytorch_model.safetensors")
    wider = dict(config, block_out_channels=[12, 16, 16, 16])  # same keys, other shapes
    with pytest.raises(ValueError, match=r"do not fit the config: decoder\.\S+ is \(8,.*\), expected \(12,"):
        SDXLDecoder(wider).load_decoder_state(state)
    deeper = dict(config, layers_per_block=3)  # keys the file does not have
    with pytest.raises(ValueError, match=r"do not fit the config: missing \['decoder\.up_blocks"):
        SDXLDecoder(deeper).load_decoder_state(state)
