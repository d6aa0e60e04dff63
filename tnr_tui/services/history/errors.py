"""The history's user-facing errors (their own module so that paths.py and store.py can both raise them).

Every message is one line for the user as is. The subclasses say what a caller can do about it: wait
(`HistoryBusy`), open read-only or free space (`HistoryUnwritable`), or nothing to read yet (`NoHistory`).
"""

from __future__ import annotations


class HistoryError(Exception):
    """The history cannot be used as asked; the message is for the user as is."""


class HistoryBusy(HistoryError):
    """Another process held the history's write lock for longer than this call would wait."""


class HistoryUnwritable(HistoryError):
    """The history cannot be written here: `reason` is "read-only file system", "permission denied" or
    "no space left on device" (a read-only open may still work for the first two)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoHistory(HistoryError):
    """A read-only open found no history in the data directory (and created nothing)."""
