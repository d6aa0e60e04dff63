"""The run store: one SQLite file in the data directory, opened with InvokeAI's discipline (WAL, busy
timeout, foreign keys, versioned migrations with a backup first) and short IMMEDIATE write transactions.

pysqlite's own transaction handling is switched off (SQLAlchemy's recipe for SQLite): every transaction is
begun by the `begin` event, `BEGIN IMMEDIATE` for writers, so a writer waits on the busy timeout instead of
failing at once when another process holds the lock (PITFALLS.md, SQLite).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.orm import Session, selectinload

from tnr_tui.history import migrations
from tnr_tui.history.errors import HistoryError
from tnr_tui.history.ids import new_run_id
from tnr_tui.history.models import LIVE_STATUSES, OUTPUT_KINDS, RUN_STATUSES, Output, Run, utcnow
from tnr_tui.history.paths import DB_NAME, OUTPUTS, filesystem_type, is_network_fs, resolve_data_dir
from tnr_tui.history.queries import RunFilter

BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class OutputFile:
    """A complete file of a run, described before the row that points to it is written."""

    kind: str
    path: Path
    sha256: str
    size: int

    @classmethod
    def of(cls, kind: str, path: Path) -> OutputFile:
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        return cls(kind, Path(path), sha256_file(path), Path(path).stat().st_size)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stderr_warning(message: str) -> None:
    print(f"tnr-lab: warning: {message}", file=sys.stderr)


def _index_columns(request: dict[str, Any]) -> dict[str, Any]:
    """The indexed copies of the request's fields (the JSON stays the truth)."""
    tags = request.get("tags") or {}
    return {
        "prompt": request.get("prompt", ""),
        "negative_prompt": request.get("negative_prompt", ""),
        "model": request.get("model", ""),
        "solver": request.get("solver", ""),
        "guidance": request.get("guidance", ""),
        "scale": request.get("scale"),
        "steps": request.get("steps", 0),
        "seed": request.get("seed", 0),
        "width": request.get("width"),
        "height": request.get("height"),
        "schedule": request.get("schedule", "default"),
        "sweep": tags.get("sweep") if isinstance(tags, dict) else None,
    }


