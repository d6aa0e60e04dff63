"""Issue 10's data-loss bug, with real processes and real files: nothing a process does to its own history
handle may let another process checkpoint and delete the WAL under it (PITFALLS.md, SQLite and POSIX locks)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tnr_tui.services.history import open_store
from tnr_tui.services.history.paths import DB_NAME

REPO = Path(__file__).resolve().parents[1]


def _open_and_close_in_another_process(data_dir: Path) -> None:
    code = "import sys; from tnr_tui.services.history import open_store; s = open_store(sys.argv[1]); s.list_runs(); s.close()"
    subprocess.run([sys.executable, "-c", code, str(data_dir)], cwd=REPO, check=True, timeout=60)


def _status_seen_by_a_third_process(db: Path, run_id: str) -> str:
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        "print(c.execute('select status from runs where id = ?', (sys.argv[2],)).fetchone()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(db), run_id], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def test_a_process_that_opens_the_history_twice_keeps_its_wal_when_another_process_closes_it(tmp_path):
    """Old code: the second open_store read the file's header with open()/close(), which dropped this
    process's SQLite locks; the other process then believed it was the last user, checkpointed and deleted
    history.sqlite-wal and -shm, and the finish_run below went into a deleted WAL (the row stayed `running`)."""
    data_dir = tmp_path / "home"
    first = open_store(data_dir)
    run_id = first.create_run({"prompt": "x", "steps": 4})
    second = open_store(data_dir)  # e.g. the TUI's app and its worker
    wal = data_dir / f"{DB_NAME}-wal"
    assert wal.exists()
    try:
        for _ in range(3):
            _open_and_close_in_another_process(data_dir)
            assert wal.exists(), "another process deleted the WAL this process still writes into"
        second.finish_run(run_id, "done", stats={"seconds": 1.0})
        assert _status_seen_by_a_third_process(data_dir / DB_NAME, run_id) == "done"
        assert wal.exists()
    finally:
        second.close()
        first.close()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_one_store_per_history_file_per_process_counted_by_close(tmp_path):
    data_dir = tmp_path / "home"
    first = open_store(data_dir)
    again = open_store(str(data_dir))
    assert again is first  # the same engine: no second handle on the file in this process
    again.close()
    assert first.count_runs() == 0  # still open for its other holder
    first.close()
    fresh = open_store(data_dir)
    assert fresh is not first
    fresh.close()


def test_open_store_never_reads_the_database_file_with_plain_file_io(tmp_path, monkeypatch):
    """The rule itself (docs/history.md): only SQLite touches history.sqlite and its -wal/-shm."""
    import builtins
    import io

    data_dir = tmp_path / "home"
    open_store(data_dir).close()
    touched: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def spy(opener):
        def wrapped(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and DB_NAME in os.fspath(file):
                touched.append(os.fspath(file))
            return opener(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    monkeypatch.setattr(os, "open", spy(real_os_open))
    store = open_store(data_dir)
    store.create_run({"prompt": "x"})
    store.close()
    assert touched == []
