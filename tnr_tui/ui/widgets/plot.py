"""A line plot drawn in braille dots: the lab's own, for live telemetry, trajectories and run pairs.

Why our own and not textual-plotext or textual-plot: the live plot redraws while a run samples and the
event loop must stay within 20 ms (bench/tui_latency.py). textual-plotext rebuilds its whole picture through
plotext and Rich's ANSI parser on every refresh: 48 ms median for a 50x14 plot of two 50-point series on
this machine, measured; it also pins plotext < 6 and had its last release in 2024. textual-plot (numpy and
textual-hires-canvas, three canvases a plot) took 12 ms median for the same redraw before its canvases
paint, and its imports would land on the path to the first frame. This widget draws the same plot in about
1 ms, only when its data or size changes (the lines are cached between refreshes), imports nothing, and its
output is plain characters: identical over SSH in any terminal at 80x24 and in SVG snapshots.

Braille cells give 2x4 dots a cell; a cell has one colour, so where two series cross the one drawn first (the
first series) keeps the cell. The cursor is a highlighted column (its background), so the dots under it stay
visible.

    plot.plot([Series("x0 change", [(0, 1.0), (1, 0.4), ...])], log_y=True, cursor=3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

Point = tuple[float, float | None]
PALETTE_SIZE = 4  # series colours: component classes plot--series-0 .. -3, then they repeat

# Braille dot bits by (column, row) inside a cell (Unicode's dot numbering 1-8).
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_BRAILLE = 0x2800


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points in drawing order; a y of None (or not finite) breaks the line."""

    label: str
    points: tuple[Point, ...]

    def __init__(self, label: str, points: Iterable[Point]) -> None:
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "points", tuple((float(x), None if y is None else float(y)) for x, y in points))


@dataclass(frozen=True)
class PlotSpec:
    """What to draw: the series and how the axes map them."""

    series: tuple[Series, ...] = ()
    x_range: tuple[float, float] | None = None  # None: from the data
    log_x: bool = False
    log_y: bool = False
    reverse_x: bool = False  # larger x on the left (sigma falls as a run goes on)
    cursor: float | None = None  # an x to highlight
    x_label: str = ""
    legend: bool = True  # the first row names the series in their colours


def format_number(value: float) -> str:
    """A short tick label: three significant digits, exponents without padding (1.2e-3)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    text = f"{value:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _transform(value: float | None, log: bool) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    if log:
        return math.log10(value) if value > 0 else None
    return value


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-300):
        pad = abs(lo) * 0.1 if lo else 1.0
        return lo - pad, hi + pad
    return lo, hi


class Canvas:
    """Braille dots on a grid of cells, each cell remembering which series drew into it first."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns, self.rows = columns, rows
        self.bits = [[0] * columns for _ in range(rows)]
        self.owner = [[-1] * columns for _ in range(rows)]

    def dot(self, x: int, y: int, owner: int) -> None:
        """Set dot (x, y): x in [0, 2 columns), y in [0, 4 rows) counted from the top."""
        if 0 <= x < 2 * self.columns and 0 <= y < 4 * self.rows:
            row, col = y >> 2, x >> 1
            self.bits[row][col] |= _DOT_BITS[x & 1][y & 3]
            if self.owner[row][col] < 0:
                self.owner[row][col] = owner

    def line(self, x0: float, y0: float, x1: float, y1: float, owner: int) -> None:
        """The dots between two points (dot coordinates), end points included."""
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for k in range(steps + 1):
            t = k / steps
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), owner)

    def char(self, row: int, col: int) -> str:
        bits = self.bits[row][col]
        return chr(_BRAILLE + bits) if bits else " "


@dataclass(frozen=True)
class Drawn:
    """A plot as cells: `lines[r]` is a list of (text, style name) runs; style names are component classes."""

    lines: tuple[tuple[tuple[str, str], ...], ...]

    def text(self) -> list[str]:
        return ["".join(t for t, _ in line) for line in self.lines]


