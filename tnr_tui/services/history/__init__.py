"""The run history: a SQLite store (through SQLAlchemy), PNG metadata, export/import. No torch, no textual.

Entry point: `open_store(data_dir=None, readonly=False) -> Store` (see docs/CONTRACTS.md, docs/history.md).
"""

from __future__ import annotations

from tnr_tui.services.history.models import RUN_STATUSES, Output, Run
from tnr_tui.services.history.paths import resolve_data_dir
from tnr_tui.services.history.queries import FilterError, RunFilter
from tnr_tui.services.history.store import (
    HistoryBusy,
    HistoryError,
    HistoryUnwritable,
    NoHistory,
    OutputFile,
    Store,
    open_store,
)

__all__ = [
    "RUN_STATUSES",
    "FilterError",
    "HistoryBusy",
    "HistoryError",
    "HistoryUnwritable",
    "NoHistory",
    "Output",
    "OutputFile",
    "Run",
    "RunFilter",
    "Store",
    "open_store",
    "resolve_data_dir",
]
