"""Our decoder on the SD 1.5/2.x VAE (scaling 0.18215) equals AutoencoderKL.decode, from a directory and from a
single file; the SD families' previews use SD 1.5's public factors, and the least-squares fit works for them."""

from __future__ import annotations

import pytest
import torch

from engine.models import load_bundle


@pytest.mark.parametrize("which", ["tiny_sd15_dir", "tiny_sd2v_dir"])
def test_decoder_equals_autoencoderkl_for_the_sd_vae(which, request, tmp_path):
    import shutil

    from diffusers import AutoencoderKL

    from engine.models.tiny import write_single_file

    model_dir = request.getfixturevalue(which)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", local_files_only=True)
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    latent = 2.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = vae.decode(latent / vae.config.scaling_factor).sample
    assert reference.abs().max() > 0.1
    bundle = load_bundle(str(model_dir))
    assert (bundle.decode(latent) - reference).abs().max() <= 1e-4
    checkpoint = write_single_file(model_dir, tmp_path / "m.safetensors")  # VAE as first_stage_model.* (1x1 convs)
    shutil.copytree(model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    assert (load_bundle(str(checkpoint)).decode(latent) - reference).abs().max() <= 1e-4


def test_decoder_equals_autoencoderkl_at_sd_size():
    """SD 1.5's VAE shape (block_out_channels 128..512, 32 groups, scaling 0.18215), random weights."""
    from diffusers import AutoencoderKL

    from engine.decoder import VAEDecoder

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        scaling_factor=0.18215,
    ).eval()
    ours = VAEDecoder(dict(vae.config))
    ours.load_decoder_state(vae.state_dict())
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = vae.decode(latent / 0.18215).sample
    assert (ours.decode(latent) - reference).abs().max() <= 1e-4


def test_sd_previews_use_sd15_factors_and_the_fit_recovers_the_decoder_colours(tiny_sd15_dir):
    from engine.preview import SD15_LATENT_RGB_FACTORS, fit_latent_rgb, latent_to_rgb, public_latent_rgb

    bundle = load_bundle(str(tiny_sd15_dir))
    factors, bias = bundle.latent_rgb
    assert torch.equal(factors, SD15_LATENT_RGB_FACTORS) and torch.equal(bias, torch.zeros(3))
    assert torch.equal(public_latent_rgb("sd2")[0], SD15_LATENT_RGB_FACTORS)
    with pytest.raises(ValueError, match="no public latent-to-RGB factors"):
        public_latent_rgb("flux")
    latents = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    images = bundle.decode(latents)
    F, b = fit_latent_rgb(latents, images)
    pooled = torch.nn.functional.adaptive_avg_pool2d(images, (8, 8))
    fitted = torch.einsum("nchw,cr->nrhw", latents, F) + b[None, :, None, None]
    # the fit is the least-squares optimum: better than the public factors on this (random) VAE
    public = torch.einsum("nchw,cr->nrhw", latents, factors)
    assert (fitted - pooled).pow(2).mean() < (public - pooled).pow(2).mean()
    assert latent_to_rgb(latents[0], F, b).size == (8, 8)
