"""The Lab's "new" and "load" buttons (tnr_tui/ui/widgets/small_button.py): drawn as Textual's compact
default Button is, cell for cell, idle and focused, and pressed as one is (a click or enter, once per 0.2 s
press effect), posting SmallButton.Pressed."""

from __future__ import annotations

from typing import Any

from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button

from tnr_tui.ui.widgets.small_button import SmallButton


def looks(app: App, y: int, width: int) -> list[tuple[str, Any, Any, Any, Any]]:
    """Row y's cells as they look: character, background, and (where not blank) colour, bold and reverse."""
    out: list[tuple[str, Any, Any, Any, Any]] = []
    for segment in app.screen._compositor.render_strips()[y]:  # noqa: SLF001
        style = segment.style
        for char in segment.text:
            shown = bool(char.strip()) and style is not None
            out.append(
                (
                    char,
                    style and style.bgcolor,
                    style.color if shown else None,
                    style.bold if shown else None,
                    style.reverse if shown else None,
                )
            )
    return out[:width]


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


async def settle(pilot: Any, condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


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


async def test_a_click_or_enter_presses_it_once_per_press_effect() -> None:
    app = Pair()
    async with app.run_test(size=(30, 4)) as pilot:
        button = app.query_one(SmallButton)
        await pilot.click(SmallButton)
        await settle(pilot, lambda: app.pressed, "the press")
        assert button.has_class("-active")
        await pilot.click(SmallButton)  # inside the 0.2 s effect: not a second press, as with a Button
        await settle(pilot, lambda: not button.has_class("-active"), "the effect to end")
        assert app.pressed == ["small"]
        button.focus()
        await pilot.press("enter")
        await settle(pilot, lambda: len(app.pressed) == 2, "the second press")
        assert app.pressed == ["small", "small"]
