"""The Lab and Compare as a new user meets them (issue 10): the example prompt is the text that runs, and a
queue of runs is visible and cancellable. The real app under App.run_test() with the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pilot_wait import waiter
from textual.widgets import Input

from tnr_tui.services.history import open_store
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.screens.lab import EXAMPLE_PROMPT


def notifications(app: TnrLabApp) -> list[Any]:
    return list(app._notifications)  # Textual keeps no public list (see test_tui_app.notifications)


wait_for = waiter(timeout=60.0)


async def test_the_example_prompt_is_what_a_first_run_and_a_first_grid_sample(tmp_data_dir: Path) -> None:
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="none", threads=1)
    async with app.run_test(size=(120, 40)) as pilot:
        prompt = app.lab.query_one("#prompt", Input)
        assert prompt.value == EXAMPLE_PROMPT  # real text, not a grey placeholder
        await pilot.press("ctrl+r")  # the first thing a new user does
        await wait_for(pilot, lambda: app.ended, what="the first run")
        assert app.ended[0].status == "done", app.ended[0].error
        await pilot.press("f4")
        await pilot.pause(0.1)
        compare = app.compare_screen
        assert compare.query_one("#compare-prompt", Input).value == EXAMPLE_PROMPT
        compare.query_one("#compare-methods", Input).value = "none cfg:3"
        compare.query_one("#compare-steps", Input).value = "4"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.ended) == 3, what="the grid")
        assert [m.status for m in app.ended] == ["done"] * 3
    runs = open_store(tmp_data_dir).list_runs()
    assert len(runs) == 3 and [r.prompt for r in runs] == [EXAMPLE_PROMPT] * 3


async def test_typing_replaces_the_example_and_an_empty_prompt_stays_possible(tmp_data_dir: Path) -> None:
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="none", autoload=False)
    async with app.run_test(size=(120, 40)) as pilot:
        lab = app.lab
        prompt = lab.query_one("#prompt", Input)
        assert app.focused is prompt
        await pilot.press(*"a green square")  # the example is selected at start: the first key replaces it
        assert prompt.value == "a green square" and lab.build_request().prompt == "a green square"
        prompt.value = ""
        assert lab.build_request().prompt == ""  # cleared on purpose: an unconditional prompt
        await pilot.press("f4")
        await pilot.pause(0.1)
        compare = app.compare_screen
        compare_prompt = compare.query_one("#compare-prompt", Input)
        assert app.focused is compare_prompt
        await pilot.press(*"a blue circle")
        assert compare.base_request().prompt == "a blue circle"
        compare_prompt.value = ""
        assert compare.base_request().prompt == ""


async def test_ten_fast_runs_show_their_queue_and_escape_cancels_all_ten(tmp_data_dir: Path) -> None:
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="none", threads=1)
    async with app.run_test(size=(120, 40)) as pilot:
        lab = app.lab
        lab.query_one("#steps", Input).value = "5000"  # long enough that nothing ends before the escape
        state = lab.query_one("#model-state")
        await wait_for(pilot, lambda: ": loaded" in str(state.content), what="the embedded model")
        sent: list[str] = []  # every notification, including toasts that timed out meanwhile
        notify = app.notify
        app.notify = lambda message, **kwargs: (sent.append(message), notify(message, **kwargs))[1]  # type: ignore[method-assign]
        for _ in range(10):
            await pilot.press("ctrl+r")
        queued = [message for message in sent if message.startswith("run queued")]
        assert queued[-1] == "run queued: running 1, 9 queued (escape cancels them all)"
        assert len(queued) == 9  # every run behind another says so; the first just starts
        progress = lab.query_one("#progress-text")
        await wait_for(pilot, lambda: str(progress.content).startswith("step "), what="a step")
        assert str(progress.content).endswith("  · 9 queued")
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(app.ended) == 10, what="ten cancelled runs")
        assert [m.status for m in app.ended] == ["cancelled"] * 10
        assert "cancelling 10 run(s): 1 running, 9 queued" in sent
        await pilot.pause(0.1)
        assert str(progress.content) == "cancelled"  # nothing left queued
    runs = open_store(tmp_data_dir).list_runs(limit=20)
    assert len(runs) == 10 and {r.status for r in runs} == {"cancelled"}
