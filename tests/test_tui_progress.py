"""The Lab's progress bar (tnr_tui/ui/widgets/progress.py): one widget drawing what Textual's three-widget
ProgressBar(show_eta=False) draws, cell for cell, at every step of a run and when it is complete."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import ProgressBar

from tests.tui_cells import looks
from tnr_tui.ui.widgets.progress import Progress


class Bars(App):
    CSS = "ProgressBar Bar { width: 1fr; } ProgressBar { width: 100%; }"

    def compose(self) -> ComposeResult:
        yield Progress(total=1)
        yield ProgressBar(total=1, show_eta=False)


@pytest.mark.parametrize(("width", "steps"), [(40, 7), (23, 7), (31, 20)])
async def test_each_step_is_drawn_as_textuals_progress_bar_draws_it(width: int, steps: int) -> None:
    app = Bars()
    async with app.run_test(size=(width, 3)) as pilot:
        ours, theirs = app.query_one(Progress), app.query_one(ProgressBar)
        for done in range(steps + 1):
            ours.update(total=steps, progress=done)
            theirs.update(total=steps, progress=done)
            await pilot.pause()
            assert looks(app, 0) == looks(app, 1), f"step {done}/{steps}"
            assert "".join(c for c, *_ in looks(app, 0)).endswith(f"{round(100 * done / steps)}%")
        assert ours.percentage == 1.0


async def test_a_zero_total_and_progress_past_it_stay_in_range() -> None:
    app = Bars()
    async with app.run_test(size=(30, 3)) as pilot:
        bar = app.query_one(Progress)
        bar.update(total=0, progress=0)
        assert bar.percentage == 0.0
        bar.update(total=4, progress=9)
        await pilot.pause()
        assert bar.percentage == 1.0 and "".join(c for c, *_ in looks(app, 0)).endswith("100%")
