"""A run's per-step telemetry rows (engine.telemetry.StepTable) as the history stores them (schema 4).

One row per run in its own table, `run_steps` (run_id, format, names, steps, data):

- `names`: the table's column names, a JSON list (the telemetry's columns, then the units' extras);
- `data`: the values, row-major, as little-endian float64 (8 bytes a value, NaN for a missing one);
- `steps`: the number of rows (so len(data) == 8 * steps * len(names), checked when read).

Why this form: a run of 50 steps with 18 columns is 7.2 KiB, exact to the last bit (sigmas compare equal
across runs, so two runs' rows align by sigma), decoded without numpy (`array`); JSON of the same values
takes twice the room (15.1 KiB, measured) and a row per step would put 900 rows in another table per 50
runs. A table of its own keeps the runs table lean: listing, search and paging never read it, and deleting a
run removes its rows by the foreign key (ON DELETE CASCADE). Exports carry the rows as JSON
(`StepTable.to_dict`: columns and rows, null for a missing value); `history steps ID --json|--csv` prints
them.

Runs recorded before schema 4, or with telemetry off, have no row here: `Store.run_steps` gives None.
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tnr_tui.services.history.models import Base

if TYPE_CHECKING:
    from engine.telemetry import StepTable

# engine.telemetry is imported where it is used: importing any engine module loads the unit registries
# (about 0.5 s), which `history list` must not pay.

MAX_COLUMNS = 256  # far above the telemetry's ~20; bounds what an import may ask the store to hold


class RunSteps(Base):
    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(String(26), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    format: Mapped[int] = mapped_column(Integer)
    names: Mapped[str] = mapped_column(Text)  # JSON list of the column names
    steps: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # float64 little-endian, row-major; NaN = missing


def _check(table: StepTable) -> None:
    from engine.telemetry import TelemetryError

    if len(table.columns) > MAX_COLUMNS:
        raise TelemetryError(f"steps have {len(table.columns)} columns, more than {MAX_COLUMNS}")


def encode_values(run_id: str, table: StepTable) -> dict[str, Any]:
    """The stored row of a run's table, as column values (for a multi-row insert)."""
    from engine.telemetry import TELEMETRY_FORMAT

    _check(table)
    values = array("d", (math.nan if v is None else float(v) for row in table.rows for v in row))
    if sys.byteorder == "big":
        values.byteswap()
    return {
        "run_id": run_id,
        "format": TELEMETRY_FORMAT,
        "names": json.dumps(list(table.columns)),
        "steps": len(table.rows),
        "data": values.tobytes(),
    }


def encode(run_id: str, table: StepTable) -> RunSteps:
    """The stored row of a run's table."""
    return RunSteps(**encode_values(run_id, table))


def decode(row: RunSteps) -> StepTable:
    """The table of a stored row; TelemetryError when the row is not one this version wrote."""
    from engine.telemetry import INTEGER_COLUMNS, TELEMETRY_FORMAT, StepTable, TelemetryError

    if row.format != TELEMETRY_FORMAT:
        raise TelemetryError(f"run {row.run_id}: steps format {row.format} is not supported")
    try:
        names = json.loads(row.names)
    except (TypeError, ValueError):
        raise TelemetryError(f"run {row.run_id}: its step columns are not a JSON list") from None
    if not isinstance(names, list):
        raise TelemetryError(f"run {row.run_id}: its step columns are not a JSON list")
    data = bytes(row.data)
    if len(data) != 8 * row.steps * len(names):
        raise TelemetryError(
            f"run {row.run_id}: its step data holds {len(data)} bytes, not {8 * row.steps * len(names)}"
        )
    values = array("d")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    integers = {i for i, name in enumerate(names) if name in INTEGER_COLUMNS}
    width = len(names)
    rows = []
    for r in range(row.steps):
        chunk = values[r * width : (r + 1) * width]
        rows.append(tuple(None if math.isnan(v) else int(v) if i in integers else v for i, v in enumerate(chunk)))
    return StepTable(tuple(names), tuple(rows))


def table_from_record(value: Any, where: str) -> StepTable | None:
    """The `telemetry` of an exported run record (None when it has none); TelemetryError naming `where`."""
    from engine.telemetry import StepTable, TelemetryError

    if value is None:
        return None
    try:
        table = StepTable.from_dict(value)
        _check(table)
    except TelemetryError as e:
        raise TelemetryError(f"{where}: {e}") from None
    return table
