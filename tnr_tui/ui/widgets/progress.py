"""The Lab's progress bar in one widget: the bar, then the percentage in the last five cells.

Textual's ProgressBar is three widgets (the container, the bar, the percentage), each mounted and styled before
the Lab's first frame. This draws the same line with Textual's own bar renderable (its half cells and colours:
$primary while running, $success when complete, on $surface) and the percentage right-aligned, as
ProgressBar(show_eta=False) does.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.renderables.bar import Bar
from textual.widget import Widget

PERCENT_CELLS = 5  # "100%" and the cell before it


class Progress(Widget):
    """`update(total=, progress=)` as a ProgressBar's; `percentage` is progress / total in [0, 1]."""

    COMPONENT_CLASSES = {"progress--bar", "progress--complete"}
    DEFAULT_CSS = """
    Progress {
        height: 1;
        width: 1fr;
        & > .progress--bar { color: $primary; background: $surface; }
        & > .progress--complete { color: $success; background: $surface; }
    }
    """

    def __init__(self, total: float = 1, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.total = float(total)
        self.progress = 0.0

    @property
    def percentage(self) -> float:
        return min(1.0, max(0.0, self.progress / self.total)) if self.total > 0 else 0.0

    def update(self, *, total: float | None = None, progress: float | None = None) -> None:
        if total is not None:
            self.total = float(total)
        if progress is not None:
            self.progress = float(progress)
        self.refresh()

    def render(self) -> Text:
        width = self.content_size.width
        bar_width = max(0, width - PERCENT_CELLS)
        percentage = self.percentage
        style = self.get_component_rich_style("progress--bar" if percentage < 1 else "progress--complete")
        # Whole half cells, rounded down, as Textual's bar validates its percentage.
        shown = int(percentage * bar_width * 2) / (bar_width * 2) if bar_width else 0.0
        bar = Bar(
            highlight_range=(0, bar_width * shown),
            highlight_style=Style.from_color(style.color),
            background_style=Style.from_color(style.bgcolor),
            width=bar_width,
        )
        line = Text(no_wrap=True, end="")
        if bar_width:
            for part in bar.__rich_console__(self.app.console, self.app.console.options.update(width=bar_width)):
                line.append_text(part)
        line.append(f"{round(percentage * 100)}%".rjust(min(PERCENT_CELLS, width)))
        return line
