"""The run store on real SQLite files: pragmas, queries, crash safety, concurrent writers, refusal of bad files."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tnr_tui.services.history import HistoryError, RunFilter, open_store
from tnr_tui.services.history import store as store_module
from tnr_tui.services.history.ids import id_time_ms, is_run_id, new_run_id
from tnr_tui.services.history.models import Base, utcnow
from tnr_tui.services.history.paths import DB_NAME, filesystem_type, is_network_fs

REPO = Path(__file__).resolve().parents[1]


def request(prompt: str = "a red circle", **kw: object) -> dict:
    base = {"prompt": prompt, "solver": "euler", "guidance": "cfg", "steps": 4, "seed": 1, "scale": 5.0}
    base.update(kw)
    return base


def run_child(code: str, data_dir: Path, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- ids -------------------------------------------------------------------------------------------


def test_run_ids_sort_by_time_and_are_strictly_increasing_within_a_process():
    ids = [new_run_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert all(is_run_id(i) for i in ids)
    assert abs(id_time_ms(ids[0]) - time.time() * 1000) < 5000
    assert new_run_id(now_ms=1_000) < new_run_id(now_ms=10**12)


# ---- opening ---------------------------------------------------------------------------------------


def test_new_store_uses_wal_foreign_keys_busy_timeout_and_latest_schema(tmp_path):
    with open_store(tmp_path) as store:
        assert store.journal_mode == "wal"
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == store_module.BUSY_SLICE_S * 1000
            assert conn.exec_driver_sql("PRAGMA user_version").scalar() == store_module.migrations.LATEST_VERSION
    assert (tmp_path / "outputs").is_dir()


def test_data_dir_comes_from_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TNR_LAB_HOME", str(tmp_path / "env-home"))
    with open_store() as store:
        assert store.data_dir == tmp_path / "env-home"
    with open_store(tmp_path / "arg-home") as store:
        assert store.db_path == tmp_path / "arg-home" / DB_NAME


def test_empty_data_dir_is_an_error_and_an_empty_env_is_unset(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.setenv("TNR_LAB_HOME", str(tmp_path / "env-home"))
    for empty in ("", "  "):
        with pytest.raises(HistoryError, match="--data-dir is empty"):
            open_store(empty)
    assert not (tmp_path / "env-home").exists()  # nothing fell back to the environment's directory
    monkeypatch.setenv("TNR_LAB_HOME", "")
    monkeypatch.setattr(platformdirs, "user_data_dir", lambda *a, **k: str(tmp_path / "user-data"))
    with open_store() as store:
        assert store.data_dir == tmp_path / "user-data"


def test_history_file_that_is_a_directory_is_a_message(tmp_path):
    (tmp_path / DB_NAME).mkdir()
    with pytest.raises(HistoryError, match="is a directory, not a SQLite file"):
        open_store(tmp_path)
    assert (tmp_path / DB_NAME).is_dir() and list((tmp_path / DB_NAME).iterdir()) == []


def test_migrated_schema_equals_the_orm_models(tmp_path):
    with open_store(tmp_path) as store:
        insp = inspect(store.engine)
        for table in Base.metadata.sorted_tables:
            on_disk = {c["name"]: c["nullable"] for c in insp.get_columns(table.name)}
            declared = {c.name: c.nullable for c in table.columns}
            assert on_disk == declared, table.name
            declared_indexes = {i.name for i in table.indexes}
            assert declared_indexes <= {i["name"] for i in insp.get_indexes(table.name)}


def test_write_transactions_begin_immediate(tmp_path):
    """A writer holding the lock makes a second writer wait (busy timeout), not fail at once."""
    with open_store(tmp_path) as store:
        statements: list[str] = []
        from sqlalchemy import event

        event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        run_id = store.create_run(request())
        store.get_run(run_id)
    assert "BEGIN IMMEDIATE" in statements
    assert "BEGIN DEFERRED" in statements


# ---- crash safety and concurrency --------------------------------------------------------------------

CRASHING_WRITER = """
import sys, time
from tnr_tui.services.history import open_store
store = open_store(sys.argv[1])
run_id = store.create_run({"prompt": "doomed", "solver": "euler", "guidance": "cfg", "steps": 4, "seed": 1})
print(run_id, flush=True)
i = 0
while True:  # keep writing until killed: the kill lands mid-transaction sooner or later
    other = store.create_run({"prompt": f"filler {i}", "solver": "euler", "guidance": "cfg", "steps": 4, "seed": i})
    store.finish_run(other, "done", stats={"seconds": 0.1, "model_evaluations": 8})
    i += 1
