"""The history on a real local PostgreSQL (issue 16, part 3): the same store API, migrations and guarantees.

The server is started by the test (localpg.LocalPostgres: Debian's package, else pgserver's binaries, as a
non-root user on a unix socket in a temporary directory); every test gets an empty database of its own.
Skipped, with the reason, only where no server can start or psycopg is missing (.ci/run installs both).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tnr_tui.services.history import HistoryBusy, HistoryError, NoHistory, OutputFile, RunFilter, open_store
from tnr_tui.services.history import store as store_module
from tnr_tui.services.history.ids import new_run_id

REPO = Path(__file__).resolve().parents[1]

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'tnr-lab[postgres]')")


@pytest.fixture
def server(pg_server):
    return pg_server  # the session's one server (tests/conftest.py)


@pytest.fixture
def url(pg_url) -> str:
    return pg_url


def request_dict(prompt: str, seed: int = 0, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "solver": "euler", "guidance": "cfg", "steps": 2, "seed": seed, **extra}


def finished_with_image(store, prompt: str, colour: str = "red", **extra: Any) -> tuple[str, Path]:
    run_id = store.create_run(request_dict(prompt, **extra))
    path = store.new_output_path(run_id, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    store.finish_run(run_id, "done", stats={"seconds": 0.5}, outputs=[OutputFile.of("image", path)])
    return run_id, path


# ---- schema -------------------------------------------------------------------------------------------


def test_every_sqlite_migration_has_its_postgresql_twin() -> None:
    from tnr_tui.services.history import migrations

    assert (
        sorted(migrations.POSTGRES_MIGRATIONS)
        == sorted(migrations.MIGRATIONS)
        == list(range(1, migrations.LATEST_VERSION + 1))
    )


def test_a_new_database_is_migrated_once_to_the_schema_of_the_models(url: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect, text

    from tnr_tui.services.history import migrations
    from tnr_tui.services.history.models import Base

    with open_store(tmp_path, url=url) as store:
        assert store.journal_mode == "postgresql" and store.db_path is None
        assert "password" not in store.location
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT version FROM tnr_lab_schema")) == migrations.LATEST_VERSION
            assert conn.scalar(text("SELECT count(*) FROM tnr_lab_schema")) == 1
        found = inspect(engine)
        for table in Base.metadata.sorted_tables:
            columns = {c["name"]: c for c in found.get_columns(table.name)}
            assert set(columns) == {c.name for c in table.columns}, table.name
            for column in table.columns:
                if column.name != "search_key":  # NOT NULL here; SQLite could add it only nullable (models.py)
                    assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
        assert "ix_runs_search_key" in {i["name"] for i in found.get_indexes("runs")}
    finally:
        engine.dispose()
    # A second open (another host, another process) finds it current and changes nothing.
    with open_store(tmp_path, url=url) as store:
        assert store.count_runs() == 0


def test_concurrent_first_opens_migrate_once(url: str, tmp_path: Path) -> None:
    code = (
        "import sys; from tnr_tui.services.history import open_store; open_store(sys.argv[1], url=sys.argv[2]).close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"h{i}"), url], cwd=REPO, stderr=subprocess.PIPE)
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()


def test_what_the_database_holds_is_checked_before_anything_is_written(server, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    empty = server.create_database("t_readonly_empty")
    with pytest.raises(NoHistory):
        open_store(tmp_path, url=empty, readonly=True)
    foreign = server.create_database("t_foreign")
    engine = create_engine(foreign)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (x int)"))
    with pytest.raises(HistoryError, match="not a tnr-lab history and was left untouched"):
        open_store(tmp_path, url=foreign)
    newer = server.create_database("t_newer")
    open_store(tmp_path, url=newer).close()
    with create_engine(newer).begin() as conn:
        conn.execute(text("UPDATE tnr_lab_schema SET version = 999"))
    with pytest.raises(HistoryError, match="newer than this tnr-lab"):
        open_store(tmp_path, url=newer)
    engine.dispose()
    with pytest.raises(HistoryError, match="does not exist"):
        open_store(tmp_path, url=server.url_for("no_such_database"))
    with pytest.raises(HistoryError, match="cannot reach the history"):
        open_store(tmp_path, url=f"postgresql+psycopg://tnr@/tnr?host={tmp_path}")  # no server there
    with pytest.raises(HistoryError, match="must be a PostgreSQL URL"):
        open_store(tmp_path, url="mysql://host/db")
    with pytest.raises(HistoryError, match="--history-url is empty"):
        open_store(tmp_path, url=" ")


# ---- the store API ------------------------------------------------------------------------------------


def test_the_store_api_round_trips_on_postgresql(url: str, tmp_path: Path) -> None:
    with open_store(tmp_path, url=url) as store:
        # What PostgreSQL would refuse where SQLite does not: a solver name over 16 characters, a seed
        # over 2^31, NaN in a metric and in the stats.
        run_id = store.create_run(request_dict("a Red circle", seed=2**62, solver="dpmpp_2s_ancestral"))
        path = store.new_output_path(run_id, ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(path)
        store.finish_run(
            run_id,
            "done",
            stats={"seconds": 1.5, "ratio": float("nan")},
            metrics={"contrast": float("nan"), "colourfulness": 3.0},
            outputs=[OutputFile.of("image", path)],
        )
        run = store.find_run(run_id[:12].lower())
        assert (run.status, run.seed, run.solver, run.seconds) == ("done", 2**62, "dpmpp_2s_ancestral", 1.5)
        assert math.isnan(run.metrics["contrast"]) and math.isnan(run.stats["ratio"])
        assert (
            run.outputs[0].path.startswith("outputs/")
            and run.output("image").sha256 == OutputFile.of("image", path).sha256
        )
        store.set_note(run_id, "kept ✓")
        store.set_favourite(run_id)
        other = store.create_run(request_dict("a blue square", guidance="apg"), status="queued")
        assert [r.id for r in store.list_runs()] == [other, run_id]
        assert [r.id for r in store.list_runs(after=other)] == [run_id]
        assert [r.id for r in store.list_runs(RunFilter(favourite=True))] == [run_id]
        assert [r.id for r in store.list_runs(RunFilter(guidance="apg", status="queued"))] == [other]
        assert store.count_runs(RunFilter(text="RED C")) == 1
        assert [r.id for r in store.iter_runs(batch=1)] == [other, run_id]
        assert store.finish_run(run_id, "failed", error="late", if_live=True) is False  # done stays done
        assert store.get_run(run_id).status == "done"
        assert store.files_to_delete(run_id) == [path]
        assert store.delete_run(run_id, delete_files=True) == [path] and not path.exists()
        assert store.get_run(run_id) is None
        with pytest.raises(HistoryError, match="no run with id"):
            store.set_note(run_id, "gone")


def test_runs_of_a_process_that_is_gone_are_interrupted_on_this_host_only(url: str, tmp_path: Path) -> None:
    from sqlalchemy import update

    from tnr_tui.services.history.models import Run

    with open_store(tmp_path, url=url) as store:
        mine = store.create_run(request_dict("mine"))
        theirs = store.create_run(request_dict("theirs"))
        store._writing(lambda s: s.execute(update(Run).where(Run.id == theirs).values(host="another-host", pid=1)))
        assert store.mark_interrupted(pid_alive=lambda pid: False) == [mine]
        assert store.get_run(mine).status == "interrupted"
        assert store.get_run(theirs).status == "running"  # another host's run is its own to recover


def test_a_read_only_open_refuses_every_write(url: str, tmp_path: Path) -> None:
    with open_store(tmp_path / "w", url=url) as store:
        run_id = store.create_run(request_dict("x"))
    with open_store(tmp_path / "r", url=url, readonly=True) as reader:
        assert reader.readonly and reader.get_run(run_id) is not None
        with pytest.raises(HistoryError, match="read-only"):
            reader.set_note(run_id, "no")
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        with pytest.raises(DBAPIError, match="read-only transaction"), reader.engine.begin() as conn:
            conn.execute(text("DELETE FROM runs"))  # the connections themselves refuse, too


def test_prompt_search_equals_the_sqlite_search(url: str, tmp_path: Path) -> None:
    """Same runs in both histories; every query gives the same ids in the same order (PostgreSQL's LIKE is
    case-sensitive and ILIKE folds Unicode: the store compares ASCII-lowered text, as SQLite's LIKE does)."""
    import random

    from test_history_search import QUERIES, prompt, reference

    rng = random.Random(11)
    records = []
    for i in range(200):
        rid = new_run_id(now_ms=1_760_000_000_000 + (i // 5) * 1000)
        req = request_dict(prompt(rng), seed=i, negative_prompt=rng.choice(["", "blurry", "Ugly_HANDS"]))
        records.append({"id": rid, "request": req, "status": "done", "outputs": []})
    runs = {r["id"]: (r["request"]["prompt"], r["request"]["negative_prompt"]) for r in records}
    with open_store(tmp_path / "pg", url=url) as pg, open_store(tmp_path / "sqlite") as lite:
        assert pg.insert_records(records) == (200, 0)
        assert lite.insert_records(records) == (200, 0)
        for q in QUERIES:
            f = RunFilter(text=q or None)
            want = reference(runs, q) if q else sorted(runs, reverse=True)
            assert [r.id for r in pg.list_runs(f, limit=500)] == want, q
            assert [r.id for r in lite.list_runs(f, limit=500)] == want, q
            assert pg.count_runs(f) == len(want), q
            page = pg.list_runs(f, limit=5)
            if len(page) == 5:
                assert [r.id for r in pg.list_runs(f, after=page[-1].id, limit=5)] == want[5:10], q


def test_the_trigram_index_serves_prompt_search(url: str, tmp_path: Path) -> None:
    from sqlalchemy import select, text

    from tnr_tui.services.history.localpg import find_server
    from tnr_tui.services.history.models import Run
    from tnr_tui.services.history.queries import text_condition

    if not find_server().has_trigram:
        pytest.skip("this PostgreSQL has no pg_trgm (contrib); search works by scanning (tested above)")
    with open_store(tmp_path, url=url) as store:
        store.insert_records(
            [
                {"id": new_run_id(), "request": request_dict(f"take {i} of a red circle"), "outputs": []}
                for i in range(2000)
            ]
        )
        query = select(Run.id).where(text_condition("take 1234", "postgresql")).order_by(Run.id.desc()).limit(50)
        with store.engine.connect() as conn:
            # 2 000 rows: a scan is cheaper and the planner is right to take it; forbid it to see the index serve.
            conn.execute(text("SET enable_seqscan = off"))
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))
        assert "ix_runs_prompt_trgm" in plan and "ix_runs_negative_prompt_trgm" in plan, plan


def test_short_texts_are_served_by_the_index_of_characters_and_pairs(url: str, tmp_path: Path) -> None:
    """1-2 characters, which a trigram index cannot answer: the array of characters and pairs (schema 5)
    finds the candidates, with or without pg_trgm; its function gives what search.grams_v1 gives."""
    from sqlalchemy import func, select, text

    from tnr_tui.services.history.models import Run
    from tnr_tui.services.history.queries import text_condition
    from tnr_tui.services.history.search import ascii_lower

    with open_store(tmp_path, url=url) as store:
        store.insert_records(
            [{"id": new_run_id(), "request": request_dict(f"take {i} Ab ß日本"), "outputs": []} for i in range(500)]
        )
        with store.engine.connect() as conn:
            for p, n in (("Ab ß", None), ("aAa", "日本 x"), ("", "q"), ("e\u0301\t%", "_")):
                grams = conn.scalar(select(func.tnr_grams_v2(p, n)))
                want = set()
                for value in (p, n):
                    low = ascii_lower(value or "")
                    want |= {*low, *(low[i : i + 2] for i in range(len(low) - 1))}
                assert set(grams) == want, (p, n)
            assert conn.scalar(select(func.tnr_grams_v2(None, ""))) == []
            conn.execute(text("SET enable_seqscan = off"))
            for needle in ("#", "ß", "zq"):
                query = select(Run.id).where(text_condition(needle, "postgresql")).order_by(Run.id.desc()).limit(50)
                sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
                plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))
                assert "ix_runs_grams_v2" in plan, plan


