"""Deleting runs, for the History screen and `tnr-lab history delete`: what a deletion removes, said before it
does, and which runs may not be deleted yet (docs/history.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tnr_tui.services.history.models import LIVE_STATUSES
from tnr_tui.services.text import visible


def is_live(store: Any, run: Any) -> bool:
    """A run still queued or sampling in a process that is alive (here, or on another host of a shared
    history): deleting it under its sampler lost the run, its image written nowhere. Cancel it first."""
    return run.status in LIVE_STATUSES and not store.process_gone(run)


DELETE_LIST_MAX = 8  # files named in the delete dialog; the rest are counted


def delete_question(store: Any, run: Any, files: list[Path]) -> str:
    """The delete dialog's text: the run, and exactly which files go (`Store.files_to_delete`) and which of
    its recorded files stay (outside the history's outputs/, or another run's too)."""
    lines = [f"Delete run {run.id}?", run.prompt.replace("\n", " ")[:200], ""]
    going = {Path(os.path.realpath(p)) for p in files}
    kept = [store.resolve(o.path) for o in run.outputs if Path(os.path.realpath(store.resolve(o.path))) not in going]
    if files:
        lines.append(f"It deletes {len(files)} file(s):")
        lines += [f"  {p}" for p in files[:DELETE_LIST_MAX]]
        if len(files) > DELETE_LIST_MAX:
            lines.append(f"  … and {len(files) - DELETE_LIST_MAX} more")
    else:
        lines.append("It deletes no file.")
    # A recorded file already gone (deleted by hand, a disk swapped) is neither deleted nor kept: say so, rather
    # than call the history's own file "not the history's own".
    missing = [p for p in kept if not os.path.lexists(p)]
    kept = [p for p in kept if os.path.lexists(p)]
    if missing:
        lines.append(f"{len(missing)} recorded file(s) are missing already:")
        lines += [f"  {p}" for p in missing[:DELETE_LIST_MAX]]
        if len(missing) > DELETE_LIST_MAX:
            lines.append(f"  … and {len(missing) - DELETE_LIST_MAX} more")
    if kept:
        lines.append(f"It keeps {len(kept)} recorded file(s) that are not the history's own to delete:")
        lines += [f"  {p}" for p in kept[:DELETE_LIST_MAX]]
        if len(kept) > DELETE_LIST_MAX:
            lines.append(f"  … and {len(kept) - DELETE_LIST_MAX} more")
    return "\n".join(visible(line) for line in lines)