"""


def test_sigkill_mid_run_leaves_interrupted_run_and_sound_file(tmp_path):
    open_store(tmp_path).close()
    child = run_child(CRASHING_WRITER, tmp_path)
    run_id = child.stdout.readline().strip()
    assert is_run_id(run_id), child.stderr.read()
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()

    with open_store(tmp_path) as store:
        run = store.get_run(run_id)
        assert run.status == "interrupted"
        assert run.finished_at is not None and "ended unexpectedly" in run.error
        assert store.count_runs(RunFilter(status="running")) == 0
        assert store.count_runs(RunFilter(status="done")) > 0
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_running_row_of_a_live_process_is_left_alone(tmp_path):
    with open_store(tmp_path) as store:
        run_id = store.create_run(request())
    with open_store(tmp_path) as store:  # this very process is alive
        assert store.get_run(run_id).status == "running"
        assert store.mark_interrupted(pid_alive=lambda pid: False) == [run_id]
        assert store.get_run(run_id).status == "interrupted"


WRITER = """
import sys
from tnr_tui.services.history import open_store
from tnr_tui.services.history.store import OutputFile
store = open_store(sys.argv[1])
tag = sys.argv[2]
for i in range(int(sys.argv[3])):
    run_id = store.create_run({"prompt": f"{tag} {i}", "solver": "euler", "guidance": "cfg", "steps": 4, "seed": i})
    store.finish_run(run_id, "done", stats={"seconds": 0.01, "model_evaluations": 8},
                     outputs=[OutputFile("image", store.outputs_dir / f"{run_id}.png", "0" * 64, 1)])
