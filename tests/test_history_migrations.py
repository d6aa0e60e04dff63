"""Migrations from the first schema: the data survives, a backup is made first, the result is the latest schema."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tnr_tui.services.history import HistoryError, RunFilter, open_store
from tnr_tui.services.history.migrations import LATEST_VERSION, migrate
from tnr_tui.services.history.paths import DB_NAME


def make_v1_file(path):
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == [1]
    req = {"prompt": "old run", "solver": "heun", "guidance": "tnr", "steps": 8, "seed": 3, "tags": {"sweep": "s-old"}}
    conn.execute(
        "INSERT INTO runs (id, created_at, status, request_json, prompt, negative_prompt, model, solver, guidance,"
        " scale, steps, seed, schedule, favourite, notes, origin)"
        " VALUES ('01HZZZZZZZZZZZZZZZZZZZZZZZ', '2024-06-01 10:00:00.000000', 'done', ?, 'old run', '', 'embedded',"
        " 'heun', 'tnr', 1.0, 8, 3, 'default', 1, 'kept', 'cli')",
        (json.dumps(req),),
    )
    conn.execute(
        "INSERT INTO outputs (run_id, kind, path, sha256, size) VALUES ('01HZZZZZZZZZZZZZZZZZZZZZZZ', 'image',"
        " 'outputs/old.png', ?, 10)",
        ("a" * 64,),
    )
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


def test_v1_file_is_backed_up_then_migrated_keeping_its_runs(tmp_path):
    make_v1_file(tmp_path / DB_NAME)
    with open_store(tmp_path) as store:
        run = store.get_run("01HZZZZZZZZZZZZZZZZZZZZZZZ")
        assert (run.prompt, run.solver, run.guidance, run.status, run.favourite, run.notes) == (
            "old run",
            "heun",
            "tnr",
            "done",
            True,
            "kept",
        )
        assert run.outputs[0].path == "outputs/old.png"
        # Migration 2 fills the sweep column from the stored request's tags.
        assert [r.id for r in store.list_runs(RunFilter(sweep="s-old"))] == [run.id]
        new_id = store.create_run({"prompt": "new", "solver": "euler", "guidance": "cfg", "steps": 2, "seed": 0})
        assert store.get_run(new_id).status == "running"
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA user_version").scalar() == LATEST_VERSION

    backups = sorted(tmp_path.glob(f"{DB_NAME}.v1-*.bak"))
    assert len(backups) == 1
    conn = sqlite3.connect(backups[0])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT prompt FROM runs").fetchall() == [("old run",)]
    assert "sweep" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    conn.close()


def test_a_current_file_is_neither_migrated_nor_backed_up_again(tmp_path):
    open_store(tmp_path).close()
    open_store(tmp_path).close()
    assert list(tmp_path.glob("*.bak")) == []


def test_failed_migration_rolls_back_to_the_old_version(tmp_path, monkeypatch):
    from tnr_tui.services.history import migrations

    make_v1_file(tmp_path / DB_NAME)

    def broken(conn):
        conn.execute("ALTER TABLE runs ADD COLUMN sweep VARCHAR(64)")
        raise sqlite3.OperationalError("disk full (simulated)")

    monkeypatch.setitem(migrations.MIGRATIONS, 2, ("broken", broken))
    with pytest.raises(HistoryError, match=r"disk full \(simulated\)"):
        open_store(tmp_path)
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "sweep" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    conn.close()
