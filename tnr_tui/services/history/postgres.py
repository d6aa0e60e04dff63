"""A shared history on PostgreSQL: the same models, store API and versioned migrations as the SQLite file.

`open_store(url="postgresql+psycopg://host/db")` (or $TNR_LAB_HISTORY_URL, or the CLI's `--history-url`)
lands here. What changes against SQLite (docs/history.md, "A shared history"):

- Transactions: every writer runs READ COMMITTED with `lock_timeout` = `BUSY_SLICE_S` per statement. The
  writes that need more take it: creating runs and imports take a transaction-scoped advisory lock (the
  search key of a new run is the free slot of its second: search.allocate_keys), `delete_run` runs
  SERIALIZABLE (the files it keeps because another run records them). A serialization failure or a deadlock
  is retried at once, a lock held past `BUSY_SLICE_S` is retried like SQLite's busy lock, up to `LOCK_WAIT_S`,
  then `HistoryBusy`. Single-row updates (finish_run, notes, favourites) need nothing more: PostgreSQL
  re-checks their WHERE under the row lock (finish_run's `if_live` included).
- Migrations: one transaction under an advisory lock, the version in the table `tnr_lab_schema`
  (migrations.migrate_postgres). No backup file: a failed migration rolls back whole.
- Recovery: runs left `queued`/`running` by a process of *this host* that is gone become `interrupted`
  (as with SQLite); other hosts' runs are theirs to recover.
- Files: `outputs_dir` given (a directory every host sees): files live there, recorded `outputs/...`.
  Not given: files are written to `<data dir>/outputs` as usual and their bytes stored in `output_blobs`
  too; `Store.resolve` writes a file back from them on a host that lacks it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from tnr_tui.services.history import migrations
from tnr_tui.services.history.errors import HistoryBusy, HistoryError, HistoryUnwritable, NoHistory
from tnr_tui.services.history.paths import NO_SPACE, PERMISSION_DENIED

# SQLSTATEs (PostgreSQL's appendix A) the store acts on.
SERIALIZATION_FAILURE, DEADLOCK = "40001", "40P01"
LOCK_NOT_AVAILABLE = "55P03"
READ_ONLY_TRANSACTION, INSUFFICIENT_PRIVILEGE, DISK_FULL = "25006", "42501", "53100"
INVALID_DATABASE, INVALID_PASSWORD, INVALID_AUTHORIZATION = "3D000", "28P01", "28000"
READ_ONLY_DATABASE = "read-only database"  # HistoryUnwritable.reason on a standby or read-only role


def normalize_url(url: str) -> str:
    """The URL with its driver: `postgresql://` and `postgres://` mean psycopg (version 3); anything that
    is not PostgreSQL is refused (SQLite is the data directory's file: --data-dir)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise HistoryError(f"--history-url {display_url(url)!r} is not a database URL (postgresql://host/db)") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise HistoryError(
            f"--history-url must be a PostgreSQL URL (postgresql+psycopg://host/db), not {parsed.drivername}://...; "
            "a SQLite history is the file in --data-dir"
        )
    return parsed.set(drivername=f"postgresql+{driver or 'psycopg'}").render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """The URL as messages show it: without the password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def location_key(url: str, outputs_dir: Path | None, data_dir: Path) -> str:
    """What makes two opens in one process the same store (open_store's registry)."""
    return "\0".join(("postgresql", normalize_url(url), str(outputs_dir or ""), os.path.abspath(data_dir)))


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", exc), "sqlstate", None)


def _text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _client_data_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.DataError,)


def pg_error(exc: BaseException, location: str, *, reading: bool = False) -> HistoryError:
    """One line for a PostgreSQL failure: what is wrong, in the terms of docs/history.md's table."""
    state, message = _sqlstate(exc), _text(exc)
    if state in (SERIALIZATION_FAILURE, DEADLOCK, LOCK_NOT_AVAILABLE):
        return HistoryBusy(f"the history {location} is held by another process; try again when it is free")
    if state == DISK_FULL:
        return HistoryUnwritable(f"cannot write the history {location}: {NO_SPACE} ({message})", NO_SPACE)
    if state == READ_ONLY_TRANSACTION:
        return HistoryUnwritable(
            f"cannot write the history {location}: {READ_ONLY_DATABASE} ({message})", READ_ONLY_DATABASE
        )
    if state == INSUFFICIENT_PRIVILEGE:
        verb = "read" if reading else "write"
        return HistoryUnwritable(
            f"cannot {verb} the history {location}: {PERMISSION_DENIED} ({message})", PERMISSION_DENIED
        )
    if state == INVALID_DATABASE:
        return HistoryError(f"the database of the history {location} does not exist (create it first): {message}")
    if state in (INVALID_PASSWORD, INVALID_AUTHORIZATION):
        return HistoryError(f"cannot log in to the history {location}: {message}")
    if state is None and isinstance(getattr(exc, "orig", None), _client_data_errors()):
        # psycopg refusing a value before it is sent (a NUL in a text: PostgreSQL has no way to store one), no
        # SQLSTATE: the server was reached, the value is what is wrong (an imported prompt, a PNG's text).
        return HistoryError(f"the history {location} cannot store this value: {message}")
    if state is None or state.startswith("08") or state.startswith("57P"):
        return HistoryError(f"cannot reach the history {location}: {message}")
    return HistoryError(f"the history {location} failed: {message}")