print("ok")
"""


def test_two_writer_processes_lose_nothing_and_raise_no_lock_error(tmp_path):
    open_store(tmp_path).close()
    n = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), tag, str(n)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("alpha", "beta")
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and out.strip() == "ok", err
        assert "locked" not in err
    with open_store(tmp_path) as store:
        assert store.count_runs(RunFilter(status="done", text="alpha")) == n
        assert store.count_runs(RunFilter(status="done", text="beta")) == n
        assert sum(len(r.outputs) for r in store.iter_runs()) == 2 * n


# ---- queries ---------------------------------------------------------------------------------------


def test_keyset_pages_cover_every_run_once_newest_first(tmp_path):
    with open_store(tmp_path) as store:
        ids = [store.create_run(request(f"prompt {i}", seed=i)) for i in range(23)]
        seen, after = [], None
        while True:
            page = store.list_runs(after=after, limit=10)
            seen += [r.id for r in page]
            if len(page) < 10:
                break
            after = page[-1].id
        assert seen == ids[::-1]


def test_filters_select_exactly_the_matching_runs(tmp_path):
    with open_store(tmp_path) as store:
        a = store.create_run(request("A Red circle", guidance="tnr", solver="heun"))
        b = store.create_run(request("blue square 100%_done", negative_prompt="red", tags={"sweep": "s1"}))
        c = store.create_run(request("green", guidance="cfg++"))
        store.finish_run(a, "done")
        store.finish_run(c, "failed", error="boom")
        store.set_favourite(c)

        def ids(**kw):
            return {r.id for r in store.list_runs(RunFilter(**kw))}

        assert ids(text="red") == {a, b}  # prompt or negative prompt, case-insensitive
        assert ids(text="100%_") == {b}  # LIKE wildcards are literal
        assert ids(text="0%x") == set()
        assert ids(guidance="tnr") == {a}
        assert ids(solver="heun") == {a}
        assert ids(status="running") == {b}
        assert ids(status="failed") == {c}
        assert ids(favourite=True) == {c}
        assert ids(sweep="s1") == {b}
        now = utcnow()
        assert ids(since=now - timedelta(minutes=1)) == {a, b, c}
        assert ids(until=now - timedelta(minutes=1)) == set()
        assert store.count_runs(RunFilter(guidance="cfg")) == 1
        with pytest.raises(ValueError, match="unknown status 'finished'"):
            RunFilter(status="finished")
        # A misspelt method or solver would match nothing and read as "no runs": it is refused by name.
        with pytest.raises(ValueError, match="unknown guidance method 'foo'; choose one of: none, cfg"):
            RunFilter(guidance="foo")
        with pytest.raises(ValueError, match="unknown solver 'Huen'; choose one of: euler, "):
            RunFilter(solver="Huen")
        assert RunFilter(solver="Heun").solver == "heun"  # A1111's name for it (tests/test_hostile_cli_aliases.py)


def test_find_run_by_prefix_and_unknown_id_message(tmp_path):
    with open_store(tmp_path) as store:
        run_id = store.create_run(request())
        assert store.find_run(run_id[-26:].lower()).id == run_id
        with pytest.raises(HistoryError, match="no run with id 'NOPE'"):
            store.find_run("NOPE")


def test_delete_run_cascades_to_outputs(tmp_path):
    with open_store(tmp_path) as store:
        run_id = store.create_run(request())
        f = store.outputs_dir / "x.png"
        f.write_bytes(b"png")
        store.finish_run(run_id, "done", outputs=[store_module.OutputFile.of("image", f)])
        assert store.get_run(run_id).outputs[0].path == "outputs/x.png"
        store.delete_run(run_id, delete_files=True)
        assert store.get_run(run_id) is None and not f.exists()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM outputs").scalar() == 0


def test_delete_removes_only_the_historys_own_files_never_a_users_file_or_a_link_out(tmp_path):
    """Issue 10, defect 1: a run may record the user's own file (an import by absolute path) or a file whose
    path leads out of outputs/ through a symlink; deleting the run with its files must leave those alone."""
    data_dir, elsewhere = tmp_path / "home", tmp_path / "users-pictures"
    elsewhere.mkdir()
    with open_store(data_dir) as store:
        own = store.new_output_path("X", ".png")
        own.parent.mkdir(parents=True)
        own.write_bytes(b"own")
        users = elsewhere / "holiday.png"
        users.write_bytes(b"the user's")
        linked_target = elsewhere / "linked.png"
        linked_target.write_bytes(b"linked")
        link = store.outputs_dir / "link.png"
        link.symlink_to(linked_target)
        escape = store.outputs_dir / "escape"
        escape.symlink_to(elsewhere, target_is_directory=True)
        run_id = store.create_run(request())
        store.finish_run(
            run_id,
            "done",
            outputs=[
                store_module.OutputFile.of("image", own),
                store_module.OutputFile.of("image", users),
                store_module.OutputFile.of("image", link),
                store_module.OutputFile.of("latent", escape / "holiday.png"),
            ],
        )
        # A path recorded relative to the data dir that climbs out of it (a crafted JSONL import).
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO outputs (run_id, kind, path, sha256, size) VALUES (?, 'latent', ?, ?, 1)",
                (run_id, "outputs/../../users-pictures/holiday.png", "0" * 64),
            )
        assert store.files_to_delete(run_id) == [Path(os.path.realpath(own))]
        assert store.delete_run(run_id, delete_files=True) == [Path(os.path.realpath(own))]
        assert store.get_run(run_id) is None
    assert not own.exists()
    assert users.read_bytes() == b"the user's" and linked_target.read_bytes() == b"linked"
    assert link.is_symlink() and escape.is_symlink()


def test_delete_keeps_a_file_that_another_run_still_records(tmp_path):
    with open_store(tmp_path) as store:
        f = store.outputs_dir / "shared.png"
        f.write_bytes(b"png")
        first, second = store.create_run(request()), store.create_run(request())
        for run_id in (first, second):
            store.finish_run(run_id, "done", outputs=[store_module.OutputFile.of("image", f)])
        assert store.files_to_delete(first) == []
        assert store.delete_run(first, delete_files=True) == []
        assert f.exists()
        assert store.files_to_delete(second) == [Path(os.path.realpath(f))]
        store.delete_run(second, delete_files=True)
        assert not f.exists()
        with pytest.raises(HistoryError, match="no run with id"):
            store.files_to_delete(second)


# ---- bad files -------------------------------------------------------------------------------------


def test_corrupt_file_is_refused_with_a_message_and_left_untouched(tmp_path):
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a database at all" * 100)
    before = sha(db)
    with pytest.raises(HistoryError, match="corrupt or not a SQLite database; it was left untouched"):
        open_store(tmp_path)
    assert sha(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME, "outputs"]


def test_damaged_sqlite_file_is_refused_untouched(tmp_path):
    with open_store(tmp_path) as store:
        for i in range(50):
            store.create_run(request(f"p{i}" * 50))
    db = tmp_path / DB_NAME
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page, after the header
    db.write_bytes(bytes(data))
    before = sha(db)
    with pytest.raises(HistoryError, match="corrupt"):
        open_store(tmp_path)
    assert sha(db) == before


def test_newer_schema_is_refused_untouched(tmp_path):
    open_store(tmp_path).close()
    db = tmp_path / DB_NAME
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    before = sha(db)
    with pytest.raises(HistoryError, match="schema version 99, newer than this tnr-lab understands"):
        open_store(tmp_path)
    assert sha(db) == before


def test_foreign_sqlite_file_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(HistoryError, match="not a tnr-lab history"):
        open_store(tmp_path)


# ---- network filesystems ---------------------------------------------------------------------------


def test_filesystem_type_picks_the_longest_mount_point(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/home /home nfs4 rw 0 0\n"
        "fs /home/me/scratch lustre rw 0 0\n"
        "sshfs#x /mnt/my\\040box fuse.sshfs rw 0 0\n"
    )
    assert filesystem_type(Path("/home/me/lab"), str(mounts)) == "nfs4"
    assert filesystem_type(Path("/home/me/scratch/lab"), str(mounts)) == "lustre"
    assert filesystem_type(Path("/homely"), str(mounts)) == "ext4"
    assert filesystem_type(Path("/mnt/my box/x"), str(mounts)) == "fuse.sshfs"
    assert [is_network_fs(t) for t in ("nfs4", "lustre", "gpfs", "fuse.sshfs", "cifs", "ext4", "xfs", "tmpfs")] == [
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_network_filesystem_gets_a_warning_and_rollback_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "filesystem_type", lambda path: "nfs4")
    warnings: list[str] = []
    with open_store(tmp_path, warn=warnings.append) as store:
        assert store.journal_mode == "delete"
        store.create_run(request())
    assert len(warnings) == 1 and "network filesystem (nfs4)" in warnings[0]
    assert not Path(str(tmp_path / DB_NAME) + "-wal").exists()


def test_child_process_sees_the_pid_of_its_parent_as_alive():
    assert store_module._pid_alive(os.getpid())
    assert not store_module._pid_alive(2**22 + 12345)
