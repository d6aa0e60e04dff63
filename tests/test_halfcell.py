"""widgets/halfcell.py: the half-cell picture's fast lines equal the lines Textual draws from textual-image's
own half-cell renderable, segment for segment (text, style, control)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from tnr_tui.ui.widgets import picture


def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ramp = np.zeros((48, 80, 3), dtype=np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 80, dtype=np.uint8)[None, :]
    ramp[..., 2] = np.linspace(255, 0, 48, dtype=np.uint8)[:, None]
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (33, 17), dtype=np.uint8), "L")
    flat = Image.new("RGB", (8, 8), (10, 200, 30))  # one colour: every segment from the kept table
    return [noise, Image.fromarray(ramp), rgba, grey, flat, Image.new("RGB", (1, 1), (255, 0, 255))]


def textual_lines(widget) -> list:
    widget._render_content()  # Widget.render_line's own path: the renderable through the Visual pipeline
    return list(widget._render_cache.lines)


@pytest.mark.parametrize("css", ["width: 56; height: 28;", "width: 28; height: 14;", "width: auto; height: auto;"])
@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_fast_lines_equal_textual_images_lines(css: str, theme: str) -> None:
    from textual.app import App

    picture.prepare_images("halfcell", probe=False)
    image_class = picture.import_image_library()
    assert hasattr(image_class, "_fast_strips")

    class One(App):
        CSS = f"#pic {{ {css} background: $panel; }}"

        def compose(self):
            yield image_class(None, id="pic")

    async def run() -> int:
        app = One()
        compared = 0
        async with app.run_test(size=(150, 46)) as pilot:
            app.theme = theme
            widget = app.query_one("#pic")
            for image in images():
                widget.image = image
                await pilot.pause()
                strips = widget._fast_strips()
                assert strips is not None
                fast = [widget.render_line(y) for y in range(widget.size.height)]
                slow = textual_lines(widget)
                assert len(slow) <= widget.size.height
                assert fast[: len(slow)] == slow, (image.mode, image.size, widget.size)
                assert all(line.cell_length == widget.size.width or not line.cell_length for line in fast)
                compared += len(slow)
        return compared

    assert asyncio.run(run()) > 0


def test_other_protocols_and_unusual_states_take_textual_images_path() -> None:
    from textual.app import App

    picture.prepare_images("halfcell", probe=False)
    image_class = picture.import_image_library()

    class One(App):
        CSS = "#pic { width: 20; height: 10; content-align: center middle; }"

        def compose(self):
            yield image_class(Image.new("RGB", (8, 8), (1, 2, 3)), id="pic")

    async def run() -> None:
        async with One().run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            widget = pilot.app.query_one("#pic")
            assert widget._fast_strips() is None  # aligned content: Visual.to_strips moves the lines
            widget.styles.content_align = ("left", "top")
            assert widget._fast_strips() is not None
            widget.image = None
            assert widget._fast_strips() is None

    asyncio.run(run())
