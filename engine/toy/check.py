"""The checker: does an image show what its toy prompt asks for?

Classical image analysis, no learning: the background is the dominant colour of the border, the shape is
the set of pixels far from it, its colour is the nearest named colour of their median, and its kind comes
from two invariants of rotation, position and size: how much of its circumscribed circle it fills
(1 for a circle, 2/pi for a square, 0.41 for a triangle) separates circles, and the polar second moment over
the squared area (1/(2 pi) = 0.159 circle, 1/6 = 0.167 square, sqrt(3)/9 = 0.192 triangle) separates
triangles from squares, where the corners lost to anti-aliasing blur the fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.toy.data import COLOURS, parse_prompt

_NAMES = list(COLOURS)
_PALETTE = np.asarray([COLOURS[name] for name in _NAMES], dtype=np.float32)
# A pixel belongs to the shape when it is this far (RGB Euclidean) from the background: half the smallest
# distance between two named colours (red/orange, ~103) minus room for jitter and noise.
_FOREGROUND_DISTANCE = 48.0
# Fewer shape pixels than this (the smallest rendered shape has ~170) means there is no shape.
_MIN_SHAPE_PIXELS = 40
# Fill of the circumscribed circle: circle 1.0 (0.89 to 0.95 rendered), square 0.64 (0.64 to 0.73).
_CIRCLE_ABOVE = 0.80
# Polar moment / area^2: square 0.163 to 0.168 rendered, triangle 0.183 to 0.193.
_TRIANGLE_ABOVE = 0.175


@dataclass(frozen=True)
class CheckResult:
    """Which parts of the prompt the image got right, and what the checker saw."""

    shape_colour: bool
    background: bool
    shape: bool
    seen_colour: str | None
    seen_background: str
    seen_shape: str | None
    fill: float

    @property
    def all(self) -> bool:
        return self.shape_colour and self.background and self.shape


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour closest to `rgb` (Euclidean in RGB)."""
    distances = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float32)[None, :], axis=1)
    return _NAMES[int(np.argmin(distances))]


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got an array of shape {array.shape}")
    return array


def _majority_3x3(mask: np.ndarray) -> np.ndarray:
    """Each pixel takes the majority of its 3x3 neighbourhood: removes speckle, keeps shapes."""
    padded = np.pad(mask.astype(np.int16), 1, mode="edge")
    height, width = mask.shape
    votes = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return votes >= 5


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    height, width = mask.shape
    result = mask.copy()
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        result &= padded[dy : dy + height, dx : dx + width]
    return result


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Shape kind of a boolean mask and its fill of the circumscribed circle around the centroid."""
    ys, xs = np.nonzero(mask)
    squared_distance = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
    area = len(ys)
    # +0.5: a pixel's centre is half a pixel inside the true outline.
    radius = float(np.sqrt(squared_distance.max())) + 0.5
    fill = float(area / (math.pi * radius**2))
    if fill > _CIRCLE_ABOVE:
        return "circle", fill
    polar_moment = float(squared_distance.sum() / area**2)
    return ("triangle" if polar_moment > _TRIANGLE_ABOVE else "square"), fill


def analyse(image: Image.Image | np.ndarray) -> tuple[str, str | None, str | None, float]:
    """(background, shape colour, shape kind, fill) as seen in the image; None where there is no shape."""
    pixels = _as_rgb_array(image)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)])
    border = np.concatenate([border, pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    distance = np.linalg.norm(pixels - background_rgb[None, None, :], axis=2)
    mask = _majority_3x3(distance > _FOREGROUND_DISTANCE)
    if int(mask.sum()) < _MIN_SHAPE_PIXELS:
        return background, None, None, 0.0
    # The colour from the interior: anti-aliased edge pixels are mixtures of the two colours.
    interior = _erode(mask)
    colour_pixels = pixels[interior] if interior.sum() >= 10 else pixels[mask]
    colour = nearest_colour(np.median(colour_pixels, axis=0))
    shape, fill = classify_shape(mask)
    return background, colour, shape, fill


def check(image: Image.Image | np.ndarray, prompt: str) -> CheckResult:
    """Whether `image` shows `prompt` (`a {colour} {shape} on a {background} background`)."""
    scene = parse_prompt(prompt)
    background, colour, shape, fill = analyse(image)
    return CheckResult(
        shape_colour=colour == scene.colour,
        background=background == scene.background,
        shape=shape == scene.shape,
        seen_colour=colour,
        seen_background=background,
        seen_shape=shape,
        fill=fill,
    )
