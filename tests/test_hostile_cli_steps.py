"""`history steps ID` of a run that never finished says so: a failed, cancelled or interrupted run has no
per-step rows because it stopped, not because "it was recorded before tnr-lab kept them, or with telemetry
off" (what it said for a run failed on a full disk or killed with kill -9)."""

from __future__ import annotations

import pytest

from tnr_tui.cli import main
from tnr_tui.services.history import open_store


@pytest.mark.parametrize("status", ["failed", "cancelled", "interrupted"])
def test_steps_of_a_run_that_stopped_says_it_stopped(tmp_path, capsys, status: str) -> None:
    store = open_store(tmp_path)
    run_id = store.create_run({"prompt": "a", "solver": "euler", "guidance": "cfg", "steps": 2})
    store.finish_run(run_id, status, error="boom")
    store.close()
    assert main(["--data-dir", str(tmp_path), "history", "steps", run_id, "--csv"]) == 1
    err = capsys.readouterr().err
    assert err == f"run {run_id} has no per-step rows: it was {status} before its rows were recorded\n", err


def test_steps_of_a_done_run_without_rows_keeps_its_reason(tmp_path, capsys) -> None:
    store = open_store(tmp_path)
    run_id = store.create_run({"prompt": "a", "solver": "euler", "guidance": "cfg", "steps": 2})
    store.finish_run(run_id, "done")
    store.close()
    assert main(["--data-dir", str(tmp_path), "history", "steps", run_id]) == 1
    assert "recorded before tnr-lab kept them, or with telemetry off" in capsys.readouterr().err
