"""Schema versions of the history file, kept in `PRAGMA user_version`.

Each migration is plain SQL run inside one `BEGIN IMMEDIATE` transaction (SQLite's DDL is transactional
once pysqlite stops managing transactions, see db.py); the store backs the file up before migrating a file
that already holds data. Migration 1 is the first schema exactly as it shipped: never edit it, add one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

SCHEMA_V1 = """
CREATE TABLE runs (
    id VARCHAR(26) NOT NULL PRIMARY KEY,
    created_at DATETIME NOT NULL,
    started_at DATETIME,
    finished_at DATETIME,
    status VARCHAR(16) NOT NULL,
    request_json TEXT NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    solver VARCHAR(16) NOT NULL,
    guidance VARCHAR(16) NOT NULL,
    scale FLOAT,
    steps INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    schedule VARCHAR(16) NOT NULL,
    model_path TEXT,
    model_name TEXT,
    model_identity VARCHAR(64),
    seconds FLOAT,
    seconds_per_step FLOAT,
    model_evaluations INTEGER,
    metrics JSON,
    stats JSON,
    device VARCHAR(32),
    dtype VARCHAR(16),
    versions JSON,
    error TEXT,
    favourite BOOLEAN NOT NULL,
    notes TEXT NOT NULL,
    pid INTEGER,
    host VARCHAR(255),
    origin VARCHAR(16) NOT NULL
);
CREATE INDEX ix_runs_created_at ON runs (created_at);
CREATE INDEX ix_runs_status ON runs (status);
CREATE INDEX ix_runs_solver ON runs (solver);
CREATE INDEX ix_runs_guidance ON runs (guidance);
CREATE INDEX ix_runs_favourite ON runs (favourite);
CREATE TABLE outputs (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    run_id VARCHAR(26) NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind VARCHAR(16) NOT NULL,
    path TEXT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX ix_outputs_run_id ON outputs (run_id);
"""

# Schema 2: the sweep tag (filterable) and the run a re-run came from. Old rows take the sweep tag from
# their request's tags, where sweeps already put it.
SCHEMA_V2 = """
ALTER TABLE runs ADD COLUMN sweep VARCHAR(64);
ALTER TABLE runs ADD COLUMN parent_id VARCHAR(26);
CREATE INDEX ix_runs_sweep ON runs (sweep);
UPDATE runs SET sweep = json_extract(request_json, '$.tags.sweep')
    WHERE json_extract(request_json, '$.tags.sweep') IS NOT NULL;
"""


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        # executescript() would COMMIT first; run the statements one by one inside our transaction.
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return apply


# version -> (what it does, how)
MIGRATIONS: dict[int, tuple[str, Callable[[sqlite3.Connection], None]]] = {
    1: ("first schema: runs and outputs", _script(SCHEMA_V1)),
    2: ("sweep tag and re-run lineage", _script(SCHEMA_V2)),
}
LATEST_VERSION = max(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> list[int]:
    """Bring the file to `target` in one IMMEDIATE transaction; returns the versions applied.

    `conn` must be in autocommit mode (isolation_level None). The version is re-read under the write lock
    so two processes opening an old file at once migrate it once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        applied = []
        for version in range(current + 1, target + 1):
            MIGRATIONS[version][1](conn)
            applied.append(version)
        if applied:
            conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def backup(conn: sqlite3.Connection, db_path: Path, version: int, stamp: str) -> Path:
    """Copy the database (consistently, WAL included) beside itself before a migration."""
    target = db_path.with_name(f"{db_path.name}.v{version}-{stamp}.bak")
    dest = sqlite3.connect(target)
    try:
        conn.backup(dest)
    finally:
        dest.close()
    return target
