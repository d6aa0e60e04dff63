"""Image metrics of a finished run: how colourful, contrasty and saturated an image is.

numpy only (no torch): the history, the sweep CSV and the study call these on every image, and the TUI may
show them without loading the engine's heavy libraries. Definitions, fixed so numbers compare across runs:

- colourfulness: Hasler and Suesstrunk (2003), "Measuring colourfulness in natural images", on 8-bit values
  (0..255, the paper's scale: about 0 grey, 15 slightly, 33 moderately, 59 quite, 82 highly colourful).
  rg = R - G, yb = (R + G) / 2 - B, M = sqrt(std_rg^2 + std_yb^2) + 0.3 * sqrt(mean_rg^2 + mean_yb^2),
  with population standard deviations (ddof 0) over all pixels.
- luminance: Rec. 709 luma of the gamma-encoded values scaled to 0..1, Y' = 0.2126 R' + 0.7152 G' + 0.0722 B'
  (no linearisation: the metrics describe the picture as displayed, like the washed-out look they measure).
- contrast: the population standard deviation of that luminance (RMS contrast, 0..0.5).
- saturation: the mean over pixels of HSV saturation S = (max - min) / max of R, G, B (0 where max is 0), 0..1.
- dynamic_range: the 99th minus the 1st percentile of the luminance (numpy's linear interpolation), 0..1.

`clip_score` is optional: it uses a CLIP model only from a local directory and never downloads one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("colourfulness", "contrast", "saturation", "dynamic_range")

# Rec. 709 luma coefficients (R, G, B).
REC709_LUMA = np.array([0.2126, 0.7152, 0.0722])


class MetricsError(ValueError):
    """The image cannot be measured (wrong shape or type); the message is meant for the user."""


def as_rgb_array(image: Any) -> np.ndarray:
    """An H x W x 3 uint8 array from a numpy array or a PIL image (converted to RGB)."""
    if not isinstance(image, np.ndarray):
        if hasattr(image, "convert"):  # a PIL image; PIL is not imported here to keep this module light
            image = np.asarray(image.convert("RGB"))
        else:
            raise MetricsError(f"expected an RGB image (numpy array or PIL image), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise MetricsError(f"expected an RGB image of shape (height, width, 3), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise MetricsError("the image is empty")
    if image.dtype != np.uint8:
        raise MetricsError(f"expected 8-bit RGB values (uint8), got {image.dtype}")
    return image


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness M on 0..255 values."""
    x = as_rgb_array(rgb).astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = np.sqrt(rg.std() ** 2 + yb.std() ** 2)
    centre = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * centre)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of gamma-encoded values, 0..1, shape H x W."""
    x = as_rgb_array(rgb).astype(np.float64) / 255.0
    return x @ REC709_LUMA


def contrast(rgb: np.ndarray) -> float:
    """RMS contrast: population standard deviation of the Rec. 709 luminance (0..1 scale)."""
    return float(luminance(rgb).std())


def saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation (max - min) / max over pixels; black pixels count as 0."""
    x = as_rgb_array(rgb).astype(np.float64)
    top = x.max(axis=2)
    bottom = x.min(axis=2)
    s = np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)
    return float(s.mean())


def dynamic_range(rgb: np.ndarray) -> float:
    """Spread of the luminance between its 1st and 99th percentiles (0..1); robust to a few extreme pixels."""
    low, high = np.percentile(luminance(rgb), [1.0, 99.0])
    return float(high - low)


def image_metrics(rgb_uint8: Any) -> dict[str, float]:
    """All metrics of one image (numpy H x W x 3 uint8, or a PIL image), keyed by METRIC_NAMES."""
    rgb = as_rgb_array(rgb_uint8)
    return {
        "colourfulness": colourfulness(rgb),
        "contrast": contrast(rgb),
        "saturation": saturation(rgb),
        "dynamic_range": dynamic_range(rgb),
    }


# ---- CLIP score (optional, local model only) -------------------------------------------------------------


def clip_available(model_dir: str | Path | None) -> bool:
    """Whether `model_dir` looks like a local CLIP model directory (a config plus weights)."""
    if model_dir is None:
        return False
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


class ClipScorer:
    """CLIP score 100 * max(cos(image, text), 0) (Hessel et al. 2021's scale without the 2.5 weight), from a
    local directory only. Load once, score many images; torch and transformers load here, not at import."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        if not clip_available(model_dir):
            raise MetricsError(
                f"no CLIP model in {model_dir} (needs config.json and weights); CLIP score not available"
            )
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self._torch = torch
        self.model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)
        self.device = device

    def score(self, image: Any, prompt: str) -> float:
        from PIL import Image

        rgb = as_rgb_array(image)
        inputs = self.processor(
            text=[prompt], images=[Image.fromarray(rgb)], return_tensors="pt", padding=True, truncation=True
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self._torch.no_grad():
            out = self.model(**inputs)
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        cos = float((img * txt).sum())
        return 100.0 * max(cos, 0.0)


def clip_score(image: Any, prompt: str, model_dir: str | Path | None) -> float | None:
    """CLIP score of one image, or None where no local CLIP model is given (never downloads one).

    For many images, build one `ClipScorer` instead: this loads the model on every call."""
    if not clip_available(model_dir):
        return None
    assert model_dir is not None
    return ClipScorer(model_dir).score(image, prompt)
