"""A Static whose text changes often (a run's progress line, its result, a picture's caption) without a layout pass.

Textual's `Static.update` lays out the whole screen by default, since a new text may change the widget's
height; the Lab's progress line changes at every step, and that layout (and the repaint of every widget it
moved) cost the UI thread ~20 ms a step on the 2-core box, which the event-loop lag showed (bench/tui_latency.py).
`Line.set` skips the layout when the old and the new text have the same number of lines and each of their
lines fits the widget's width: nothing wraps, so the height cannot have changed. Anything else (a wrap, a
different number of lines, a widget not laid out yet) lays out as `update` does.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from textual.widgets import Static


class Line(Static):
    """A Static with `set(text)`: see the module docstring."""

    def __init__(self, content: str = "", **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._text: str | None = content if isinstance(content, str) else None  # the text shown, as given

    def set(self, text: str) -> None:
        width = self.content_size.width
        new = _unwrapped_lines(text, width)
        layout = self._text is None or not new or new != _unwrapped_lines(self._text, width)
        self.update(text, layout=layout)  # which remembers the text

    def update(self, content: Any = "", *, layout: bool = True) -> None:
        self._text = content if isinstance(content, str) else None
        super().update(content, layout=layout)


def _unwrapped_lines(text: str, width: int) -> int:
    """The text's number of lines where none is wider than `width` cells (none wraps), else 0.

    The text as written, markup included: a Line with markup shows fewer cells than this counts, so it may
    lay out where it need not, never the other way."""
    lines = text.split("\n")
    return len(lines) if width > 0 and all(cell_len(line) <= width for line in lines) else 0
