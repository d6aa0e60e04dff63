"""Schema 7 (issue 12): the indexed `schedule` of a run whose request is of format < 3 and says "karras" becomes
"karras_diffusers" (the grid it sampled; engine.request.upgrade renames it at read), so the history's filter
finds it under that name, and `--schedule karras` finds only runs of k-diffusion's karras. The request JSON is
left as written. SQLite (the legacy 0.1 history and a schema-6 file) and PostgreSQL (skipped as its tests skip).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tnr_tui.cli import main
from tnr_tui.services.history import RunFilter, open_store
from tnr_tui.services.history.migrations import LATEST_VERSION, migrate
from tnr_tui.services.history.paths import DB_NAME

LEGACY = Path(__file__).parent / "data" / "history-0.1"
LEGACY_KARRAS = "01M8RGWB75ZBR0CPKVJ6K80EG5"  # heun, cfg++, schedule karras, request format 1

# id -> (request format or None for none written, schedule, the column after schema 7)
ROWS: dict[str, tuple[int | None, str, str]] = {
    "01HZZZZZZZZZZZZZZZZZZZZZZ1": (2, "karras", "karras_diffusers"),
    "01HZZZZZZZZZZZZZZZZZZZZZZ2": (1, "karras", "karras_diffusers"),
    "01HZZZZZZZZZZZZZZZZZZZZZZ3": (3, "karras", "karras"),  # k-diffusion's karras: stays
    "01HZZZZZZZZZZZZZZZZZZZZZZ4": (None, "karras", "karras"),  # no format: read as the current one
    "01HZZZZZZZZZZZZZZZZZZZZZZ5": (2, "exponential", "exponential"),
}


def listed(home: Path, capsys: Any, *flags: str) -> list[str]:
    assert main(["--data-dir", str(home), "history", "list", "--json", *flags]) == 0
    return sorted(r["id"] for r in json.loads(capsys.readouterr().out))


def request_of(fmt: int | None, schedule: str, seed: int) -> dict[str, Any]:
    req: dict[str, Any] = {"prompt": f"run {seed}", "solver": "euler", "guidance": "cfg", "steps": 4, "seed": seed}
    req["schedule"] = schedule
    if fmt is not None:
        req["format"] = fmt
    return req


def test_the_legacy_history_finds_its_karras_run_under_karras_diffusers(tmp_path, capsys):
    home = tmp_path / "legacy"
    shutil.copytree(LEGACY, home)  # never the committed copy: opening it migrates
    conn = sqlite3.connect(home / DB_NAME)
    before = dict(conn.execute("SELECT id, request_json FROM runs"))
    assert conn.execute("SELECT schedule FROM runs WHERE id = ?", (LEGACY_KARRAS,)).fetchone() == ("karras",)
    conn.close()

    assert listed(home, capsys, "--schedule", "karras_diffusers") == [LEGACY_KARRAS]
    assert listed(home, capsys, "--schedule", "karras") == []
    assert listed(home, capsys, "--schedule", "trailing") == ["01M8RGWR4Y1MER5JABNPSVFXC0"]  # others untouched

    conn = sqlite3.connect(home / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    assert dict(conn.execute("SELECT id, request_json FROM runs")) == before  # the JSON stays as written
    conn.close()
    # Its request still upgrades to the same name, so the column and the re-run agree.
    from engine.request import GenerationRequest

    assert GenerationRequest.from_json(before[LEGACY_KARRAS]).schedule == "karras_diffusers"
    backups = list(home.glob(f"{DB_NAME}.v2-*.bak"))
    assert len(backups) == 1
    conn = sqlite3.connect(backups[0])
    assert conn.execute("SELECT schedule FROM runs WHERE id = ?", (LEGACY_KARRAS,)).fetchone() == ("karras",)
    conn.close()


def make_v6_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=6) == [1, 2, 3, 4, 5, 6]
    for key, (run_id, (fmt, schedule, _)) in enumerate(ROWS.items(), start=1):
        req = request_of(fmt, schedule, key)
        conn.execute(
            "INSERT INTO runs (id, created_at, status, request_json, prompt, negative_prompt, model, solver, guidance,"
            " scale, steps, seed, schedule, favourite, notes, origin, search_key)"
            " VALUES (?, '2024-06-01 10:00:00.000000', 'done', ?, ?, '', 'embedded', 'euler', 'cfg', 5.0, 4, ?, ?,"
            " 0, '', 'cli', ?)",
            (run_id, json.dumps(req, sort_keys=True), req["prompt"], key, schedule, key),
        )
    conn.close()


def test_a_schema_6_file_is_backed_up_and_only_old_formats_karras_is_renamed(tmp_path, capsys):
    make_v6_file(tmp_path / DB_NAME)
    expected = {run_id: column for run_id, (_, _, column) in ROWS.items()}
    with open_store(tmp_path) as store:
        assert {r.id: r.schedule for r in store.iter_runs()} == expected
        for name in ("karras", "karras_diffusers", "exponential"):
            assert sorted(r.id for r in store.list_runs(RunFilter(schedule=name))) == sorted(
                i for i, column in expected.items() if column == name
            )
        # The stored requests were not touched: format and schedule as written.
        for run_id, (fmt, schedule, _) in ROWS.items():
            request = store.get_run(run_id).request
            assert (request.get("format"), request["schedule"]) == (fmt, schedule)
    assert len(list(tmp_path.glob(f"{DB_NAME}.v6-*.bak"))) == 1
    assert listed(tmp_path, capsys, "--schedule", "karras") == [
        "01HZZZZZZZZZZZZZZZZZZZZZZ3",
        "01HZZZZZZZZZZZZZZZZZZZZZZ4",
    ]


def test_an_old_request_recorded_or_imported_today_is_indexed_by_what_it_sampled(tmp_path, capsys):
    home, other = tmp_path / "home", tmp_path / "other"
    with open_store(home) as store:
        old = store.create_run(request_of(2, "karras", 1))
        new = store.create_run(request_of(3, "karras", 2))
        assert (store.get_run(old).schedule, store.get_run(new).schedule) == ("karras_diffusers", "karras")
    out = tmp_path / "runs.jsonl"
    assert main(["--data-dir", str(home), "history", "export", "--format", "jsonl", "--out", str(out)]) == 0
    assert main(["--data-dir", str(other), "history", "import", str(out), "--json"]) == 0
    capsys.readouterr()
    assert listed(other, capsys, "--schedule", "karras_diffusers") == [old]
    assert listed(other, capsys, "--schedule", "karras") == [new]


def test_an_unknown_schedule_filter_is_one_line(tmp_path, capsys):
    open_store(tmp_path).close()
    assert main(["--data-dir", str(tmp_path), "history", "list", "--schedule", "karas"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown schedule 'karas'" in err and "karras_diffusers" in err


def test_postgresql_twin_renames_the_same_rows(tmp_path, pg_url):
    from sqlalchemy import create_engine, text

    from tnr_tui.services.history import migrations

    url = pg_url  # a new database of the session's server (tests/conftest.py)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert migrations.migrate_postgres(conn, target=6) == [1, 2, 3, 4, 5, 6]
        with engine.begin() as conn:
            for key, (run_id, (fmt, schedule, _)) in enumerate(ROWS.items(), start=1):
                req = request_of(fmt, schedule, key)
                conn.execute(
                    text(
                        "INSERT INTO runs (id, created_at, status, request_json, prompt, negative_prompt, model,"
                        " solver, guidance, scale, steps, seed, schedule, favourite, notes, origin, search_key)"
                        " VALUES (:id, '2024-06-01 10:00:00', 'done', :req, :prompt, '', 'embedded', 'euler',"
                        " 'cfg', 5.0, 4, :key, :schedule, false, '', 'cli', :key)"
                    ),
                    {
                        "id": run_id,
                        "req": json.dumps(req, sort_keys=True),
                        "prompt": req["prompt"],
                        "key": key,
                        "schedule": schedule,
                    },
                )
    finally:
        engine.dispose()
    with open_store(tmp_path, url=url) as store:  # migrates 6 -> 7
        assert {r.id: r.schedule for r in store.iter_runs()} == {i: c for i, (_, _, c) in ROWS.items()}
        assert [r.id for r in store.list_runs(RunFilter(schedule="karras_diffusers"))] == [
            "01HZZZZZZZZZZZZZZZZZZZZZZ2",
            "01HZZZZZZZZZZZZZZZZZZZZZZ1",
        ]
        assert store.get_run("01HZZZZZZZZZZZZZZZZZZZZZZ1").request["schedule"] == "karras"
