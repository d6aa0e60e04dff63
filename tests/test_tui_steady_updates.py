"""A run's per-step updates repaint what changed without laying out the whole screen (issue 15's lag goal).

The Lab's progress line and a picture's caption are widgets/line.Line (no layout pass while the text fits one
line); a picture's new image of the same size is no layout pass either, and a half-cell picture draws its
lines once per image, not again for every repaint of the area around it (Textual repaints the bounding box of
what changed: the plot beside it made it draw itself at every step).
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from textual.app import App, ComposeResult
from textual.widget import Widget

from tnr_tui.ui.widgets.line import Line
from tnr_tui.ui.widgets.picture import Picture, load_image_class, prepare_images


def count_layouts(widget: Widget, monkeypatch: Any) -> list[bool]:
    """Whether each refresh that reaches Textual's Widget.refresh for `widget` asks for a layout."""
    seen: list[bool] = []
    original = Widget.refresh

    def refresh(self: Widget, *regions: Any, **kwargs: Any) -> Any:
        if self is widget:
            seen.append(bool(kwargs.get("layout")))
        return original(self, *regions, **kwargs)

    monkeypatch.setattr(Widget, "refresh", refresh)
    return seen


class LineApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Line("idle", id="line")


async def test_a_line_that_fits_is_repainted_not_laid_out(monkeypatch) -> None:
    app = LineApp()
    async with app.run_test(size=(40, 10)) as pilot:
        line = app.query_one("#line", Line)
        layouts = count_layouts(line, monkeypatch)
        line.set("step 1/20")  # one line, as the text it was composed with: no layout from the start
        line.set("step 2/20")
        line.set("step 3/20")
        await pilot.pause()
        assert layouts == [False, False, False]
        assert "step 3/20" in str(line.render())
        line.set("x" * 60)  # wider than the widget: it wraps, so its height may change
        line.set("step 4/20")  # back from a wrapped text: laid out again
        line.set("line one\nline two")
        assert layouts[3:] == [True, True, True]
        await pilot.pause()
        assert line.size.height == 2
        seen = len(layouts)  # with Textual's own refresh for the new height
        line.set("done · 0.9 s\ncontrast 0.5")  # two lines again, neither wraps: the height stays
        line.update("idle")  # Static's own update lays out, as always
        line.set("step 5/20")  # one line as the text before: no layout
        line.set("step 6/20\nand more")  # one line more: laid out
        assert layouts[seen:] == [False, True, False, True], layouts


class PictureApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Picture("", id="pic")


def image(colour: tuple[int, int, int], size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


async def test_a_same_size_image_is_no_layout_and_its_lines_are_drawn_once(monkeypatch) -> None:
    prepare_images("halfcell", probe=False)
    load_image_class()
    app = PictureApp()
    async with app.run_test(size=(60, 30)) as pilot:
        picture = app.query_one("#pic", Picture)
        picture.show(image((255, 0, 0)), "first")
        await pilot.pause()
        widget = picture._image_widget
        assert widget is not None
        layouts = count_layouts(widget, monkeypatch)
        draws: list[Any] = []
        original = type(widget).__mro__[1].render_lines  # the library's own drawing, under the cache

        def drawing(self: Any, crop: Any) -> Any:
            draws.append(crop)
            return original(self, crop)

        monkeypatch.setattr(type(widget).__mro__[1], "render_lines", drawing)
        picture.show(image((0, 0, 255)), "second")  # same size: a repaint only
        await pilot.pause()
        assert layouts == [False]
        drawn = len(draws)
        assert drawn >= 1  # the new image was drawn
        blue = widget.render_lines(widget.region.reset_offset)
        assert any("0,0,255" in str(seg.style) or "#0000ff" in str(seg.style) for s in blue for seg in s)
        widget.refresh()  # the plot beside it repainting: the same lines, not drawn again
        app.screen.refresh()
        await pilot.pause()
        assert len(draws) == drawn
        picture.show(image((0, 255, 0), size=32), "bigger")  # another size: laid out
        await pilot.pause()
        assert layouts[-1] is True
        assert len(draws) > drawn
