"""Previews and the final image's rounding (MATH.md section 6).

Cheap preview: rgb = D @ F + b per latent pixel (D the denoised estimate in model space, F [C, 3], b [3]), then
(rgb + 1) / 2 to 0..255. SDXL's and SD 1.5's factors are public (ComfyUI's `latent_formats.SDXL` and
`latent_formats.SD15`; SD 2.x has SD 1.5's VAE, so its factors too); any other model's are fitted by least
squares on its decoder's outputs (`fit_latent_rgb`) and stored beside it (`latent_rgb.json`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F_nn
from PIL import Image

# Rows: latent channels; columns: R, G, B (PITFALLS.md, "SDXL base configuration").
SDXL_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    dtype=torch.float32,
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011], dtype=torch.float32)
# SD 1.x / 2.x (ComfyUI's latent_formats.SD15, which has no bias).
SD15_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    dtype=torch.float32,
)
SD15_LATENT_RGB_BIAS = torch.zeros(3, dtype=torch.float32)


def public_latent_rgb(family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The public factors (F [4, 3], b [3]) of a family's VAE: "sdxl", or "sd1"/"sd2" (the same VAE)."""
    if family == "sdxl":
        return SDXL_LATENT_RGB_FACTORS.clone(), SDXL_LATENT_RGB_BIAS.clone()
    if family in ("sd1", "sd2"):
        return SD15_LATENT_RGB_FACTORS.clone(), SD15_LATENT_RGB_BIAS.clone()
    raise ValueError(f"no public latent-to-RGB factors for family {family!r}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> clamp(image * 127.5 + 127.5, 0, 255) rounded to uint8 (as diffusers' image processor)."""
    return (image.float() * 127.5 + 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()


def decoded_to_image(decoded: torch.Tensor) -> Image.Image:
    """The first image of a decoder output [N, 3, H, W] in [-1, 1] as an RGB PIL image (MATH.md 6)."""
    return Image.fromarray(to_uint8(decoded[0].permute(1, 2, 0)))


def latent_to_rgb(denoised: torch.Tensor, F: torch.Tensor, b: torch.Tensor) -> Image.Image:
    """The cheap preview of a latent [C, h, w] or [1, C, h, w]: one RGB pixel per latent pixel."""
    latent = denoised[0] if denoised.ndim == 4 else denoised
    rgb = torch.einsum("chw,cr->hwr", latent.float().cpu(), F.float().cpu()) + b.float().cpu()
    return Image.fromarray(to_uint8(rgb))


def fit_latent_rgb(latents: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares factors (F [C, 3], b [3]) with images ~= latents @ F + b per latent pixel.

    `latents` [N, C, h, w] in model space; `images` [N, 3, H, W] in [-1, 1], the decoder's outputs for them,
    average-pooled to the latent's size so that each latent pixel meets the colour of the patch it decodes to.
    """
    n, c, h, w = latents.shape
    targets = F_nn.adaptive_avg_pool2d(images.double(), (h, w))
    X = latents.double().permute(0, 2, 3, 1).reshape(-1, c)
    Y = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, Y).solution
    return solution[:c].float(), solution[c].float()
