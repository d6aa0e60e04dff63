"""A one-line button drawn as Textual's compact default Button is: the Lab's "new" (seed) and "load" (model).

Textual's Button brings 7 KB of CSS (every variant, flat and ANSI styles) that Textual parses before the
Lab's first frame, for two buttons; this one has the few rules a compact default button uses. It is pressed
as a Button is: a click or enter, ignored while the last press still shows (0.2 s), and it posts
`SmallButton.Pressed` (`control` is the button).
"""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.widget import Widget

ACTIVE_SECONDS = 0.2  # as Button.active_effect_duration


class SmallButton(Widget, can_focus=True):
    BINDINGS = [Binding("enter", "press", "Press button", show=False)]
    DEFAULT_CSS = """
    SmallButton {
        width: auto;
        height: 1;
        padding: 0 1;
        text-style: bold;
        color: $button-foreground;
        background: $surface;
        pointer: pointer;
        &:focus { text-style: $button-focus-text-style; background-tint: $foreground 5%; }
        &:hover { background: $surface-darken-1; }
        &.-active { background: $surface; tint: $background 30%; }
    }
    """

    class Pressed(Message):
        def __init__(self, button: SmallButton) -> None:
            super().__init__()
            self.button = button

        @property
        def control(self) -> SmallButton:
            return self.button

    def __init__(self, label: str, *, id: str | None = None, tooltip: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        if tooltip is not None:
            self.tooltip = tooltip

    def render(self) -> Content:
        return Content(self.label)  # plain text, not markup

    def press(self) -> None:
        if self.has_class("-active"):
            return  # the last press still shows: as a Button, this one is not another
        self.add_class("-active")
        self.set_timer(ACTIVE_SECONDS, lambda: self.remove_class("-active"))
        self.post_message(self.Pressed(self))

    def action_press(self) -> None:
        self.press()

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.press()
