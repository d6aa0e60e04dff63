"""A Static whose text changes often (a run's progress line, a picture's caption) without a layout pass.

Textual's `Static.update` lays out the whole screen by default, since a new text may change the widget's
height; the Lab's progress line changes at every step, and that layout (and the repaint of every widget it
moved) cost the UI thread ~20 ms a step on the 2-core box, which the event-loop lag showed (bench/tui_latency.py).
`Line.set` skips the layout while the old and the new text each fit on one line of the widget's width: the
height cannot have changed then. Anything else (a wrap, a newline, a widget not laid out yet) lays out as
`update` does.
"""

from __future__ import annotations

from rich.cells import cell_len
from textual.widgets import Static


class Line(Static):
    """A Static with `set(text)`: see the module docstring."""

    _fits_one_line = False

    def set(self, text: str) -> None:
        width = self.content_size.width
        fits = width > 0 and "\n" not in text and cell_len(text) <= width
        layout = not (fits and self._fits_one_line)
        self._fits_one_line = fits
        self.update(text, layout=layout)
