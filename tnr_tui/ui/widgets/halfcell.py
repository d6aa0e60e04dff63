"""Half-cell pictures drawn straight to strips: the lines textual-image's half-cell widget draws, made faster.

textual-image's half-cell renderable yields one Rich segment per cell ("▀", the upper pixel's colour on the
lower pixel's), building two `Color`s (each formatting its hex name) and a `Style` for every cell; Textual
then adds the widget's base style to each segment and splits the stream into lines. For the Lab's 56x28
preview that was ~21 ms of the UI thread per preview (1568 cells, ~13 us a cell), the largest share of the
event loop's lag during a run (bench/tui_latency.py).

`halfcell_strips` gives the same strips (the same segments: text, style and control equal, which
tests/test_halfcell.py holds against the widget's own `render_line` path) from the same scaled pixels
(textual-image's PixelData and ImageSize), with what repeats between cells and between previews kept: a
colour per 24-bit value, a finished segment per (upper, lower) pair under one base style.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.color import Color, ColorType
from rich.color_triplet import ColorTriplet
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

UPPER_HALF = "▀"
_HEX = [f"{v:02x}" for v in range(256)]
# Colours and segments kept (23 MB at peak, measured; ten 56x28 pictures); past this a table starts again.
_MAX_COLOURS = 16_384

_colours: dict[int, Color] = {}


def _colour(value: int) -> Color:
    """Color.from_triplet(ColorTriplet(r, g, b)) for the packed 0xRRGGBB value, kept."""
    colour = _colours.get(value)
    if colour is None:
        if len(_colours) >= _MAX_COLOURS:
            _colours.clear()
        r, g, b = value >> 16, (value >> 8) & 0xFF, value & 0xFF
        colour = Color("#" + _HEX[r] + _HEX[g] + _HEX[b], ColorType.TRUECOLOR, None, ColorTriplet(r, g, b))
        _colours[value] = colour
    return colour


class SegmentTable:
    """Finished segments of one base style: `base + Style(color=upper, bgcolor=lower)` as Textual composes a
    widget's base style with each segment of its renderable."""

    def __init__(self, base: Style) -> None:
        self.base = base
        self._segments: dict[int, Segment] = {}

    def segment(self, upper: int, lower: int) -> Segment:
        key = (upper << 24) | lower
        segment = self._segments.get(key)
        if segment is None:
            if len(self._segments) >= _MAX_COLOURS:
                self._segments.clear()
            style = self.base + Style.from_color(_colour(upper), _colour(lower))
            segment = Segment(UPPER_HALF, style, None)
            self._segments[key] = segment
        return segment


def scaled_pixels(image: Any, width_spec: Any, height_spec: Any, max_width: int, max_height: int) -> Any:
    """The image as textual-image's half-cell renderable scales it: (cell width, pixel rows, RGB bytes)."""
    from textual_image._geometry import ImageSize
    from textual_image._pixeldata import PixelData
    from textual_image._terminal import get_cell_size

    data = PixelData(image, mode="rgb")
    size = ImageSize(data.width, data.height, width_spec, height_spec)
    width, height = size.get_cell_size(max_width, max_height, get_cell_size())
    scaled = data.scaled(width, height * 2).pil_image
    return width, height * 2, scaled.tobytes()


def halfcell_strips(
    image: Any, width_spec: Any, height_spec: Any, max_width: int, max_height: int, table: SegmentTable
) -> list[Strip]:
    """The widget's content lines for `image` (what Textual's render_line path makes of textual-image's
    half-cell renderable at this size and base style)."""
    width, rows, raw = scaled_pixels(image, width_spec, height_spec, max_width, max_height)
    if width <= 0 or rows <= 0:
        return []
    # One packed 0xRRGGBB per pixel, row by row.
    packed = [(raw[i] << 16) | (raw[i + 1] << 8) | raw[i + 2] for i in range(0, len(raw), 3)]
    segment = table.segment
    strips = []
    for top in range(0, rows - 1, 2):
        upper = packed[top * width : (top + 1) * width]
        lower = packed[(top + 1) * width : (top + 2) * width]
        strips.append(Strip([segment(u, v) for u, v in zip(upper, lower, strict=True)], width))
    return strips[:max_height]


@dataclass(frozen=True)
class Geometry:
    """Where a half-cell widget last drew (its size, its styled size, its segment table): enough for another
    thread to draw the next image's lines ahead of time (`prepare`)."""

    width: int
    height: int
    width_spec: Any
    height_spec: Any
    table: SegmentTable

    def key(self, image: Any) -> tuple[Any, ...]:
        """What lines drawn for `image` here depend on (the image itself first: compared by identity)."""
        return (image, self.width, self.height, self.width_spec, self.height_spec, self.table.base)

    def draw(self, image: Any) -> list[Strip]:
        return halfcell_strips(image, self.width_spec, self.height_spec, self.width, self.height, self.table)


def prepare(image: Any, geometry: Geometry | None) -> tuple[tuple[Any, ...], list[Strip]] | None:
    """(key, lines) of `image` drawn at `geometry`, for the widget to take if it still has that geometry when
    the image arrives (else it draws them itself). Safe off the UI thread: it reads the geometry, builds new
    strips and adds to the tables (single dict operations), and touches no widget."""
    if image is None or geometry is None:
        return None
    return geometry.key(image), geometry.draw(image)
