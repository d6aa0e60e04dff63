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


def test_lines_drawn_on_another_thread_are_used_where_they_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from textual.app import App

    from tnr_tui.ui.widgets import halfcell
    from tnr_tui.ui.widgets.picture import Picture, prerender

    picture.prepare_images("halfcell", probe=False)
    picture.load_image_class()
    first, second, third = images()[:3]

    class Lab(App):
        CSS = "#preview .picture-image { width: 28; height: 14; }"

        def compose(self):
            yield Picture("", id="preview", prerender=True)

    async def run() -> None:
        async with Lab().run_test(size=(80, 30)) as pilot:
            preview = pilot.app.query_one("#preview", Picture)
            preview.show(first, "first")
            await pilot.pause()  # drawn once here: its geometry is published
            drawn: list = []
            thread = threading.Thread(target=lambda: drawn.append(prerender(second)))
            thread.start()
            thread.join()
            assert drawn[0] is not None and drawn[0][0][0] is second
            calls: list = []
            original = halfcell.halfcell_strips
            monkeypatch.setattr(halfcell, "halfcell_strips", lambda *a: calls.append(a) or original(*a))
            preview.show(second, "second", prepared=drawn[0])
            await pilot.pause()
            widget = preview._image_widget
            fast = [widget.render_line(y) for y in range(widget.size.height)]
            assert calls == []  # the worker's lines, not drawn again here
            slow = textual_lines(widget)
            assert fast[: len(slow)] == slow and slow
            # Lines drawn for another image (or another size) are not taken: the widget draws its own.
            preview.show(third, "third", prepared=drawn[0])
            await pilot.pause()
            assert len(calls) == 1
            assert [widget.render_line(y) for y in range(len(slow))] == textual_lines(widget)[: len(slow)]

    asyncio.run(run())
    assert prerender(None) is None


def test_the_worker_draws_lines_for_the_labs_runs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Lab run's previews carry their lines; a batch's (the Compare screen's tiles) and other owners' do not:
    the worker would draw lines no widget takes."""
    from rich.style import Style
    from tui_runs import FakeEvent

    from tnr_tui.ui.widgets.halfcell import Geometry, SegmentTable
    from tnr_tui.ui.worker import DeviceWorker, RunPreview

    picture.prepare_images("halfcell", probe=False)
    monkeypatch.setattr(picture, "_preview_geometry", Geometry(28, 14, 28, 14, SegmentTable(Style())))
    posted: list = []
    worker = DeviceWorker(posted.append)
    image = images()[0]
    for job_id, lab in ((1, True), (2, False)):
        event = FakeEvent(0, 1, 1.0, 0.0, None, 2, 0.0, image=image)
        worker._on_step(job_id, event, [0.0], prerender_lines=lab)
    previews = {m.job_id: m for m in posted if isinstance(m, RunPreview)}
    assert previews[1].prepared is not None and len(previews[1].prepared[1]) == 14
    assert previews[2].prepared is None
    worker._on_step(3, FakeEvent(0, 1, 1.0, 0.0, None, 2, 0.0, image=image), [0.0])  # the default: no lines
    assert [m for m in posted if isinstance(m, RunPreview)][-1].prepared is None

    submitted: list = []

    class Worker:
        def submit(self, request, **kwargs):
            submitted.append(kwargs["prerender"])
            return len(submitted)

    from engine.request import GenerationRequest
    from tnr_tui.ui.app import TnrLabApp

    class Store:
        def create_run(self, *args, **kwargs):
            return "run"

    app = TnrLabApp.__new__(TnrLabApp)  # only submit's bookkeeping: no screens, no device
    app.worker, app.job_owner = Worker(), {}
    monkeypatch.setattr(TnrLabApp, "store", Store(), raising=False)
    for owner in ("lab", "compare", "history"):
        TnrLabApp.submit(app, GenerationRequest(prompt="x"), owner=owner)
    assert submitted == [True, False, False]