class PostgresBackend:
    """What the store does differently on PostgreSQL (store.Store asks it; the module docstring says why)."""

    dialect = "postgresql"
    journal_mode = "postgresql"

    def writer_engine(self, engine: Engine, *, serializable: bool = False) -> Engine:
        return engine.execution_options(isolation_level="SERIALIZABLE" if serializable else "READ COMMITTED")

    def conflict(self, exc: DBAPIError) -> bool:
        return _sqlstate(exc) in (SERIALIZATION_FAILURE, DEADLOCK)

    def busy(self, exc: DBAPIError) -> bool:
        return _sqlstate(exc) == LOCK_NOT_AVAILABLE

    def failure(self, exc: DBAPIError, location: str, *, reading: bool) -> HistoryError:
        return pg_error(exc, location, reading=reading)


def make_engine(url: str, *, readonly: bool, lock_ms: int) -> Engine:
    """The engine of a PostgreSQL history; `lock_ms`: how long one statement waits for a row lock (the store's
    busy slice: it retries whole transactions around it)."""
    try:
        import psycopg  # noqa: F401  (the driver; say how to get it rather than fail in SQLAlchemy)
    except ImportError:
        raise HistoryError("a PostgreSQL history needs the psycopg driver: pip install 'tnr-lab[postgres]'") from None
    engine = create_engine(
        url,
        pool_pre_ping=True,  # a connection the server dropped (restart, idle timeout) is replaced, not an error
        pool_size=4,
        max_overflow=8,
        connect_args={"connect_timeout": 10, "application_name": "tnr-lab"},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # psycopg opens a transaction for a SET in non-autocommit mode: commit it, so the pool gets it idle.
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = '{int(lock_ms)}ms'")  # one busy slice; Store retries around it
            cursor.execute("SET TIME ZONE 'UTC'")
            if readonly:
                cursor.execute("SET default_transaction_read_only = on")  # a second lock on the door
        dbapi_connection.commit()

    return engine


def prepare(
    engine: Engine, url: str, location: str, *, readonly: bool, warn: Callable[[str], None] | None, lock_ms: int
) -> None:
    """Check what the database holds and bring it to the latest schema (a read-only open migrates through a
    writable connection of its own, as a read-only SQLite open does, or says why it cannot)."""
    try:
        with engine.connect() as connection:
            version = migrations.postgres_version(connection)
            foreign = None
            if version is None:
                foreign = next(
                    (
                        name
                        for name in ("runs", "outputs")
                        if connection.scalar(text(f"SELECT to_regclass('{name}')")) is not None
                    ),
                    None,
                )
            connection.rollback()
    except DBAPIError as e:
        raise pg_error(e, location, reading=True) from None
    if foreign is not None:
        raise HistoryError(
            f"the database {location} has a table {foreign!r} but no tnr-lab schema version; it is not a tnr-lab "
            "history and was left untouched (give an empty database, or a schema of its own with "
            "?options=-csearch_path%3Dtnr_lab)"
        )
    if version is not None and version > migrations.LATEST_VERSION:
        raise HistoryError(
            f"the history {location} has schema version {version}, newer than this tnr-lab understands "
            f"({migrations.LATEST_VERSION}); upgrade tnr-lab. It was left untouched"
        )
    if readonly and version is None:
        raise NoHistory(f"no history at {location} yet")
    if version is not None and version == migrations.LATEST_VERSION:
        return
    writer = engine if not readonly else make_engine(url, readonly=False, lock_ms=lock_ms)
    try:
        with writer.connect() as connection:
            migrations.PG_NOTES.clear()
            migrations.migrate_postgres(connection)
            for note in migrations.PG_NOTES:
                if warn is not None:
                    warn(note)
    except DBAPIError as e:
        error = pg_error(e, location)
        if readonly:
            raise HistoryError(
                f"the history {location} has schema version {version}, older than this tnr-lab's "
                f"({migrations.LATEST_VERSION}), and cannot be upgraded from here ({error}). Open it once "
                "with the right to write (any tnr-lab command upgrades it)"
            ) from None
        raise error from None
    finally:
        if writer is not engine:
            writer.dispose()
