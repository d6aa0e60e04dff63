"""The Lab's "new" and "load" buttons (tnr_tui/ui/widgets/small_button.py): drawn as Textual's compact
default Button is, cell for cell, idle and focused, and pressed as one is (a click or enter, once per 0.2 s
press effect), posting SmallButton.Pressed."""

from __future__ import annotations

import pytest
from pilot_wait import settle
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button

from tests.tui_cells import looks
from tnr_tui.ui.widgets import small_button
from tnr_tui.ui.widgets.small_button import SmallButton


class Pair(App):
    CSS = "Horizontal { height: 1; } Button, SmallButton { width: auto; min-width: 5; }"

    def __init__(self) -> None:
        super().__init__()
        self.pressed: list[str] = []

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield SmallButton("load", id="small")
        with Horizontal():
            yield Button("load", id="button", compact=True)

    def on_small_button_pressed(self, event: SmallButton.Pressed) -> None:
        self.pressed.append(str(event.control.id))


async def test_it_is_drawn_as_a_compact_button_idle_and_focused() -> None:
    app = Pair()
    async with app.run_test(size=(30, 4)) as pilot:
        app.set_focus(None)
        await pilot.pause()
        assert "".join(c for c, *_ in looks(app, 0, 6)) == " load "
        assert looks(app, 0, 10) == looks(app, 1, 10)
        app.query_one(SmallButton).focus()
        await pilot.pause()
        mine = looks(app, 0, 10)
        app.query_one(Button).focus()
        await pilot.pause()
        assert mine == looks(app, 1, 10)


async def test_a_click_or_enter_presses_it_once_per_press_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    # The press effect lasts 0.2 s; 2 s here, so that the second click falls inside it however slow the host.
    monkeypatch.setattr(small_button, "ACTIVE_SECONDS", 2.0)
    app = Pair()
    async with app.run_test(size=(30, 4)) as pilot:
        button = app.query_one(SmallButton)
        await pilot.click(SmallButton)
        await settle(pilot, lambda: app.pressed, "the press")
        assert button.has_class("-active")
        await pilot.click(SmallButton)  # inside the press effect: not a second press, as with a Button
        await settle(pilot, lambda: not button.has_class("-active"), "the effect to end")
        assert app.pressed == ["small"]
        button.focus()
        await pilot.press("enter")
        await settle(pilot, lambda: len(app.pressed) == 2, "the second press")
        assert app.pressed == ["small", "small"]
