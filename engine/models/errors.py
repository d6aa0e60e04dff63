"""ModelError: the one error type of engine.models (its own module, so that every part can raise it without
importing the bundle)."""

from __future__ import annotations


class ModelError(Exception):
    """A model cannot be loaded or used; the message names the path and the problem, for the user as is."""
