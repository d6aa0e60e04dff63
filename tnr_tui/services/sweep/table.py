"""The sweep's CSV: one row per image, written whole through a temporary file (a crash never leaves half a file)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tnr_tui.services.cells import GridCell, cell_of_request  # noqa: F401  (GridCell: the cells of a plan)

# ---- the CSV ------------------------------------------------------------------------------------------------

CSV_COLUMNS: tuple[str, ...] = (
    "sweep",
    "model_identity",
    "run_id",
    "prompt",
    "guidance",
    "scale",
    "solver",
    "steps",
    "seed",
    "evaluations",
    "planned_evaluations",
    "seconds",
    "loras",
    "colourfulness",
    "contrast",
    "saturation",
    "dynamic_range",
    "clip_score",
    "check_colour",
    "check_background",
    "check_shape",
    "check_all",
    "image",
    "key",
)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("key")]


def write_rows(csv_path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write the whole CSV through a temporary file, so a crash never leaves half a file."""
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
        os.replace(tmp, csv_path)
    finally:  # SIGTERM or ctrl-c mid-write: the old CSV stays whole and no temp file is left
        tmp.unlink(missing_ok=True)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
