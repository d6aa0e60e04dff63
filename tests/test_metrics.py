"""engine.metrics against values worked out by hand on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.metrics import (
    MetricsError,
    clip_available,
    clip_score,
    colourfulness,
    contrast,
    dynamic_range,
    image_metrics,
    saturation,
)


def px(*rows: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# Red, green / blue, white: a 2 x 2 image whose every metric is easy to do on paper.
RGBW = px([(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255)])


def test_grey_image_has_no_colour_contrast_or_range() -> None:
    grey = np.full((4, 5, 3), 128, dtype=np.uint8)
    assert image_metrics(grey) == {"colourfulness": 0.0, "contrast": 0.0, "saturation": 0.0, "dynamic_range": 0.0}


def test_colourfulness_of_one_red_pixel_is_the_mean_term_only() -> None:
    # rg = 255, yb = 127.5, no spread: M = 0.3 * sqrt(255^2 + 127.5^2) = 0.3 * 285.0987 = 85.5296
    assert colourfulness(px([(255, 0, 0)])) == pytest.approx(85.52960, abs=1e-4)


def test_colourfulness_of_red_green_blue_white() -> None:
    # rg: 255, -255, 0, 0 -> mean 0, var 32512.5; yb: 127.5, 127.5, -255, 0 -> mean 0, var 24384.375
    # M = sqrt(32512.5 + 24384.375) = 238.5307
    assert colourfulness(RGBW) == pytest.approx(238.53066, abs=1e-4)


def test_contrast_is_rec709_luminance_std() -> None:
    # luminances 0.2126, 0.7152, 0.0722, 1.0; mean 0.5; squared deviations
    # 0.08260, 0.04631, 0.18301, 0.25 -> var 0.140480, std 0.374807
    assert contrast(RGBW) == pytest.approx(0.374807, abs=1e-5)
    # black next to white: luminance 0 and 1, std 0.5 (the largest possible)
    assert contrast(px([(0, 0, 0), (255, 255, 255)])) == pytest.approx(0.5)


def test_saturation_is_mean_hsv_s_with_black_as_zero() -> None:
    assert saturation(RGBW) == pytest.approx(0.75)  # three primaries at 1, white at 0
    # (200, 100, 50): (200 - 50) / 200 = 0.75; black: 0 (not a division by zero)
    assert saturation(px([(200, 100, 50), (0, 0, 0)])) == pytest.approx(0.375)


def test_dynamic_range_uses_linearly_interpolated_percentiles() -> None:
    # sorted luminances 0.0722, 0.2126, 0.7152, 1.0; the 1st percentile sits at index 0.03:
    # 0.0722 + 0.03 * 0.1404 = 0.076412; the 99th at index 2.97: 0.7152 + 0.97 * 0.2848 = 0.991456
    assert dynamic_range(RGBW) == pytest.approx(0.915044, abs=1e-6)


def test_dynamic_range_ignores_a_lone_extreme_pixel() -> None:
    img = np.full((20, 20, 3), 100, dtype=np.uint8)
    img[0, 0] = 255  # 1 pixel of 400 lies beyond the 99th percentile
    assert dynamic_range(img) == pytest.approx(0.0)


def test_image_metrics_accepts_pil_images() -> None:
    from PIL import Image

    metrics = image_metrics(Image.fromarray(RGBW))
    assert metrics["saturation"] == pytest.approx(0.75)
    assert math.isclose(metrics["colourfulness"], 238.53066, abs_tol=1e-4)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4), dtype=np.uint8), "shape"),
        (np.zeros((4, 4, 4), dtype=np.uint8), "shape"),
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        ("not an image", "numpy array or PIL image"),
    ],
)
def test_bad_images_give_a_clear_error(bad: object, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        image_metrics(bad)


def test_clip_score_is_not_available_without_a_local_model(tmp_path) -> None:
    assert clip_available(None) is False
    assert clip_available(tmp_path) is False  # an empty directory is not a model
    assert clip_score(RGBW, "a red square", None) is None
    assert clip_score(RGBW, "a red square", tmp_path) is None


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def build_tiny_clip(path):
    """A tiny random CLIP model with its processor, saved like a downloaded one (built offline)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from engine.models.tiny import train_clip_bpe

    vocab, merges = train_clip_bpe()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    config = CLIPConfig(
        text_config={**text, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id},
        vision_config={**vision, "patch_size": 8},
        projection_dim=8,
    )
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    crop = {"height": 32, "width": 32}
    CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop), tokenizer).save_pretrained(path)
    return path


def test_clip_score_is_100_times_the_clamped_cosine(tiny_clip_dir) -> None:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from engine.metrics import ClipScorer

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[16:48, 16:48, 0] = 255
    scorer = ClipScorer(tiny_clip_dir)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    for prompt in ("a red square", "a blue circle on a black background"):
        inputs = processor(text=[prompt], images=[Image.fromarray(image)], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        assert scorer.score(image, prompt) == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    assert clip_available(tiny_clip_dir)
    assert clip_score(image, "a red square", tiny_clip_dir) == pytest.approx(scorer.score(image, "a red square"))