def _runs(cells: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Consecutive cells of one style merged into one run (fewer segments to paint)."""
    out: list[tuple[str, str]] = []
    for char, style in cells:
        if out and out[-1][1] == style:
            out[-1] = (out[-1][0] + char, style)
        else:
            out.append((char, style))
    return tuple(out)


def draw(spec: PlotSpec, width: int, height: int, empty: str = "no data") -> Drawn:
    """The plot of `spec` in a width x height box of cells (a pure function: the widget only paints it).

    Rows: the legend (if `spec.legend`), the plot area with its y axis (labels at its top, middle and
    bottom), the x labels.
    """
    width, height = max(width, 1), max(height, 1)
    points = [[(_transform(x, spec.log_x), _transform(y, spec.log_y)) for x, y in s.points] for s in spec.series]
    xs = [x for ps in points for x, y in ps if x is not None and y is not None]
    ys = [y for ps in points for x, y in ps if x is not None and y is not None]
    blank = [(" " * width, "plot--label")]
    if not xs or height < 3 + int(spec.legend) or width < 12:
        first = (empty[:width].ljust(width), "plot--empty")
        return Drawn(tuple(_runs([first]) if r == 0 else tuple(blank) for r in range(height)))
    if spec.x_range is not None:
        x_lo, x_hi = (_transform(v, spec.log_x) for v in spec.x_range)
        if x_lo is None or x_hi is None or x_lo == x_hi:
            x_lo, x_hi = _bounds(xs)
    else:
        x_lo, x_hi = _bounds(xs)
    y_lo, y_hi = _bounds(ys)
    y_mid = (y_lo + y_hi) / 2
    shown = (lambda v: 10**v) if spec.log_y else (lambda v: v)
    # A label a thousandth of the range from zero is zero (the middle of -0.9996 .. 1 is not 0.000153).
    near_zero = (lambda v: False) if spec.log_y else (lambda v: abs(v) < 1e-3 * (y_hi - y_lo))
    labels = [format_number(0.0 if near_zero(v) else shown(v)) for v in (y_hi, y_mid, y_lo)]
    margin = max(len(t) for t in labels) + 1
    columns, rows = width - margin, height - 1 - int(spec.legend)
    canvas = Canvas(columns, rows)
    dots_w, dots_h = 2 * columns - 1, 4 * rows - 1

    def to_dot(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_lo) / (x_hi - x_lo)
        if spec.reverse_x:
            fx = 1 - fx
        return fx * dots_w, (1 - (y - y_lo) / (y_hi - y_lo)) * dots_h

    for owner, ps in enumerate(points):
        previous: tuple[float, float] | None = None
        for x, y in ps:
            if x is None or y is None:
                previous = None
                continue
            here = to_dot(x, y)
            if previous is None:
                canvas.dot(round(here[0]), round(here[1]), owner)
            else:
                canvas.line(*previous, *here, owner)
            previous = here
    cursor_col = None
    if spec.cursor is not None:
        cx = _transform(spec.cursor, spec.log_x)
        if cx is not None:
            col = int(to_dot(cx, y_lo)[0]) // 2
            cursor_col = col if 0 <= col < columns else None

    lines: list[tuple[tuple[str, str], ...]] = []
    legend: list[tuple[str, str]] = []
    used = 0
    for owner, s in enumerate(spec.series):
        piece = ("━ " + s.label + "  ")[: max(width - used, 0)]
        if piece:
            legend.append((piece, f"plot--series-{owner % PALETTE_SIZE}"))
            used += len(piece)
    legend.append((" " * (width - used), "plot--label"))
    if spec.legend:
        lines.append(_runs([(c, style) for text, style in legend for c in text]))
    label_rows = {0: labels[0], rows // 2: labels[1], rows - 1: labels[2]}
    for r in range(rows):
        cells: list[tuple[str, str]] = [(c, "plot--axis") for c in label_rows.get(r, "").rjust(margin - 1)]
        cells.append(("┤" if r in label_rows else "│", "plot--axis"))
        for c in range(columns):
            owner = canvas.owner[r][c]
            style = f"plot--series-{owner % PALETTE_SIZE}" if owner >= 0 else "plot--label"
            if c == cursor_col:
                style = "plot--cursor" if owner < 0 else style + " plot--cursor"
            cells.append((canvas.char(r, c), style))
        lines.append(_runs(cells))
    left, right = (x_hi, x_lo) if spec.reverse_x else (x_lo, x_hi)
    shown_x = (lambda v: 10**v) if spec.log_x else (lambda v: v)
    left_text, right_text = format_number(shown_x(left)), format_number(shown_x(right))
    middle = spec.x_label
    axis = " " * margin + left_text
    gap = columns - len(left_text) - len(right_text)
    if middle and gap >= len(middle) + 2:
        pad = gap - len(middle)
        axis += " " * (pad // 2) + middle + " " * (pad - pad // 2)
    else:
        axis += " " * max(gap, 1)
    axis += right_text
    lines.append(_runs([(c, "plot--axis") for c in axis[:width].ljust(width)]))
    return Drawn(tuple(lines))


class LinePlot(Widget):
    """A braille line plot of one or more series (see the module docstring); `plot(...)` sets what it shows."""

    COMPONENT_CLASSES = {
        "plot--axis",
        "plot--label",
        "plot--empty",
        "plot--cursor",
        *(f"plot--series-{k}" for k in range(PALETTE_SIZE)),
    }
    DEFAULT_CSS = """
    LinePlot { height: 1fr; min-height: 4; }
    LinePlot > .plot--axis { color: $text-muted; }
    LinePlot > .plot--label { color: $text; }
    LinePlot > .plot--empty { color: $text-muted; }
    LinePlot > .plot--cursor { background: $accent 40%; }
    LinePlot > .plot--series-0 { color: $text-accent; }
    LinePlot > .plot--series-1 { color: $text-success; }
    LinePlot > .plot--series-2 { color: $text-primary; }
    LinePlot > .plot--series-3 { color: $text-error; }
    """

    def __init__(self, empty: str = "no data", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.empty = empty
        self.spec = PlotSpec()
        self._drawn: Drawn | None = None
        self._strips: list[Strip] | None = None
        self._drawn_size: tuple[int, int] = (0, 0)
        self.draws = 0  # how many times the picture was computed (tests and benches read it)

    def plot(
        self,
        series: Sequence[Series] = (),
        *,
        x_range: tuple[float, float] | None = None,
        log_x: bool = False,
        log_y: bool = False,
        reverse_x: bool = False,
        cursor: float | None = None,
        x_label: str = "",
        empty: str | None = None,
        legend: bool = True,
    ) -> None:
        """Show these series (replacing what was shown); redrawn at the next refresh, only if it changed."""
        spec = PlotSpec(tuple(series), x_range, log_x, log_y, reverse_x, cursor, x_label, legend)
        if empty is not None and empty != self.empty:
            self.empty, self._drawn = empty, None
        if spec != self.spec:
            self.spec, self._drawn = spec, None
        if self._drawn is None:
            self._strips = None
            self.refresh()

    def set_cursor(self, cursor: float | None) -> None:
        """Move the cursor only (the series stay)."""
        spec = self.spec
        self.plot(
            spec.series,
            x_range=spec.x_range,
            log_x=spec.log_x,
            log_y=spec.log_y,
            reverse_x=spec.reverse_x,
            cursor=cursor,
            x_label=spec.x_label,
            legend=spec.legend,
        )

    def text(self) -> list[str]:
        """The plot's characters at its current size (tests read them)."""
        return self._draw().text()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # the theme's colours may have changed; the characters did not
        self._styles = None

    def _draw(self) -> Drawn:
        size = (self.size.width, self.size.height)
        if self._drawn is None or size != self._drawn_size:
            self._drawn, self._drawn_size, self._strips = draw(self.spec, *size, self.empty), size, None
            self.draws += 1
        return self._drawn

    _styles: tuple[Style, dict[str, Style]] | None = None  # (base, component names -> base + their styles)

    def _build_strips(self) -> list[Strip]:
        drawn = self._draw()
        base = self.rich_style
        # Kept between steps while the base style stands (a new theme or style resets them): looking the
        # component styles up again was a third of each step's redraw.
        if self._styles is None or self._styles[0] != base:
            self._styles = (base, {})
        styles = self._styles[1]

        def style_of(names: str) -> Style:
            style = styles.get(names)
            if style is None:
                combined = Style()
                for name in names.split():
                    combined += self.get_component_rich_style(name)
                style = styles[names] = base + combined
            return style

        return [
            Strip([Segment(text, style_of(names)) for text, names in line], self.size.width) for line in drawn.lines
        ]

    def render_line(self, y: int) -> Strip:
        if self._strips is None or (self.size.width, self.size.height) != self._drawn_size:
            self._strips = self._build_strips()
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)
