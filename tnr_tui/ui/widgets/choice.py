"""A one-line choice among a few options, taken in turn: `‹ label ›`; the plots' series pickers.

Textual's Select is six widgets (the current value, an overlay, an option list ...); the Lab's first frame
pays for every widget it mounts (about 3 ms each on the 2-core box, measured), and a plot's series list is
short enough to step through. Enter, space or a click takes the next option, shift+enter (or backspace) the
previous one; `value` is read and set like a Select's, and a change posts `Choice.Changed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widget import Widget

from tnr_tui.ui.widgets.value_changed import ValueChanged


class Choice(Widget, can_focus=True):
    """The current option between arrows; see the module docstring."""

    BINDINGS = [
        Binding("enter,space", "step(1)", "Next", show=False),
        Binding("shift+enter,backspace", "step(-1)", "Previous", show=False),
    ]
    DEFAULT_CSS = """
    Choice { height: 1; width: 1fr; background: $boost; color: $text; }
    Choice:focus { background: $block-cursor-blurred-background; text-style: bold; }
    """

    class Changed(ValueChanged):
        """The value changed (a step, a click, or setting `value`)."""

    def __init__(self, options: Sequence[tuple[str, Any]], value: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._options = list(options)
        self._value = value if any(v == value for _, v in self._options) else self._first()

    def _first(self) -> Any:
        return self._options[0][1] if self._options else None

    @property
    def options(self) -> list[tuple[str, Any]]:
        return list(self._options)

    def set_options(self, options: Sequence[tuple[str, Any]]) -> None:
        """New options; the value stays if it is one of them, else it is the first (and Changed is posted)."""
        self._options = list(options)
        if not any(v == self._value for _, v in self._options):
            self.value = self._first()
        self.refresh()

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        if not any(v == value for _, v in self._options):
            raise ValueError(f"{value!r} is not one of the options")
        if value != self._value:
            self._value = value
            self.refresh()
            self.post_message(self.Changed(self, value))

    @property
    def label(self) -> str:
        return next((label for label, v in self._options if v == self._value), "")

    def action_step(self, delta: int) -> None:
        if not self._options:
            return
        values = [v for _, v in self._options]
        at = values.index(self._value) if self._value in values else 0
        self.value = values[(at + delta) % len(values)]

    def on_click(self, event: events.Click) -> None:
        self.action_step(-1 if event.x < 2 else 1)  # the left arrow goes back

    def render(self) -> Text:
        return Text(f"◂ {self.label} ▸", no_wrap=True, overflow="ellipsis")