# ---- files --------------------------------------------------------------------------------------------


def test_without_a_shared_directory_files_travel_in_the_database(url: str, tmp_path: Path) -> None:
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    with open_store(host_a, url=url) as a:
        assert a.files_in_database
        run_id, path = finished_with_image(a, "a red circle")
        data = path.read_bytes()
        stored = a.get_run(run_id).output("image").path
    with open_store(host_b, url=url, readonly=True) as b:  # another host: its own data dir, no such file
        local = b.resolve(stored)
        assert local == host_b / stored and local.read_bytes() == data
        local.write_bytes(b"changed")  # a damaged local copy is the reader's problem: never rewritten under it
        assert b.resolve(stored).read_bytes() == b"changed"
    with open_store(host_a, url=url) as a:
        a.delete_run(run_id, delete_files=True)
        count = a._reading(
            lambda s: s.execute(__import__("sqlalchemy").text("SELECT count(*) FROM output_blobs")).scalar()
        )
        assert count == 0  # the bytes go with the row


def test_with_a_shared_directory_files_are_recorded_relative_to_it(url: str, tmp_path: Path) -> None:
    shared = tmp_path / "nfs" / "tnr-outputs"
    with open_store(tmp_path / "host-a", url=url, outputs=shared) as a:
        assert not a.files_in_database and a.outputs_dir == shared
        run_id, path = finished_with_image(a, "a green square", colour="green")
        assert path.parent.parent == shared
        stored = a.get_run(run_id).output("image").path
        assert stored == f"outputs/{path.relative_to(shared).as_posix()}"
        count = a._reading(
            lambda s: s.execute(__import__("sqlalchemy").text("SELECT count(*) FROM output_blobs")).scalar()
        )
        assert count == 0
    # Another host mounts it elsewhere: the record resolves under its own mount point.
    mount = tmp_path / "mnt" / "outputs"
    mount.parent.mkdir(parents=True)
    os.symlink(shared, mount)
    with open_store(tmp_path / "host-b", url=url, outputs=mount) as b:
        assert b.resolve(stored) == mount / path.relative_to(shared)
        assert b.resolve(stored).read_bytes() == path.read_bytes()


