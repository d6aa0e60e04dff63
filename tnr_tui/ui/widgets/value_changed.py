"""The message of a widget that holds one value of a list (DropDown, Choice): `control` and the new `value`."""

from __future__ import annotations

from typing import Any

from textual.message import Message
from textual.widget import Widget


class ValueChanged(Message):
    """Subclassed inside each widget as its `Changed`, so that handlers keep their names (`on_drop_down_changed`)
    and `@on(DropDown.Changed, "#solver")` still selects by the widget."""

    def __init__(self, widget: Widget, value: Any) -> None:
        super().__init__()
        self.widget, self.value = widget, value

    @property
    def control(self) -> Widget:
        return self.widget
