"""Work the Lab's start no longer does, and what still happens without it (issue 15's first frame):

- TnrLabApp.update_styles skips widgets not yet in the DOM (their mount styles them from scratch): what a
  constructor sets (compact, classes) and what changes before the mount still show once mounted, and a mounted
  widget's class change restyles it at once, as in Textual;
- LabScreen renders no frame while the app batches its updates (Textual's display would drop it): what
  changed in the batch is painted by the first frame after it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Button, Input, Static

from tnr_tui.ui.app import TnrLabApp


def lab_app(data_dir: Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", autoload=False)


async def test_styles_set_before_a_mount_show_after_it_and_mounted_changes_restyle_at_once(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    restyled: list[Any] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        import textual.app

        original = textual.app.App.update_styles

        def spy(self: Any, node: Any, animate: bool = True) -> None:
            restyled.append(node)
            original(self, node, animate)

        textual.app.App.update_styles = spy  # type: ignore[method-assign]
        try:
            box = Static("x", id="probe")
            box.add_class("-failed")  # before the mount: no restyle now...
            compact = Input("y", compact=True, id="probe-input")
            button = Button("z", compact=True, id="probe-button")
            assert restyled == []
            app.lab.query_one("#panel-model").mount_all([box, compact, button])
            await pilot.pause()
            # ... and the mount styled them as they were built: compact (no border, one row), the class kept.
            assert compact.styles.height.value == 1 and compact.size.height == 1
            assert button.size.height == 1
            assert box.has_class("-failed")
            restyled.clear()
            colour = app.lab.query_one("#model-state").styles.color
            app.lab.query_one("#model-state").add_class("-failed")  # mounted: restyled at once
            assert restyled and app.lab.query_one("#model-state").styles.color != colour
        finally:
            textual.app.App.update_styles = original  # type: ignore[method-assign]


async def test_no_frame_is_rendered_inside_a_batch_and_the_next_one_paints_what_changed(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        compositor = app.lab._compositor  # noqa: SLF001
        rendered: list[Any] = []
        original = compositor.render_update

        def spy(*args: Any, **kwargs: Any) -> Any:
            update = original(*args, **kwargs)
            rendered.append(update)
            return update

        compositor.render_update = spy  # type: ignore[method-assign]
        state = app.lab.query_one("#model-state", Static)
        with app.batch_update():
            # As at the start, where the screen's resume and the terminal's size lay it out inside the batch:
            # Textual's layout of a resized screen renders at once, batch or not.
            state.update("a change inside the batch")
            await pilot.resize_terminal(130, 40)
            for _ in range(5):
                await pilot.pause(0.02)
            assert app.lab.size.width == 130  # laid out, and yet
            assert rendered == []  # nothing rendered while batched
        for _ in range(100):
            if rendered:
                break
            await pilot.pause(0.02)
        assert rendered, "the first frame after the batch"
        lines = ["".join(segment.text for segment in strip) for strip in compositor.render_strips()]
        assert any("a change inside the batch" in line for line in lines)
