"""Latent-to-RGB previews and the final image's rounding (MATH.md 6)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.preview import (
    SDXL_LATENT_RGB_BIAS,
    SDXL_LATENT_RGB_FACTORS,
    decoded_to_image,
    fit_latent_rgb,
    latent_to_rgb,
)


def test_sdxl_factors_are_the_public_ones() -> None:
    assert SDXL_LATENT_RGB_FACTORS.shape == (4, 3)
    assert SDXL_LATENT_RGB_FACTORS[0].tolist() == torch.tensor([0.3651, 0.4232, 0.4341]).tolist()
    assert SDXL_LATENT_RGB_FACTORS[3, 2].item() == torch.tensor(-0.2188).item()
    assert SDXL_LATENT_RGB_BIAS.tolist() == torch.tensor([0.1084, -0.0175, -0.0011]).tolist()


def test_latent_to_rgb_applies_factors_per_pixel() -> None:
    latent = torch.zeros(1, 4, 2, 3)
    latent[0, 0, 1, 2] = 1.0  # one pixel of channel 0
    image = np.asarray(latent_to_rgb(latent, SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS))
    assert image.shape == (2, 3, 3)
    rgb = (SDXL_LATENT_RGB_FACTORS[0] + SDXL_LATENT_RGB_BIAS) * 127.5 + 127.5
    assert image[1, 2].tolist() == rgb.round().to(torch.uint8).tolist()
    assert image[0, 0].tolist() == (SDXL_LATENT_RGB_BIAS * 127.5 + 127.5).round().to(torch.uint8).tolist()


def test_final_image_rounding() -> None:
    decoded = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    pixels = np.asarray(decoded_to_image(decoded))[0, :, 0]
    # clamp(x * 127.5 + 127.5, 0, 255), rounded half to even as numpy (diffusers) does: 127.5 -> 128.
    assert pixels.tolist() == [0, 0, 128, 191, 255, 255]


def test_fit_recovers_known_factors_from_decoder_like_data() -> None:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=g)
    true_F = torch.randn(4, 3, generator=g) * 0.3
    true_b = torch.tensor([0.1, -0.2, 0.05])
    rgb = torch.einsum("nchw,cr->nrhw", latents, true_F) + true_b[None, :, None, None]
    images = F.interpolate(rgb, scale_factor=8, mode="nearest")  # a "decoder" that paints 8x8 patches
    fitted_F, fitted_b = fit_latent_rgb(latents, images)
    torch.testing.assert_close(fitted_F, true_F, rtol=0, atol=1e-5)
    torch.testing.assert_close(fitted_b, true_b, rtol=0, atol=1e-5)
