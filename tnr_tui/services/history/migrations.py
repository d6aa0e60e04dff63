"""Schema versions of the history, kept in `PRAGMA user_version` (SQLite) or the one-row table
`tnr_lab_schema` (PostgreSQL).

Each SQLite migration is plain SQL (or a function of the sqlite3 connection) run inside one `BEGIN IMMEDIATE`
transaction (SQLite's DDL is transactional once pysqlite stops managing transactions, see db.py); the store
backs the file up before migrating a file that already holds data. Each PostgreSQL migration is the same
change in PostgreSQL's dialect, run in one transaction under an advisory lock (`migrate_postgres`); every
SQLite version has its PostgreSQL twin (tests/test_history_postgres.py holds that). Migration 1 is the first
schema exactly as it shipped: never edit a migration, add one.

The PostgreSQL schema differs only where the engines do: TEXT for every string (SQLite never enforced the
VARCHAR lengths, and solver names outgrew 16), BIGINT for every integer (SQLite's INTEGER is 64-bit), the
run ids in the "C" collation (byte order, as SQLite sorts them), JSON kept as text (SQLite's JSON columns
hold text; PostgreSQL's json type refuses NaN).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# Schema 3: prompt search at scale (search.py) and output bytes in the database (a shared history without a
# shared output directory). The search key is assigned to every existing run here, then kept by the store.
SCHEMA_V3_SEARCH = """
CREATE UNIQUE INDEX ix_runs_search_key ON runs (search_key);
CREATE TRIGGER runs_search_key_required BEFORE INSERT ON runs WHEN new.search_key IS NULL
BEGIN
    SELECT RAISE(ABORT, 'a run needs its search_key (tnr-lab assigns it)');
END;
CREATE VIRTUAL TABLE runs_fts USING fts5(
    prompt, negative_prompt, content='runs', content_rowid='search_key', tokenize='trigram', columnsize=0
);
CREATE VIRTUAL TABLE runs_grams USING fts5(grams, content='', tokenize='unicode61', columnsize=0, detail='none');
CREATE TRIGGER runs_search_insert AFTER INSERT ON runs
BEGIN
    INSERT INTO runs_fts (rowid, prompt, negative_prompt) VALUES (new.search_key, new.prompt, new.negative_prompt);
    INSERT INTO runs_grams (rowid, grams) VALUES (new.search_key, tnr_grams_v1(new.prompt, new.negative_prompt));
END;
CREATE TRIGGER runs_search_delete AFTER DELETE ON runs
BEGIN
    INSERT INTO runs_fts (runs_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.search_key, old.prompt, old.negative_prompt);
    INSERT INTO runs_grams (runs_grams, rowid, grams)
        VALUES ('delete', old.search_key, tnr_grams_v1(old.prompt, old.negative_prompt));
END;
CREATE TRIGGER runs_search_update AFTER UPDATE OF prompt, negative_prompt, search_key ON runs
    WHEN old.prompt IS NOT new.prompt OR old.negative_prompt IS NOT new.negative_prompt
        OR old.search_key IS NOT new.search_key
BEGIN
    INSERT INTO runs_fts (runs_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.search_key, old.prompt, old.negative_prompt);
    INSERT INTO runs_grams (runs_grams, rowid, grams)
        VALUES ('delete', old.search_key, tnr_grams_v1(old.prompt, old.negative_prompt));
    INSERT INTO runs_fts (rowid, prompt, negative_prompt) VALUES (new.search_key, new.prompt, new.negative_prompt);
    INSERT INTO runs_grams (rowid, grams) VALUES (new.search_key, tnr_grams_v1(new.prompt, new.negative_prompt));