def _check_file(db_path: Path) -> None:
    """Refuse a path that cannot hold the history, from its metadata only (a corrupt history is never modified).

    The file's content is never read here with plain file I/O: on POSIX, closing *any* descriptor of a file
    drops every lock the process holds on it, SQLite's included, so a second `open()`/`close()` of the
    database while a connection of this process is open silently unlocks that connection; another process
    then checkpoints and deletes the WAL under it (issue 10, PITFALLS.md). Whether the bytes are SQLite is
    asked of SQLite itself (`_file_state`), which shares one set of locks among a process's connections.
    """
    try:
        st = db_path.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise HistoryError(f"cannot read the history file {db_path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise HistoryError(
            f"the history file {db_path} is a directory, not a SQLite file; it was left untouched "
            "(move it away, or point --data-dir elsewhere)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise HistoryError(f"the history file {db_path} is not a regular file; it was left untouched")
    if not os.access(db_path, os.R_OK):
        raise HistoryError(f"cannot read the history file {db_path}: permission denied")


class Store:
    """The history of one data directory. Thread-safe for short calls; returns detached Run objects."""

    def __init__(self, data_dir: Path, engine: Engine, *, journal_mode: str, warnings: list[str]) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / DB_NAME
        self.outputs_dir = data_dir / OUTPUTS
        self.journal_mode = journal_mode
        self.warnings = warnings
        self.engine = engine
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        self.host = socket.gethostname()
        self._refs = 1
        self._registry_key: tuple[int, str] | None = None

    # ---- sessions ---------------------------------------------------------------------------------

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _write(self) -> Session:
        return Session(self._writer, expire_on_commit=False)

    def close(self) -> None:
        """Release this handle; the last holder's close disposes the engine (see `open_store`)."""
        with _OPEN_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            if _OPEN_STORES.get(self._registry_key) is self:
                del _OPEN_STORES[self._registry_key]
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paths ------------------------------------------------------------------------------------

    def stored_path(self, path: Path) -> str:
        """How a file path is recorded: relative to the data directory when inside it."""
        resolved = Path(os.path.abspath(path))
        try:
            return resolved.relative_to(os.path.abspath(self.data_dir)).as_posix()
        except ValueError:
            return str(resolved)

    def resolve(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.data_dir / p

    def new_output_path(self, run_id: str, suffix: str) -> Path:
        day = utcnow().strftime("%Y-%m-%d")
        return self.outputs_dir / day / f"{run_id}{suffix}"

    # ---- writing runs -----------------------------------------------------------------------------

    def create_run(
        self,
        request: dict[str, Any] | Any,
        *,
        status: str = "running",
        origin: str = "cli",
        parent_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Record a new run (committed at once); `running` runs carry this process's pid and host."""
        if status not in LIVE_STATUSES:
            raise ValueError(f"a new run is queued or running, not {status!r}")
        request_dict = request if isinstance(request, dict) else request.to_dict()
        now = utcnow()
        run = Run(
            id=run_id or new_run_id(),
            created_at=now,
            started_at=now if status == "running" else None,
            status=status,
            request_json=json.dumps(request_dict, sort_keys=True),
            favourite=False,
            notes="",
            pid=os.getpid(),
            host=self.host,
            origin=origin,
            parent_id=parent_id,
            **_index_columns(request_dict),
        )
        with self._write() as session, session.begin():
            session.add(run)
        return run.id

    def start_run(self, run_id: str) -> None:
        """A queued run begins (its pid and host become this process's)."""
        self._update(run_id, status="running", started_at=utcnow(), pid=os.getpid(), host=self.host)

    def set_model(
        self,
        run_id: str,
        *,
        model_path: str | None = None,
        model_name: str | None = None,
        model_identity: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        versions: dict[str, Any] | None = None,
    ) -> None:
        """What was actually loaded for a run (known after the model load, before sampling)."""
        values = {
            "model_path": model_path,
            "model_name": model_name,
            "model_identity": model_identity,
            "device": device,
            "dtype": dtype,
            "versions": versions,
        }
        self._update(run_id, **{k: v for k, v in values.items() if v is not None})

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        stats: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        error: str | None = None,
        outputs: Iterable[OutputFile] = (),
        request: dict[str, Any] | None = None,
    ) -> None:
        """Complete a run: its outcome and the rows of its (already complete) files, in one transaction.

        `request`, when given, replaces the stored one (the resolved request: native sizes filled in).
        """
        if status not in ("done", "failed", "cancelled", "interrupted"):
            raise ValueError(f"a run finishes as done, failed, cancelled or interrupted, not {status!r}")
        stats = dict(stats or {})
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if stats:
            values["seconds"] = stats.pop("seconds", None)
            values["seconds_per_step"] = stats.pop("seconds_per_step", None)
            values["model_evaluations"] = stats.pop("model_evaluations", None)
            for key in ("device", "dtype"):
                if stats.get(key) is not None:
                    values[key] = str(stats.pop(key))
            stats.pop("request", None)
            values["stats"] = _jsonable(stats)
        if metrics is not None:
            values["metrics"] = {k: float(v) for k, v in metrics.items()}
        if request is not None:
            values["request_json"] = json.dumps(request, sort_keys=True)
            values.update(_index_columns(request))
        with self._write() as session, session.begin():
            found = session.execute(update(Run).where(Run.id == run_id).values(**values)).rowcount
            if not found:
                raise HistoryError(f"no run with id {run_id}")
            for out in outputs:
                session.add(
                    Output(
                        run_id=run_id, kind=out.kind, path=self.stored_path(out.path), sha256=out.sha256, size=out.size
                    )
                )

    def add_output(self, run_id: str, output: OutputFile) -> None:
        with self._write() as session, session.begin():
            session.add(
                Output(
                    run_id=run_id,
                    kind=output.kind,
                    path=self.stored_path(output.path),
                    sha256=output.sha256,
                    size=output.size,
                )
            )

    def set_favourite(self, run_id: str, favourite: bool = True) -> None:
        self._update(run_id, favourite=bool(favourite))

    def set_note(self, run_id: str, notes: str) -> None:
        self._update(run_id, notes=notes)

    def files_to_delete(self, run_id: str) -> list[Path]:
        """The files `delete_run(run_id, delete_files=True)` would remove (for a dialog to list first).

        Only the history's own files: each output that resolves (symlinks followed) to a regular file inside
        this data directory's outputs/ and that no other run records. A file a run recorded by absolute path
        elsewhere (an import of the user's own file), or a link leading out of outputs/, is never deleted.
        """
        with self._read() as session:
            run = session.get(Run, run_id, options=[selectinload(Run.outputs)])
            if run is None:
                raise HistoryError(f"no run with id {run_id}")
            return self._owned_files(session, run)

    def _owned_files(self, session: Session, run: Run) -> list[Path]:
        outputs_root = os.path.realpath(self.outputs_dir)
        owned: list[Path] = []
        for out in run.outputs:
            real = os.path.realpath(self.resolve(out.path))
            if os.path.commonpath([outputs_root, real]) != outputs_root or real == outputs_root:
                continue
            if not os.path.isfile(real) or Path(real) in owned:
                continue
            # Another run pointing at the same file keeps it (by either stored form of the path).
            forms = {out.path, self.stored_path(Path(real)), real}
            shared = session.scalar(
                select(Output.run_id).where(Output.path.in_(forms), Output.run_id != run.id).limit(1)
            )
            if shared is None:
                owned.append(Path(real))
        return owned

    def delete_run(self, run_id: str, *, delete_files: bool = False) -> list[Path]:
        """Delete a run and its output rows; with `delete_files`, also `files_to_delete(run_id)`.

        Returns the files removed. The row goes first (one transaction); a file that cannot be removed
        afterwards is a HistoryError naming it (the run is gone from the history either way).
        """
        with self._write() as session, session.begin():
            run = session.get(Run, run_id, options=[selectinload(Run.outputs)])
            if run is None:
                raise HistoryError(f"no run with id {run_id}")
            paths = self._owned_files(session, run) if delete_files else []
            session.delete(run)
        removed: list[Path] = []
        for p in paths:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise HistoryError(f"run {run_id} was deleted, but its file {p} was not: {e.strerror or e}") from None
            removed.append(p)
        return removed

    def _update(self, run_id: str, **values: Any) -> None:
        with self._write() as session, session.begin():
            if not session.execute(update(Run).where(Run.id == run_id).values(**values)).rowcount:
                raise HistoryError(f"no run with id {run_id}")

    # ---- crash recovery ---------------------------------------------------------------------------

    def mark_interrupted(self, pid_alive: Callable[[int], bool] | None = None) -> list[str]:
        """Runs left `running`/`queued` by a process of this host that is gone become `interrupted`."""
        alive = pid_alive or _pid_alive
        with self._read() as session:
            live = session.execute(
                select(Run.id, Run.pid).where(Run.status.in_(LIVE_STATUSES), Run.host == self.host)
            ).all()
        orphans = [run_id for run_id, pid in live if pid is None or not alive(pid)]
        if not orphans:
            return []
        with self._write() as session, session.begin():
            session.execute(
                update(Run)
                .where(Run.id.in_(orphans), Run.status.in_(LIVE_STATUSES))
                .values(status="interrupted", finished_at=utcnow(), error="the process running it ended unexpectedly")
            )
        return orphans

    # ---- reading ----------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run | None:
        with self._read() as session:
            return session.get(Run, run_id, options=[selectinload(Run.outputs)])

    def find_run(self, id_or_prefix: str) -> Run:
        """A run by id or unique id prefix (case-insensitive); HistoryError naming the problem otherwise."""
        key = id_or_prefix.strip().upper()
        if not key:
            raise HistoryError("give a run id")
        run = self.get_run(key)
        if run is not None:
            return run
        with self._read() as session:
            ids = session.scalars(select(Run.id).where(Run.id.startswith(key, autoescape=True)).limit(2)).all()
        if not ids:
            raise HistoryError(f"no run with id {id_or_prefix!r} in {self.db_path}")
        if len(ids) > 1:
            raise HistoryError(f"run id prefix {id_or_prefix!r} is ambiguous; give more characters")
        run = self.get_run(ids[0])
        assert run is not None
        return run

    def list_runs(self, filters: RunFilter | None = None, after: str | None = None, limit: int = 50) -> list[Run]:
        """One page of runs, newest first; pass the last id of a page as `after` for the next one."""
        query = select(Run).options(selectinload(Run.outputs)).order_by(Run.id.desc()).limit(limit)
        if filters is not None:
            query = filters.apply(query)
        if after is not None:
            query = query.where(Run.id < after)
        with self._read() as session:
            return list(session.scalars(query).all())

    def count_runs(self, filters: RunFilter | None = None) -> int:
        query = select(func.count()).select_from(Run)
        if filters is not None:
            query = filters.apply(query)
        with self._read() as session:
            return int(session.scalar(query) or 0)

    def iter_runs(self, filters: RunFilter | None = None, batch: int = 1000) -> Iterator[Run]:
        """Every matching run, newest first, page by page (bounded memory, no long read transaction)."""
        after = None
        while True:
            page = self.list_runs(filters, after=after, limit=batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].id

    def run_with_output(self, sha256: str, kind: str = "image") -> str | None:
        """The id of a run that already records a file with this content, if any."""
        with self._read() as session:
            return session.scalar(select(Output.run_id).where(Output.sha256 == sha256, Output.kind == kind).limit(1))

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        with self._read() as session:
            for i in range(0, len(ids), 500):
                found.update(session.scalars(select(Run.id).where(Run.id.in_(ids[i : i + 500]))).all())
        return found

    # ---- bulk (import, benchmarks) ----------------------------------------------------------------

    def insert_records(self, records: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Insert whole run records (Run.to_dict() form) in ONE transaction; ids already present are skipped.

        Returns (added, skipped). Any error rolls everything back; a value the file cannot hold is a
        HistoryError naming the run (transfer.py checks records first; this is the net under it).
        """
        from sqlalchemy.exc import IntegrityError, InterfaceError

        from tnr_tui.history.models import parse_iso

        added = skipped = 0
        current = None
        try:
            with self._write() as session, session.begin():
                for rec in records:
                    current = rec.get("id")
                    if session.get(Run, rec["id"]) is not None:
                        skipped += 1
                        continue
                    request = rec["request"]
                    run = Run(
                        id=rec["id"],
                        created_at=parse_iso(rec.get("created_at")) or utcnow(),
                        started_at=parse_iso(rec.get("started_at")),
                        finished_at=parse_iso(rec.get("finished_at")),
                        status=rec.get("status", "done"),
                        request_json=json.dumps(request, sort_keys=True),
                        model_path=rec.get("model_path"),
                        model_name=rec.get("model_name"),
                        model_identity=rec.get("model_identity"),
                        seconds=rec.get("seconds"),
                        seconds_per_step=rec.get("seconds_per_step"),
                        model_evaluations=rec.get("model_evaluations"),
                        metrics=rec.get("metrics"),
                        stats=rec.get("stats"),
                        device=rec.get("device"),
                        dtype=rec.get("dtype"),
                        versions=rec.get("versions"),
                        error=rec.get("error"),
                        favourite=bool(rec.get("favourite", False)),
                        notes=rec.get("notes") or "",
                        pid=rec.get("pid"),
                        host=rec.get("host"),
                        origin=rec.get("origin") or "import",
                        parent_id=rec.get("parent_id"),
                        **_index_columns(request),
                    )
                    if run.status not in RUN_STATUSES:
                        raise HistoryError(f"run {run.id}: unknown status {run.status!r}")
                    session.add(run)
                    for out in rec.get("outputs") or ():
                        session.add(
                            Output(
                                run_id=run.id,
                                kind=out["kind"],
                                path=out["path"],
                                sha256=out["sha256"],
                                size=out["size"],
                            )
                        )
                    added += 1
                    if added % 1000 == 0:
                        session.flush()
        except (OverflowError, ValueError, TypeError, KeyError, AttributeError, InterfaceError, IntegrityError) as e:
            # Rolled back already (the `with` above). Autoflush may have failed on an earlier run than `current`.
            detail = str(getattr(e, "orig", None) or e).splitlines()
            reason = detail[0] if detail else type(e).__name__
            raise HistoryError(
                f"cannot store the import (near run {current}): {reason}; nothing was imported"
            ) from None
        return added, skipped


def _jsonable(value: Any) -> Any:
    """Stats may hold tensors' floats, tuples, dtypes: keep what JSON can say."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    # A zombie (killed, not yet reaped by its parent) still answers kill(0): it is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _file_state(db_path: Path) -> int:
    """The file's schema version; HistoryError for a file that is not (or no longer) a sound SQLite file."""
    try:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise HistoryError(f"cannot open the history file {db_path}: {e}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise HistoryError(
            f"history file {db_path} is corrupt or not a SQLite database; it was left untouched "
            f"(move it away to start a new history, or point --data-dir elsewhere; SQLite says: {e})"
        ) from None
    finally:
        conn.close()
    if version == 0 and tables - {"sqlite_sequence"}:
        raise HistoryError(f"{db_path} is a SQLite file but not a tnr-lab history; it was left untouched")
    if version > migrations.LATEST_VERSION:
        raise HistoryError(
            f"history file {db_path} has schema version {version}, newer than this tnr-lab understands "
            f"({migrations.LATEST_VERSION}); upgrade tnr-lab. The file was left untouched"
        )
    if version > 0 and not {"runs", "outputs"} <= tables:
        raise HistoryError(f"history file {db_path} is damaged (tables missing); it was left untouched")
    return version


# One Store per history file per process (issue 10): every `open_store` of a file this process has open
# returns the same Store, counted, so no code path can open a second engine (or touch the file) beside it.
_OPEN_STORES: dict[tuple[int, str], Store] = {}
_OPEN_LOCK = threading.Lock()


def open_store(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    warn: Callable[[str], None] | None = _stderr_warning,
    recover: bool = True,
) -> Store:
    """Open (creating or migrating as needed) the history of a data directory.

    `warn` receives one-line warnings (network filesystem); they are also kept in `store.warnings`.
    `recover` marks runs whose process is gone as interrupted.

    A history this process already has open is not opened again: the same Store comes back (each
    `open_store` is matched by one `close()`; the engine is disposed at the last).
    """
    directory = resolve_data_dir(data_dir)  # HistoryError for an empty --data-dir
    key = (os.getpid(), os.path.realpath(directory / DB_NAME))
    with _OPEN_LOCK:
        shared = _OPEN_STORES.get(key)
        if shared is not None:
            shared._refs += 1
            return shared
        store = _open_new_store(directory, warn=warn, recover=recover)
        store._registry_key = key
        _OPEN_STORES[key] = store
        return store


def _open_new_store(directory: Path, *, warn: Callable[[str], None] | None, recover: bool) -> Store:
    try:
        (directory / OUTPUTS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HistoryError(f"cannot create the data directory {directory}: {e.strerror or e}") from None
    db_path = directory / DB_NAME
    _check_file(db_path)
    version = _file_state(db_path)

    warnings: list[str] = []
    fstype = filesystem_type(directory)
    journal_mode = "wal"
    if is_network_fs(fstype):
        journal_mode = "delete"
        warnings.append(
            f"the data directory {directory} is on a network filesystem ({fstype}); SQLite's WAL mode is unsafe "
            "there, so the history uses rollback journaling (slower; writers must not be on other hosts). "
            "Set TNR_LAB_HOME or --data-dir to a local disk for speed."
        )
    for message in warnings:
        if warn is not None:
            warn(message)

    try:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise HistoryError(f"cannot open the history file {db_path}: {e}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0]
        if version < migrations.LATEST_VERSION:
            if version > 0:
                migrations.backup(conn, db_path, version, utcnow().strftime("%Y%m%dT%H%M%S"))
            migrations.migrate(conn)
    except sqlite3.DatabaseError as e:
        raise HistoryError(f"cannot prepare the history file {db_path}: {e}") from None
    finally:
        conn.close()

    engine = _make_engine(db_path, wal=mode == "wal")
    store = Store(directory, engine, journal_mode=mode, warnings=warnings)
    if recover:
        store.mark_interrupted()
    return store


def _make_engine(db_path: Path, *, wal: bool) -> Engine:
    engine = create_engine(
        f"sqlite:///{db_path}",
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let the `begin` event own transactions (pysqlite would otherwise BEGIN DEFERRED lazily).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if wal:
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe against corruption
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


__all__ = ["HistoryError", "OutputFile", "Store", "open_store", "sha256_file"]
