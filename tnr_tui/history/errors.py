"""The history's user-facing error (its own module so that paths.py and store.py can both raise it)."""

from __future__ import annotations


class HistoryError(Exception):
    """The history cannot be used as asked; the message is for the user as is."""
