"""The toy world: one shape on a plain background, and the prompt grammar that describes it.

Prompts follow `a {colour} {shape} on a {background} background` with colour != background. The renderer
adds mild variation (size, position, small rotation, colour jitter, a little noise) so the model has
something to learn beyond a lookup table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
IMAGE_SIZE = 64
# Rendering at 4x and downsampling gives anti-aliased edges like a real photo's, cheaply.
_SUPERSAMPLE = 4
_PROMPT_RE = re.compile(r"^\s*an?\s+(\w+)\s+(\w+)\s+on\s+an?\s+(\w+)\s+background\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for."""

    colour: str
    shape: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """Every valid (colour, shape, background) triple, in a fixed order: 8 * 3 * 7 = 168."""
    return [
        Scene(colour, shape, background)
        for colour in COLOURS
        for shape in SHAPES
        for background in COLOURS
        if background != colour
    ]


def parse_prompt(prompt: str) -> Scene:
    """Read a grammar prompt back into a Scene; ValueError with a one-line reason otherwise."""
    match = _PROMPT_RE.match(prompt)
    if match is None:
        raise ValueError(f"prompt {prompt!r} is not of the form 'a <colour> <shape> on a <colour> background'")
    colour, shape, background = (word.lower() for word in match.groups())
    for word, known in ((colour, COLOURS), (shape, SHAPES), (background, COLOURS)):
        if word not in known:
            raise ValueError(f"unknown word {word!r} in prompt {prompt!r}; known: {', '.join(known)}")
    if colour == background:
        raise ValueError(f"prompt {prompt!r} has the same colour for the shape and the background")
    return Scene(colour, shape, background)


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float) -> tuple[int, int, int]:
    shifted = np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    return tuple(int(v) for v in np.clip(np.round(shifted), 0, 255))  # type: ignore[return-value]


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square or an upright equilateral triangle inscribed in a circle of `radius`, rotated."""
    if shape == "square":
        offsets = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
    elif shape == "triangle":
        offsets = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return [(cx + radius * math.cos(a + angle), cy + radius * math.sin(a + angle)) for a in offsets]


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image of `scene` as uint8 [size, size, 3], with the variation drawn from `rng`."""
    big = size * _SUPERSAMPLE
    background = _jitter(COLOURS[scene.background], rng, 12)
    colour = _jitter(COLOURS[scene.colour], rng, 12)
    # Sizes relative to the canvas: the shape's circumradius is 18% to 34% of the side, so it stays visible
    # and leaves plenty of background at the border (the checker reads the background there).
    radius = rng.uniform(0.18, 0.34) * big
    # Equal visual weight: a circle of the same circumradius looks bigger than a square or triangle.
    if scene.shape == "circle":
        radius *= 0.85
    margin = radius + 0.06 * big
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    angle = math.radians(rng.uniform(-15.0, 15.0))
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    if scene.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        draw.polygon(shape_polygon(scene.shape, cx, cy, radius, angle), fill=colour)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def make_dataset(count: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Scene]]:
    """`count` rendered images (uint8 [N, size, size, 3]) cycling over all scenes in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    order = np.concatenate([rng.permutation(len(scenes)) for _ in range(count // len(scenes) + 1)])[:count]
    chosen = [scenes[i] for i in order]
    images = np.stack([render(scene, rng, size) for scene in chosen])
    return images, chosen


def grammar_corpus() -> list[str]:
    """Every prompt of the grammar (what the tokenizers are trained on)."""
    return [scene.prompt for scene in all_scenes()]
