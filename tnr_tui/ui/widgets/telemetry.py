"""The telemetry series the lab plots (engine.telemetry's columns), and a run's row as text.

Rows are dicts (column -> number or None): `StepEvent.rows` while a run samples, `StepTable.as_dicts()` of a
stored run. Torch-free and Textual-free apart from the Series type the plot takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tnr_tui.ui.widgets.plot import Series, format_number

Row = Mapping[str, float | int | None]


@dataclass(frozen=True)
class SeriesChoice:
    """One entry of the plot's series list: one or more columns drawn together, on a linear or log y axis."""

    key: str
    label: str
    columns: tuple[str, ...]
    log_y: bool = False


# The short list of the plot's drop-down, in its order (the first is the notebook's claim: c - u is about a
# hundredth of u). Norms of different sizes share a log axis.
CHOICES: tuple[SeriesChoice, ...] = (
    SeriesChoice("diff_ratio", "‖c−u‖ / ‖u‖", ("diff_ratio",)),
    SeriesChoice("norms", "‖c‖ ‖u‖ ‖c−u‖", ("norm_cond", "norm_uncond", "norm_diff"), log_y=True),
    SeriesChoice("x0_change", "x0 change", ("x0_change",), log_y=True),
    SeriesChoice("tnr_factor", "S (TNR)", ("tnr_factor",)),
    SeriesChoice("norm_x", "‖x‖", ("norm_x",), log_y=True),
    SeriesChoice("std_x", "std x", ("std_x",), log_y=True),
    SeriesChoice("norm_guided", "‖guided ε‖", ("norm_guided",)),
    SeriesChoice("cos_diff_uncond", "cos(c−u, u)", ("cos_diff_uncond",)),
    SeriesChoice("sigma", "σ", ("sigma",), log_y=True),
)
BY_KEY = {c.key: c for c in CHOICES}
DEFAULT_CHOICE = "diff_ratio"

# Short names for a column in legends and the numbers panel.
COLUMN_LABELS: dict[str, str] = {
    "sigma": "σ",
    "sigma_next": "σ next",
    "timestep": "t",
    "evaluations": "evals",
    "tnr_factor": "S",
    "norm_cond": "‖c‖",
    "norm_uncond": "‖u‖",
    "norm_diff": "‖c−u‖",
    "diff_ratio": "‖c−u‖/‖u‖",
    "cos_diff_uncond": "cos(c−u,u)",
    "norm_guided": "‖guided‖",
    "norm_x": "‖x‖",
    "std_x": "std x",
    "x0_change": "x0 change",
}


def choices_for(columns: Iterable[str] = ()) -> list[SeriesChoice]:
    """The short list, then one entry per extra column a unit added (APG's parts, PAG's term ...)."""
    known = {c for choice in CHOICES for c in choice.columns} | set(COLUMN_LABELS) | {"index"}
    extras = [SeriesChoice(name, name.replace("_", " "), (name,)) for name in columns if name not in known]
    return [*CHOICES, *extras]


def choice(key: str | None) -> SeriesChoice:
    """The choice named `key`; an extra column's name stands for itself (a unit's own series)."""
    if key in BY_KEY:
        return BY_KEY[key]
    if key:
        return SeriesChoice(key, key.replace("_", " "), (key,))
    return BY_KEY[DEFAULT_CHOICE]


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def series_of(rows: Sequence[Row], chosen: SeriesChoice, *, x: str = "index", prefix: str = "") -> list[Series]:
    """One Series per column of `chosen`, over the column `x`: "step" (the 1-based step the Lab shows,
    index + 1), "index" or "sigma" (run pairs)."""
    out = []
    for column in chosen.columns:
        points = []
        for row in rows:
            xv = _number(row.get("index")) if x == "step" else _number(row.get(x))
            if xv is not None and x == "step":
                xv += 1
            if xv is not None:
                points.append((xv, _number(row.get(column))))
        label = COLUMN_LABELS.get(column, column.replace("_", " ")) if len(chosen.columns) > 1 else chosen.label
        out.append(Series(prefix + label, points))
    return out


def has_values(rows: Sequence[Row], chosen: SeriesChoice) -> bool:
    return any(_number(row.get(c)) is not None for row in rows for c in chosen.columns)


ROW_ORDER = (
    "sigma",
    "sigma_next",
    "timestep",
    "evaluations",
    "tnr_factor",
    "diff_ratio",
    "norm_diff",
    "norm_cond",
    "norm_uncond",
    "cos_diff_uncond",
    "norm_guided",
    "norm_x",
    "std_x",
    "x0_change",
)


def row_items(row: Row | None) -> list[tuple[str, str]]:
    """(label, value) pairs of a row for the numbers panel: the known columns in a fixed order, then the
    units' extras; a missing value is "–"."""
    if not row:
        return []
    names = [c for c in ROW_ORDER if c in row] + [c for c in row if c not in ROW_ORDER and c != "index"]
    items = []
    for name in names:
        value = _number(row.get(name))
        text = "–" if value is None else str(int(value)) if name == "evaluations" else format_number(value)
        items.append((COLUMN_LABELS.get(name, name.replace("_", " ")), text))
    return items


def row_text(row: Row | None, width: int = 11) -> str:
    """A row as aligned lines, one value a line."""
    return "\n".join(f"{label:<{width}} {value}" for label, value in row_items(row))
