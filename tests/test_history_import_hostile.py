"""Imports of records a hostile pass wrote by hand (issue 10): what a record claims is not trusted blindly."""

from __future__ import annotations

import json
import os

import pytest

from tnr_tui.services.history import HistoryError, open_store
from tnr_tui.services.history.transfer import IMPORTED_LIVE, export_runs, import_runs


def exported_record(tmp_path):
    src = open_store(tmp_path / "src")
    run_id = src.create_run({"prompt": "a circle", "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}})
    src.finish_run(run_id, "done")
    out = tmp_path / "one.jsonl"
    export_runs(src, "jsonl", out)
    src.close()
    return json.loads(out.read_text())


def write(tmp_path, records):
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("status", ["running", "queued"])
def test_a_run_exported_while_running_imports_as_interrupted_not_running_for_ever(tmp_path, status):
    rec = exported_record(tmp_path)
    dst = open_store(tmp_path / "dst")
    # The pid is alive on this host (this process), so crash recovery would never end it, and a run of
    # another host is never ended by it at all.
    live = {**rec, "id": "01M8S00000000000000000000A", "status": status, "pid": os.getpid(), "host": dst.host}
    other = {**rec, "id": "01M8S00000000000000000000B", "status": status, "host": "elsewhere", "error": "its own"}
    assert import_runs(dst, write(tmp_path, [live, other])).added == 2
    dst.mark_interrupted()
    a, b = dst.get_run(live["id"]), dst.get_run(other["id"])
    assert (a.status, a.error) == ("interrupted", IMPORTED_LIVE)
    assert (b.status, b.error) == ("interrupted", "its own")
    done = {**rec, "id": "01M8S00000000000000000000C"}
    import_runs(dst, write(tmp_path, [done]))
    assert dst.get_run(done["id"]).status == "done"


@pytest.mark.parametrize("value", ["no", "false", 0, 1, []])
def test_favourite_must_be_a_boolean(tmp_path, value):
    rec = {**exported_record(tmp_path), "favourite": value}
    dst = open_store(tmp_path / "dst")
    with pytest.raises(HistoryError, match="favourite must be true or false"):
        import_runs(dst, write(tmp_path, [rec]))
    assert dst.count_runs() == 0


def test_favourite_true_and_false_import_as_given(tmp_path):
    rec = exported_record(tmp_path)
    dst = open_store(tmp_path / "dst")
    starred = {**rec, "id": "01M8S00000000000000000000D", "favourite": True}
    plain = {**rec, "id": "01M8S00000000000000000000E", "favourite": False}
    unset = {k: v for k, v in rec.items() if k != "favourite"} | {"id": "01M8S00000000000000000000F"}
    import_runs(dst, write(tmp_path, [starred, plain, unset]))
    assert [dst.get_run(r["id"]).favourite for r in (starred, plain, unset)] == [True, False, False]
