"""`tnr-lab` with no command: open the lab (the Textual app), after checking its options."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tnr_tui.cli.errors import UserError


def run_app(args: Any) -> int:
    """Launch the TUI: args has data_dir, image_protocol, model, threads."""
    from tnr_tui.services.threads import choose_cpu_threads
    from tnr_tui.ui.app import TnrLabApp
    from tnr_tui.ui.widgets.picture import ENV_PROTOCOL

    protocol = getattr(args, "image_protocol", None) or os.environ.get(ENV_PROTOCOL, "auto")
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and not str(data_dir).strip():
        raise UserError("--data-dir is empty; give a directory (or leave it out for the default)")
    threads = getattr(args, "threads", None)
    try:
        choose_cpu_threads(threads)  # a bad --threads or $TNR_LAB_THREADS stops here, not in the worker
    except ValueError as e:
        raise UserError(str(e)) from None
    url, outputs = getattr(args, "history_url", None), getattr(args, "outputs", None)
    store_fn = None
    if url is not None or outputs is not None:

        def store_fn(directory: Path | None) -> Any:
            from tnr_tui.services.history import open_store

            # As the app opens it by default (its warnings as toasts), at --history-url / --outputs.
            return open_store(directory, url=url, outputs=outputs, warn=app._history_warning)

    app = TnrLabApp(
        data_dir=Path(data_dir) if data_dir else None,
        model=getattr(args, "model", None),
        image_protocol=protocol,
        threads=threads,
        store_fn=store_fn,
    )
    result = app.run()
    if app.worker_stuck:
        # The terminal is restored and the history closed the run; the worker is inside torch, and Python's
        # own shutdown under it would abort the process (exit 134). End here, with the status the app chose.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(app.return_code or result or 0))
    # A crash (Textual prints its traceback after restoring the terminal) sets a non-zero return code: the
    # exit status says so, not 0.
    if app.return_code:
        return int(app.return_code)
    return int(result or 0)