END;
INSERT INTO runs_fts (runs_fts) VALUES ('rebuild');
INSERT INTO runs_grams (rowid, grams) SELECT search_key, tnr_grams_v1(prompt, negative_prompt) FROM runs;
CREATE TABLE output_blobs (
    output_id INTEGER NOT NULL PRIMARY KEY REFERENCES outputs (id) ON DELETE CASCADE,
    data BLOB NOT NULL
);
"""


def _script_with_triggers(sql: str) -> Callable[[sqlite3.Connection], None]:
    """Like `_script`, for SQL whose triggers hold `;` in their bodies: statements end where SQLite says one
    is complete."""

    def apply(conn: sqlite3.Connection) -> None:
        pending = ""
        for piece in sql.split(";"):
            pending += piece + ";"
            if sqlite3.complete_statement(pending):
                if pending.strip(" \n;"):
                    conn.execute(pending)
                pending = ""
        if pending.strip(" \n;"):
            raise ValueError(f"incomplete SQL in a migration: {pending[:60]!r}")

    return apply


def _backfill_keys(ids: list[str], update: Callable[[list[tuple[int, str]]], None]) -> None:
    from tnr_tui.services.history.search import plan_keys

    keys = plan_keys(ids, set(), lambda: 0)
    update([(key, run_id) for run_id, key in keys.items()])


def _sqlite_v3(conn: sqlite3.Connection) -> None:
    # SQLite adds a column NOT NULL only with a default; a trigger refuses a run without its key instead.
    conn.execute("ALTER TABLE runs ADD COLUMN search_key INTEGER")
    ids = [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY id")]
    _backfill_keys(ids, lambda rows: conn.executemany("UPDATE runs SET search_key = ? WHERE id = ?", rows))
    _script_with_triggers(SCHEMA_V3_SEARCH)(conn)


# Schema 4: a run's per-step telemetry rows (steps.py): one row per run, its values a float64 blob; deleting
# the run deletes them (foreign key). Runs recorded before have none.
SCHEMA_V4 = """
CREATE TABLE run_steps (
    run_id VARCHAR(26) NOT NULL PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    format INTEGER NOT NULL,
    names TEXT NOT NULL,
    steps INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""


def _nothing(conn: sqlite3.Connection) -> None:
    """A version that changes only the other engine's schema (the numbers stay one sequence for both)."""


# Schema 7: request format 3 renamed schedule "karras" to "karras_diffusers" for requests of format < 3
# (engine.request.upgrade, at read); the indexed `schedule` column of those runs still said "karras", so a
# filter by name found them under the grid they did not sample. The column follows the request as upgraded;
# the stored request JSON stays as written. The rule is frozen here (a migration never follows later code):
# an integer "format" below 3 and "karras"; a request without "format" is read as the current format.
# json.loads in Python, not the engines' JSON functions: it reads every request json.dumps wrote (NaN too).
KARRAS_V7_OLD, KARRAS_V7_NEW = "karras", "karras_diffusers"


def _karras_rows(rows: Any) -> list[str]:
    """The ids of the rows (id, request_json) whose request is of format < 3."""
    import json

    ids = []
    for run_id, request_json in rows:
        try:
            fmt = json.loads(request_json).get("format")
        except (ValueError, AttributeError):
            continue  # not a request this version reads: upgrade() refuses it at read, leave its row
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt < 3:
            ids.append(run_id)
    return ids


def _sqlite_v7(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT id, request_json FROM runs WHERE schedule = ?", (KARRAS_V7_OLD,))
    ids = _karras_rows(rows.fetchall())
    conn.executemany("UPDATE runs SET schedule = ? WHERE id = ?", [(KARRAS_V7_NEW, i) for i in ids])


# Schema 8: pages filtered by status or favourite read their index in id order (models.Run.__table_args__).
SCHEMA_V8 = """
CREATE INDEX ix_runs_status_id ON runs (status, id);
CREATE INDEX ix_runs_favourite_id ON runs (favourite, id);
"""


# version -> (what it does, how)
MIGRATIONS: dict[int, tuple[str, Callable[[sqlite3.Connection], None]]] = {
    1: ("first schema: runs and outputs", _script(SCHEMA_V1)),
    2: ("sweep tag and re-run lineage", _script(SCHEMA_V2)),
    3: ("prompt search index, output bytes in the database", _sqlite_v3),
    4: ("per-step telemetry rows", _script(SCHEMA_V4)),
    5: ("PostgreSQL only: an index of short substrings (SQLite has had runs_grams since 3)", _nothing),
    6: ("PostgreSQL only: that index through a faster function", _nothing),
    7: ('schedule "karras" of requests before format 3 indexed as "karras_diffusers"', _sqlite_v7),
    8: ("indexes of status and favourite in id order", _script(SCHEMA_V8)),
}
LATEST_VERSION = max(MIGRATIONS)


def needs_backup(version: int, target: int = LATEST_VERSION) -> bool:
    """Whether migrating a file from `version` changes anything (a file is backed up first only then)."""
    return any(MIGRATIONS[v][1] is not _nothing for v in range(version + 1, target + 1))


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> list[int]:
    """Bring the file to `target` in one IMMEDIATE transaction; returns the versions applied.

    `conn` must be in autocommit mode (isolation_level None). The version is re-read under the write lock
    so two processes opening an old file at once migrate it once.
    """
    from tnr_tui.services.history.search import register_functions

    register_functions(conn)  # the search triggers call it
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


# ---- PostgreSQL --------------------------------------------------------------------------------------------

PG_VERSION_TABLE = "tnr_lab_schema"

PG_SCHEMA_V1 = """
CREATE TABLE runs (
    id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status TEXT NOT NULL,
    request_json TEXT NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    solver TEXT NOT NULL,
    guidance TEXT NOT NULL,
    scale DOUBLE PRECISION,
    steps BIGINT NOT NULL,
    seed BIGINT NOT NULL,
    width BIGINT,
    height BIGINT,
    schedule TEXT NOT NULL,
    model_path TEXT,
    model_name TEXT,
    model_identity TEXT,
    seconds DOUBLE PRECISION,
    seconds_per_step DOUBLE PRECISION,
    model_evaluations BIGINT,
    metrics TEXT,
    stats TEXT,
    device TEXT,
    dtype TEXT,
    versions TEXT,
    error TEXT,
    favourite BOOLEAN NOT NULL,
    notes TEXT NOT NULL,
    pid BIGINT,
    host TEXT,
    origin TEXT NOT NULL
);
CREATE INDEX ix_runs_created_at ON runs (created_at);
CREATE INDEX ix_runs_status ON runs (status);
CREATE INDEX ix_runs_solver ON runs (solver);
CREATE INDEX ix_runs_guidance ON runs (guidance);
CREATE INDEX ix_runs_favourite ON runs (favourite);
CREATE TABLE outputs (
    id BIGSERIAL NOT NULL PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL
);
CREATE INDEX ix_outputs_run_id ON outputs (run_id);
"""

PG_SCHEMA_V2 = """
ALTER TABLE runs ADD COLUMN sweep TEXT;
ALTER TABLE runs ADD COLUMN parent_id TEXT COLLATE "C";
CREATE INDEX ix_runs_sweep ON runs (sweep);
UPDATE runs SET sweep = (request_json::json -> 'tags' ->> 'sweep')
    WHERE request_json LIKE '%"sweep"%' AND (request_json::json -> 'tags' ->> 'sweep') IS NOT NULL;
"""

# The case rule of the search (queries.py) as an expression PostgreSQL can index: ASCII letters lowered.
PG_ASCII_LOWER = "translate({column}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"

PG_SCHEMA_V3 = """
CREATE UNIQUE INDEX ix_runs_search_key ON runs (search_key);
CREATE TABLE output_blobs (
    output_id BIGINT NOT NULL PRIMARY KEY REFERENCES outputs (id) ON DELETE CASCADE,
    data BYTEA NOT NULL
)
"""

# fastupdate off: GIN's pending list (inserts not yet merged, until a vacuum) made the planner cost the index
# 20 times higher and scan the table instead (measured at 20 000 runs: 184 ms); runs arrive a few a second.
PG_TRIGRAM_INDEXES = [
    f"CREATE INDEX ix_runs_{column}_trgm ON runs USING gin (({PG_ASCII_LOWER.format(column=column)}) gin_trgm_ops)"
    " WITH (fastupdate = off)"
    for column in ("prompt", "negative_prompt")
]


def _pg_script(sql: str) -> Callable[[Any], None]:
    def apply(connection: Any) -> None:
        from sqlalchemy import text

        for statement in sql.split(";"):
            if statement.strip():
                connection.execute(text(statement))

    return apply


# Notes a migration leaves for the user (a missing pg_trgm): the store warns with them once.
PG_NOTES: list[str] = []


def _pg_v3(connection: Any) -> None:
    from sqlalchemy import text

    connection.execute(text("ALTER TABLE runs ADD COLUMN search_key BIGINT"))
    ids = [row[0] for row in connection.execute(text("SELECT id FROM runs ORDER BY id"))]
    _backfill_keys(
        ids,
        lambda rows: (
            rows
            and connection.execute(
                text("UPDATE runs SET search_key = :key WHERE id = :id"), [{"key": k, "id": i} for k, i in rows]
            )
        ),
    )
    connection.execute(text("ALTER TABLE runs ALTER COLUMN search_key SET NOT NULL"))
    _pg_script(PG_SCHEMA_V3)(connection)
    # Prompt search: pg_trgm's GIN indexes over the lowered prompts. The extension is contrib (Debian:
    # postgresql-contrib); without it, or without the right to create it, search still works by scanning.
    savepoint = connection.begin_nested()
    try:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        for statement in PG_TRIGRAM_INDEXES:
            connection.execute(text(statement))
        savepoint.commit()
    except Exception as e:  # DBAPIError: not available, or not permitted
        savepoint.rollback()
        reason = str(getattr(e, "orig", e)).strip().splitlines()
        PG_NOTES.append(
            "prompt search in this PostgreSQL history has no trigram index, so it scans the runs table "
            f"({reason[0] if reason else type(e).__name__}); see docs/history.md to add it"
        )


PG_SCHEMA_V4 = """
CREATE TABLE run_steps (
    run_id TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    format BIGINT NOT NULL,
    names TEXT NOT NULL,
    steps BIGINT NOT NULL,
    data BYTEA NOT NULL
)
"""

# Schema 5: what runs_grams is to SQLite (search.py), for texts of 1-2 characters, which pg_trgm cannot
# index (a rare one scanned every run: 0.55 s at 100 000). The distinct characters and pairs of both prompts,
# ASCII-lowered, as an array; a GIN index over the expression; the search asks `@> ARRAY[text]` beside its
# LIKE. Plain SQL, no extension. Frozen like grams_v1: a change is a new function and migration.
PG_SCHEMA_V5 = """
CREATE FUNCTION tnr_grams_v1(prompt text, negative_prompt text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(array_agg(DISTINCT substr(s.t, i, k)), '{}'::text[])
FROM (
    SELECT translate(x, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') AS t
    FROM unnest(ARRAY[prompt, negative_prompt]) AS x
) AS s, generate_series(1, length(s.t)) AS i, generate_series(1, 2) AS k
WHERE i + k - 1 <= length(s.t)
$$;
CREATE INDEX ix_runs_grams ON runs USING gin (tnr_grams_v1(prompt, negative_prompt)) WITH (fastupdate = off)
"""

# Schema 6: version 5's SQL function took 5 ms a call (a cross join of two generate_series and a sorted
# aggregate, run as a query per row: 100 000 runs did not load in 6 minutes); this PL/pgSQL loop gives the
# same set of keys (GIN keeps each key once, so duplicates may stay) at a fraction of that. A new name, as
# frozen functions get; the old index and function go.
PG_GRAMS_V2 = """
CREATE FUNCTION tnr_grams_v2(prompt text, negative_prompt text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    value text;
    chars text[];
    grams text[] := '{}';
BEGIN
    FOREACH value IN ARRAY ARRAY[prompt, negative_prompt] LOOP
        CONTINUE WHEN value IS NULL OR value = '';
        chars := string_to_array(translate(value, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), NULL);
        grams := grams || chars;
        FOR i IN 1 .. array_length(chars, 1) - 1 LOOP
            grams := grams || (chars[i] || chars[i + 1]);
        END LOOP;
    END LOOP;
    RETURN grams;
END
$$
"""


def _pg_v6(connection: Any) -> None:
    from sqlalchemy import text

    connection.execute(text("DROP INDEX ix_runs_grams"))
    connection.execute(text("DROP FUNCTION tnr_grams_v1(text, text)"))
    connection.execute(text(PG_GRAMS_V2))  # one statement: its body holds semicolons
    connection.execute(
        text(
            "CREATE INDEX ix_runs_grams_v2 ON runs USING gin (tnr_grams_v2(prompt, negative_prompt))"
            " WITH (fastupdate = off)"
        )
    )


def _pg_v7(connection: Any) -> None:
    from sqlalchemy import text

    rows = connection.execute(
        text("SELECT id, request_json FROM runs WHERE schedule = :old"), {"old": KARRAS_V7_OLD}
    ).all()
    ids = _karras_rows(rows)
    if ids:
        connection.execute(
            text("UPDATE runs SET schedule = :new WHERE id = :id"), [{"new": KARRAS_V7_NEW, "id": i} for i in ids]
        )


POSTGRES_MIGRATIONS: dict[int, tuple[str, Callable[[Any], None]]] = {
    1: ("first schema: runs and outputs", _pg_script(PG_SCHEMA_V1)),
    2: ("sweep tag and re-run lineage", _pg_script(PG_SCHEMA_V2)),
    3: ("prompt search index, output bytes in the database", _pg_v3),
    4: ("per-step telemetry rows", _pg_script(PG_SCHEMA_V4)),
    5: ("an index of short substrings (1-2 characters)", _pg_script(PG_SCHEMA_V5)),
    6: ("the index of short substrings through a faster function", _pg_v6),
    7: ('schedule "karras" of requests before format 3 indexed as "karras_diffusers"', _pg_v7),
    8: ("indexes of status and favourite in id order", _pg_script(SCHEMA_V8)),
}


def postgres_version(connection: Any) -> int | None:
    """The schema version of a PostgreSQL history, or None where this database holds none yet."""
    from sqlalchemy import text

    if connection.scalar(text(f"SELECT to_regclass('{PG_VERSION_TABLE}')")) is None:
        return None
    return int(connection.scalar(text(f"SELECT version FROM {PG_VERSION_TABLE}")) or 0)


def migrate_postgres(connection: Any, target: int = LATEST_VERSION) -> list[int]:
    """Bring a PostgreSQL history to `target` in one transaction (DDL is transactional there); returns the
    versions applied. `connection`: a SQLAlchemy Connection outside any transaction.

    Concurrent first opens migrate once: a session advisory lock is taken first, and the version read in a
    transaction begun after it (a transaction begun before the wait would keep its stale view of the catalog
    and not see the table the other process created: measured, "relation tnr_lab_schema already exists").
    """
    from sqlalchemy import text

    from tnr_tui.services.history.search import ADVISORY_MIGRATE

    missing = [v for v in range(1, target + 1) if v not in POSTGRES_MIGRATIONS]
    if missing:
        raise RuntimeError(f"schema version {missing[0]} has no PostgreSQL migration (migrations.py)")
    applied: list[int] = []
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_MIGRATE})
    connection.commit()
    try:
        with connection.begin():
            current = postgres_version(connection)
            if current is None:
                connection.execute(text(f"CREATE TABLE {PG_VERSION_TABLE} (version INTEGER NOT NULL)"))
                connection.execute(text(f"INSERT INTO {PG_VERSION_TABLE} (version) VALUES (0)"))
                current = 0
            for version in range(current + 1, target + 1):
                POSTGRES_MIGRATIONS[version][1](connection)
                applied.append(version)
            if applied:
                connection.execute(text(f"UPDATE {PG_VERSION_TABLE} SET version = :v"), {"v": int(target)})
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_MIGRATE})
        connection.commit()
    return applied
