"""A drop-down of one widget: the Lab's solver, schedule and guidance-method lists.

Textual's Select is six widgets (a container, the current value and its two arrows, an overlay option list),
and the Lab's first frame pays for every widget it mounts and styles (its three Selects cost 31-41 ms of a
0.5 s start, measured in pairs). A DropDown draws its current option and the arrow itself, and mounts its
list the first time it opens; it then works as a compact Select does:

- enter, space, up or down (or a click) open the list on the current option; up/down/home/end move in it,
  typing jumps to the first option that starts with what was typed, enter or a click takes one, escape (or
  the focus leaving the list) closes it unchanged;
- the list shows over the screen below the drop-down (moved up where the screen ends), as wide as its
  longest option;
- `value` is read and set as a Select's is (a value that is not an option is refused with ValueError), and
  a change posts `DropDown.Changed` (`control`, `value`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import events, on
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import OptionList

from tnr_tui.ui.widgets.value_changed import ValueChanged

TYPE_AHEAD_SECONDS = 1.0  # keys typed within this of each other search as one word
CLICK_SECONDS = 0.5  # a press and its click come within this (the click ends what the press began)


class DropDownList(OptionList):
    """The open list (mounted on first use), over the screen under its drop-down."""

    BINDINGS = [Binding("escape", "dismiss", "Close the list", show=False)]

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__(*labels)
        self._typed = ""
        self._typed_at = 0.0

    def action_dismiss(self) -> None:
        drop_down = self.parent
        if isinstance(drop_down, DropDown):
            drop_down.close(refocus=True)

    def on_blur(self) -> None:
        drop_down = self.parent
        if isinstance(drop_down, DropDown):
            if drop_down.expanded and self.screen.focused is drop_down:
                # A click on the drop-down while its list is open: the press moved the focus here first, and
                # the click that follows is not to open the list again.
                drop_down.closed_by_press_at = time.monotonic()
            drop_down.close(refocus=False)

    def on_key(self, event: events.Key) -> None:
        if not event.is_printable or not event.character:
            return
        now = time.monotonic()
        self._typed = (self._typed if now - self._typed_at <= TYPE_AHEAD_SECONDS else "") + event.character
        self._typed_at = now
        typed = self._typed.casefold()
        for index in range(self.option_count):
            if str(self.get_option_at_index(index).prompt).casefold().startswith(typed):
                self.highlighted = index
                break
        event.stop()
        event.prevent_default()


class DropDown(Widget, can_focus=True):
    """The current option and an arrow; its list opens below it (see the module docstring)."""

    BINDINGS = [Binding("enter,space,down,up", "open", "Show the options", show=False)]
    COMPONENT_CLASSES = {"drop-down--arrow"}
    DEFAULT_CSS = """
    DropDown {
        height: 1;
        width: 1fr;
        padding: 0 1 0 0;
        color: $foreground;
        background: $surface;
        pointer: pointer;
        &:focus { background-tint: $foreground 5%; }
        & > .drop-down--arrow { color: $foreground 50%; }
        & > DropDownList {
            display: none;
            overlay: screen;
            constrain: none inside;
            offset-y: 1;
            width: auto;
            min-width: 100%;
            height: auto;
            max-height: 12;
            border: tall $border-blurred;
            color: $foreground;
            background: $surface;
            &:focus { background-tint: $foreground 5%; }
            & > .option-list--option { padding: 0 1; }
        }
        &.-expanded > DropDownList { display: block; }
    }
    """

    class Changed(ValueChanged):
        """The value changed (by the list, or by setting `value`)."""

    def __init__(
        self, options: Sequence[tuple[str, Any]], value: Any, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        if not options:
            raise ValueError("a drop-down needs at least one option")
        self._options = list(options)
        self._value = self._checked(value)
        self._list: DropDownList | None = None
        self.closed_by_press_at = -1.0  # see DropDownList.on_blur

    def _checked(self, value: Any) -> Any:
        if not any(v == value for _, v in self._options):
            raise ValueError(f"{value!r} is not one of the options")
        return value

    @property
    def options(self) -> list[tuple[str, Any]]:
        return list(self._options)

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        value = self._checked(value)
        if value != self._value:
            self._value = value
            self.refresh()
            self.post_message(self.Changed(self, value))

    @property
    def label(self) -> str:
        return next(label for label, v in self._options if v == self._value)

    @property
    def expanded(self) -> bool:
        return self.has_class("-expanded")

    def _index(self) -> int:
        return next(i for i, (_, v) in enumerate(self._options) if v == self._value)

    # ---- opening and closing ----

    def action_open(self) -> None:
        if self._list is None:
            self._list = DropDownList([label for label, _ in self._options])
            self.mount(self._list)
        self.add_class("-expanded")
        self._list.highlighted = self._index()
        self._list.focus()
        self.refresh()

    def close(self, *, refocus: bool) -> None:
        if not self.expanded:
            return
        self.remove_class("-expanded")
        self.refresh()
        if refocus:
            self.focus()

    @on(OptionList.OptionSelected)
    def _taken(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.close(refocus=True)
        self.value = self._options[event.option_index][1]

    def on_click(self, event: events.Click) -> None:
        if self._list is not None and event.widget is self._list:
            return  # a click on an option: OptionSelected takes it
        event.stop()
        if time.monotonic() - self.closed_by_press_at < CLICK_SECONDS:
            self.closed_by_press_at = -1.0  # the press closed it (a second click on an open drop-down)
        elif self.expanded:
            self.close(refocus=True)
        else:
            self.action_open()

    # ---- drawing ----

    def render(self) -> Text:
        room = max(0, self.content_size.width - 2)  # the arrow and the cell before it
        label = Text(self.label, no_wrap=True)
        label.truncate(room, overflow="ellipsis", pad=True)
        arrow = "▲" if self.expanded else "▼"
        return Text.assemble(label, " ", (arrow, self.get_component_rich_style("drop-down--arrow")))
