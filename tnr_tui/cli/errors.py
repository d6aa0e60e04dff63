"""The CLI's own error: input or environment the user can fix, printed as one line without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input or environment; printed without traceback."""
