"""The run history: a SQLite store (through SQLAlchemy), PNG metadata, export/import. No torch, no textual.

Entry point: `open_store(data_dir=None) -> Store` (see docs/CONTRACTS.md).
"""

from __future__ import annotations

from tnr_tui.history.models import RUN_STATUSES, Output, Run
from tnr_tui.history.paths import resolve_data_dir
from tnr_tui.history.queries import FilterError, RunFilter
from tnr_tui.history.store import HistoryError, OutputFile, Store, open_store

__all__ = [
    "RUN_STATUSES",
    "FilterError",
    "HistoryError",
    "Output",
    "OutputFile",
    "Run",
    "RunFilter",
    "Store",
    "open_store",
    "resolve_data_dir",
]