# ---- writers at once ----------------------------------------------------------------------------------

WRITER = r"""
import sys, time
from PIL import Image
from tnr_tui.services.history import OutputFile, open_store
home, url, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(home, url=url)
for i in range(n):
    run_id = store.create_run({"prompt": f"{tag} {i}", "solver": "euler", "guidance": "cfg", "steps": 2, "seed": i})
    path = store.new_output_path(run_id, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(path)
    store.set_note(run_id, tag)
    store.finish_run(run_id, "done", stats={"seconds": 0.01}, outputs=[OutputFile.of("image", path)])
    print(run_id, flush=True)
store.close()
"""


def test_several_writer_processes_lose_nothing(url: str, tmp_path: Path) -> None:
    writers, per_writer = 4, 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / f"host{w}"), url, f"writer{w}", str(per_writer)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    listed: list[int] = []
    stop = threading.Event()

    def lister() -> None:  # `history list` in a loop beside them, as another host would
        env = {**os.environ, "TNR_LAB_HISTORY_URL": url}
        while not stop.is_set():
            out = subprocess.run(
                [sys.executable, "-m", "tnr_tui", "--data-dir", str(tmp_path / "lister"), "history", "list", "--json"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            listed.append(len(json.loads(out.stdout)))

    thread = threading.Thread(target=lister, daemon=True)
    thread.start()
    made: dict[str, str] = {}
    for w, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        for line in out.split():
            made[line] = f"writer{w}"
    stop.set()
    thread.join(120)
    assert listed, "history list never ran beside the writers"
    assert len(made) == writers * per_writer
    with open_store(tmp_path / "reader", url=url, readonly=True) as store:
        runs = {r.id: r for r in store.iter_runs()}
        assert set(runs) == set(made)
        for run_id, tag in made.items():
            run = runs[run_id]
            assert (run.status, run.notes, len(run.outputs)) == ("done", tag, 1), run_id
        keys = store._reading(
            lambda s: s.execute(__import__("sqlalchemy").text("SELECT count(DISTINCT search_key) FROM runs")).scalar()
        )
        assert keys == len(made)


IMPORTER = r"""
import sys
from tnr_tui.services.history import open_store
from tnr_tui.services.history.transfer import import_runs
with open_store(sys.argv[1], url=sys.argv[2]) as store:
    report = import_runs(store, sys.argv[3])
print(report.added, report.skipped)
"""


def test_two_imports_of_one_file_at_once_record_each_run_once(url: str, tmp_path: Path) -> None:
    from tnr_tui.services.history.transfer import export_runs

    with open_store(tmp_path / "source") as source:
        for i in range(300):
            source.create_run(request_dict(f"run {i}", seed=i))
        export_runs(source, "jsonl", tmp_path / "runs.jsonl")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORTER, str(tmp_path / f"host{i}"), url, str(tmp_path / "runs.jsonl")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(tuple(int(x) for x in out.split()))
    assert sorted(reports) == [(0, 300), (300, 0)]  # one imported them all, the other found them there
    with open_store(tmp_path / "reader", url=url) as store:
        assert store.count_runs() == 300


# ---- waiting for others -------------------------------------------------------------------------------


@pytest.fixture
def short_waits(monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_SLICE_S", 0.25)
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 1.5)


def test_a_row_held_by_another_connection_is_a_notice_then_history_busy(url: str, tmp_path: Path, short_waits) -> None:
    notices: list[str] = []
    with open_store(tmp_path, url=url, warn=notices.append) as store:
        run_id = store.create_run(request_dict("held"))
        holder = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        holder.execute("SELECT * FROM runs WHERE id = %s FOR UPDATE", (run_id,))  # a long transaction's row lock
        started = time.monotonic()
        with pytest.raises(HistoryBusy, match=r"held by another process \(waited \d+ s\)"):
            store.set_note(run_id, "blocked")
        assert 1.4 < time.monotonic() - started < 4
        assert notices == [f"waiting for the history (held by another process): {store.location}"]
        holder.rollback()
        store.set_note(run_id, "free now")
        assert store.get_run(run_id).notes == "free now"
        holder.close()


def test_a_serialization_failure_is_run_again(url: str, tmp_path: Path) -> None:
    """Two deletes of two runs that share one file: SERIALIZABLE makes one of them see the other's, so the
    file is removed (by the later one) instead of kept by both; the loser is retried, not an error."""
    from sqlalchemy.exc import OperationalError

    with open_store(tmp_path, url=url) as store:
        first, path = finished_with_image(store, "shared file")
        second = store.create_run(request_dict("shared file too"))
        store.finish_run(second, "done", outputs=[OutputFile.of("image", path)])
        calls = {"n": 0}
        original = store._writing

        def flaky(work, **kwargs):
            def once(session):
                calls["n"] += 1
                if calls["n"] == 1:
                    session.execute(__import__("sqlalchemy").text("SELECT 1"))
                    orig = type("E", (Exception,), {"sqlstate": "40001"})("could not serialize access")
                    raise OperationalError("SELECT", {}, orig)
                return work(session)

            return original(once, **kwargs)

        store._writing = flaky
        assert store.delete_run(first, delete_files=True) == []  # the other run still records it
        assert calls["n"] == 2
        store._writing = original
        assert store.delete_run(second, delete_files=True) == [path]
