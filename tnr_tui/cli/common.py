"""What several commands share: opening the history with its errors worded for the command line."""

from __future__ import annotations

import argparse
from typing import Any

from tnr_tui.cli.errors import UserError


def open_history(args: argparse.Namespace) -> Any:
    """The store of --data-dir / $TNR_LAB_HOME / the user data dir (or of --history-url / $TNR_LAB_HISTORY_URL,
    with --outputs / $TNR_LAB_OUTPUTS), with history errors as UserError. Every command opens it here.

    Commands whose parser sets `readonly` (list, show, export) open it read-only: they work on a read-only
    history and never create one (`NoHistory` passes through for `run` to word).
    """
    from tnr_tui.services.history import HistoryError, NoHistory, open_store

    try:
        return open_store(
            getattr(args, "data_dir", None),
            url=getattr(args, "history_url", None),
            outputs=getattr(args, "outputs", None),
            readonly=getattr(args, "readonly", False),
        )
    except NoHistory:
        raise
    except HistoryError as e:
        raise UserError(str(e)) from None
