"""The run store: one SQLite file in the data directory, opened with InvokeAI's discipline (WAL, busy
timeout, foreign keys, versioned migrations with a backup first) and short IMMEDIATE write transactions.

pysqlite's own transaction handling is switched off (SQLAlchemy's recipe for SQLite): every transaction is
begun by the `begin` event, `BEGIN IMMEDIATE` for writers, so a writer waits for the lock at its start
instead of failing halfway when another process holds it (PITFALLS.md, SQLite). SQLite's own busy wait is
short (`BUSY_SLICE_S`); `Store._patiently` retries whole transactions around it, says "waiting for the
history" once, and gives up with `HistoryBusy` after a bounded wait (docs/history.md).
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
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.pool import QueuePool

from tnr_tui.services.history import migrations
from tnr_tui.services.history.errors import HistoryBusy, HistoryError, HistoryUnwritable, NoHistory
from tnr_tui.services.history.ids import new_run_id
from tnr_tui.services.history.models import LIVE_STATUSES, OUTPUT_KINDS, RUN_STATUSES, Output, Run, utcnow
from tnr_tui.services.history.paths import (
    DB_NAME,
    NO_SPACE,
    OUTPUTS,
    PERMISSION_DENIED,
    READ_ONLY_FS,
    filesystem_type,
    is_network_fs,
    place_problem,
    resolve_data_dir,
)
from tnr_tui.services.history.queries import RunFilter

T = TypeVar("T")

# Read at each use, so tests (and nothing else) can shorten them.
BUSY_SLICE_S = 2.0  # SQLite's own wait for a lock per attempt; the "waiting" notice comes after the first
LOCK_WAIT_S = 30.0  # a call gives up with HistoryBusy after about this long behind another process's lock
FINISH_WAIT_S = 120.0  # the final commit of a finished run (runs.execute) waits longer: its image exists

# SQLite's primary result codes (extended codes carry them in the low byte).
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 3, 5, 6, 8
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 10, 11, 13, 14, 26


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


def _sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of a sqlite3 or SQLAlchemy error, if it carries one."""
    code = getattr(getattr(exc, "orig", exc), "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _sqlite_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _is_busy(exc: BaseException) -> bool:
    code = _sqlite_code(exc)
    if code is not None:
        return code in (SQLITE_BUSY, SQLITE_LOCKED)
    return "database is locked" in _sqlite_text(exc)


def _files_of(db_path: Path) -> tuple[Path, ...]:
    return (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"))


def history_error(exc: BaseException, db_path: Path, *, reading: bool = False) -> HistoryError:
    """One line for a SQLite failure on the history: what is wrong, never "corrupt" for a place that is
    read-only, not ours to write, or full (issue 10, defect 5). `reading`: the failure was a read."""
    code, text = _sqlite_code(exc), _sqlite_text(exc)
    if reading and code in (SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_FULL):
        problem = place_problem(db_path.parent, _files_of(db_path))
        detail = f"{problem}, and SQLite says: {text}" if problem is not None else text
        return HistoryError(f"cannot read the history {db_path}: {detail}")
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return HistoryError(f"the history file {db_path} is damaged ({text}); it was left as it is")
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return HistoryBusy(f"the history {db_path} is held by another process; try again when it is free")
    if code == SQLITE_FULL:
        return HistoryUnwritable(f"cannot write the history {db_path}: {NO_SPACE} ({text})", NO_SPACE)
    if code in (SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN):
        problem = place_problem(db_path.parent, _files_of(db_path))
        if problem is not None:
            return HistoryUnwritable(f"cannot write the history {db_path}: {problem}", problem)
        if code == SQLITE_READONLY:
            return HistoryUnwritable(f"cannot write the history {db_path}: {text}", PERMISSION_DENIED)
        verb = "open" if code == SQLITE_CANTOPEN else "use"
        return HistoryError(f"cannot {verb} the history file {db_path}: {text}")
    return HistoryError(f"the history {db_path} failed: {text}")


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
    """The history of one data directory. Thread-safe for short calls; returns detached Run objects.

    `on_busy(message)` is called (in the calling thread) once per call that has waited `BUSY_SLICE_S` for
    another process's lock; open_store sets it to its `warn`, and a UI may set its own.
    """

    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        *,
        journal_mode: str,
        warnings: list[str],
        readonly: bool = False,
        on_busy: Callable[[str], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / DB_NAME
        self.outputs_dir = data_dir / OUTPUTS
        self.journal_mode = journal_mode
        self.warnings = warnings
        self.readonly = readonly
        self.on_busy = on_busy
        self.engine = engine
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        self.host = socket.gethostname()
        self._refs = 1
        self._registry_key: tuple[int, str, bool] | None = None

    # ---- sessions ---------------------------------------------------------------------------------

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _write(self) -> Session:
        return Session(self._writer, expire_on_commit=False)

    def _reading(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one read transaction (returned objects are detached)."""

        def once(_started: list[bool]) -> T:
            with self._read() as session:
                return work(session)

        return self._patiently(once, LOCK_WAIT_S, replayable=True, reading=True)

    def _writing(self, work: Callable[[Session], T], *, wait_s: float | None = None, replayable: bool = True) -> T:
        """`work(session)` in one BEGIN IMMEDIATE transaction, committed; retried whole while the lock is held.

        `replayable=False`: `work` consumes something once (an iterator), so a lock lost after it began
        (only possible with a rollback journal) is HistoryBusy at once; nothing was written either way.
        """
        if self.readonly:
            raise HistoryError(f"the history {self.db_path} was opened read-only; nothing was written")

        def once(started: list[bool]) -> T:
            with self._write() as session, session.begin():
                session.connection()  # BEGIN IMMEDIATE here, so that a lock wait comes before any work
                started.append(True)
                return work(session)

        return self._patiently(once, LOCK_WAIT_S if wait_s is None else wait_s, replayable=replayable)

    def _patiently(
        self, once: Callable[[list[bool]], T], wait_s: float, *, replayable: bool, reading: bool = False
    ) -> T:
        """Retry `once` while SQLite says busy, up to about `wait_s` (plus one slice); other SQLite errors
        become one-line HistoryErrors (`history_error`)."""
        start = time.monotonic()
        warned = False
        while True:
            started: list[bool] = []
            try:
                return once(started)
            except DBAPIError as e:
                if not _is_busy(e):
                    raise history_error(e, self.db_path, reading=reading) from None
                waited = time.monotonic() - start
                if waited >= wait_s or (started and not replayable):
                    raise HistoryBusy(
                        f"the history {self.db_path} is held by another process (waited {waited:.0f} s); "
                        "try again when it is free"
                    ) from None
                if not warned and self.on_busy is not None:
                    warned = True
                    self.on_busy(f"waiting for the history (held by another process): {self.db_path}")
                time.sleep(0.05)  # SQLite waited its slice already; this only keeps a failing-fast lock from spinning

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
        new_id = run_id or new_run_id()

        def work(session: Session) -> None:
            now = utcnow()
            session.add(  # a fresh object per attempt: a retried transaction never reuses a failed one's
                Run(
                    id=new_id,
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
            )

        self._writing(work)
        return new_id

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
        wait_s: float | None = None,
        if_live: bool = False,
    ) -> bool:
        """Complete a run: its outcome and the rows of its (already complete) files, in one transaction.

        `request`, when given, replaces the stored one (the resolved request: native sizes filled in).
        `wait_s`: how long to wait for another process's lock (default `LOCK_WAIT_S`).
        `if_live`: change the run only while it is still queued or running (an error path must never turn
        a run that was recorded `done` into `failed`); returns whether the run was changed.
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
        outputs = list(outputs)
        target = update(Run).where(Run.id == run_id)
        if if_live:
            target = target.where(Run.status.in_(LIVE_STATUSES))

        def work(session: Session) -> bool:
            if not session.execute(target.values(**values)).rowcount:
                if if_live:
                    return False
                raise HistoryError(f"no run with id {run_id}")
            for out in outputs:
                session.add(
                    Output(
                        run_id=run_id, kind=out.kind, path=self.stored_path(out.path), sha256=out.sha256, size=out.size
                    )
                )
            return True

        return self._writing(work, wait_s=wait_s)

    def add_output(self, run_id: str, output: OutputFile) -> None:
        def work(session: Session) -> None:
            session.add(
                Output(
                    run_id=run_id,
                    kind=output.kind,
                    path=self.stored_path(output.path),
                    sha256=output.sha256,
                    size=output.size,
                )
            )

        self._writing(work)

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

        def work(session: Session) -> list[Path]:
            run = session.get(Run, run_id, options=[selectinload(Run.outputs)])
            if run is None:
                raise HistoryError(f"no run with id {run_id}")
            return self._owned_files(session, run)

        return self._reading(work)

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

        def work(session: Session) -> list[Path]:
            run = session.get(Run, run_id, options=[selectinload(Run.outputs)])
            if run is None:
                raise HistoryError(f"no run with id {run_id}")
            owned = self._owned_files(session, run) if delete_files else []
            session.delete(run)
            return owned

        paths = self._writing(work)
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
        def work(session: Session) -> None:
            if not session.execute(update(Run).where(Run.id == run_id).values(**values)).rowcount:
                raise HistoryError(f"no run with id {run_id}")

        self._writing(work)

    # ---- crash recovery ---------------------------------------------------------------------------

    def mark_interrupted(
        self, pid_alive: Callable[[int], bool] | None = None, *, wait_s: float | None = None
    ) -> list[str]:
        """Runs left `running`/`queued` by a process of this host that is gone become `interrupted`."""
        alive = pid_alive or _pid_alive
        live = self._reading(
            lambda session: session.execute(
                select(Run.id, Run.pid).where(Run.status.in_(LIVE_STATUSES), Run.host == self.host)
            ).all()
        )
        orphans = [run_id for run_id, pid in live if pid is None or not alive(pid)]
        if not orphans:
            return []
        self._writing(
            lambda session: session.execute(
                update(Run)
                .where(Run.id.in_(orphans), Run.status.in_(LIVE_STATUSES))
                .values(status="interrupted", finished_at=utcnow(), error="the process running it ended unexpectedly")
            ),
            wait_s=wait_s,
        )
        return orphans

    # ---- reading ----------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run | None:
        return self._reading(lambda session: session.get(Run, run_id, options=[selectinload(Run.outputs)]))

    def find_run(self, id_or_prefix: str) -> Run:
        """A run by id or unique id prefix (case-insensitive); HistoryError naming the problem otherwise."""
        key = id_or_prefix.strip().upper()
        if not key:
            raise HistoryError("give a run id")
        run = self.get_run(key)
        if run is not None:
            return run
        ids = self._reading(
            lambda session: session.scalars(
                select(Run.id).where(Run.id.startswith(key, autoescape=True)).limit(2)
            ).all()
        )
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
        return self._reading(lambda session: list(session.scalars(query).all()))

    def count_runs(self, filters: RunFilter | None = None) -> int:
        query = select(func.count()).select_from(Run)
        if filters is not None:
            query = filters.apply(query)
        return self._reading(lambda session: int(session.scalar(query) or 0))

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
        query = select(Output.run_id).where(Output.sha256 == sha256, Output.kind == kind).limit(1)
        return self._reading(lambda session: session.scalar(query))

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)

        def work(session: Session) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(ids), 500):
                found.update(session.scalars(select(Run.id).where(Run.id.in_(ids[i : i + 500]))).all())
            return found

        return self._reading(work)

    # ---- bulk (import, benchmarks) ----------------------------------------------------------------

    def insert_records(self, records: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Insert whole run records (Run.to_dict() form) in ONE transaction; ids already present are skipped.

        Returns (added, skipped). Any error rolls everything back; a value the file cannot hold is a
        HistoryError naming the run (transfer.py checks records first; this is the net under it).
        """
        from sqlalchemy.exc import IntegrityError, InterfaceError

        from tnr_tui.services.history.models import parse_iso

        replayable = isinstance(records, Sequence)  # a generator can be consumed once: no retry after it began

        def work(session: Session) -> tuple[int, int]:
            added = skipped = 0
            current = None
            try:
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
                session.flush()  # constraint errors surface here, inside the net, not at COMMIT
            except (
                OverflowError,
                ValueError,
                TypeError,
                KeyError,
                AttributeError,
                InterfaceError,
                IntegrityError,
            ) as e:
                # Rolled back by the transaction's `with`. Autoflush may have failed on an earlier run than `current`.
                detail = str(getattr(e, "orig", None) or e).splitlines()
                reason = detail[0] if detail else type(e).__name__
                raise HistoryError(
                    f"cannot store the import (near run {current}): {reason}; nothing was imported"
                ) from None
            return added, skipped

        return self._writing(work, replayable=replayable)


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


def _probe(connect: Callable[[], sqlite3.Connection]) -> tuple[int, set[str]]:
    """The schema version and table names, asked of SQLite (raw sqlite3 errors propagate)."""
    conn = connect()
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    return version, tables


def _wal_has_content(db_path: Path) -> bool:
    try:
        return os.stat(f"{db_path}-wal").st_size > 0  # metadata only, never opened
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: do not pretend it is empty


def _probe_error(exc: sqlite3.Error, db_path: Path, *, reading: bool = False) -> HistoryError:
    if _sqlite_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return HistoryError(
            f"history file {db_path} is corrupt or not a SQLite database; it was left untouched "
            f"(move it away to start a new history, or point --data-dir elsewhere; SQLite says: {_sqlite_text(exc)})"
        )
    return history_error(exc, db_path, reading=reading)


def _check_version(db_path: Path, version: int, tables: set[str]) -> int:
    """The file's schema version; HistoryError for a file that is not (or no longer) a sound history."""
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


def _file_state(db_path: Path) -> int:
    """The file's schema version, read through SQLite; HistoryError saying what is wrong otherwise."""
    try:
        version, tables = _probe(lambda: sqlite3.connect(db_path, timeout=LOCK_WAIT_S, isolation_level=None))
    except sqlite3.Error as e:
        raise _probe_error(e, db_path) from None
    return _check_version(db_path, version, tables)


def _readonly_uri(db_path: Path, *, immutable: bool) -> str:
    # mode=ro: never creates, migrates or recovers anything; immutable=1: no -shm needed (see open_store).
    uri = "file:" + urllib.parse.quote(os.path.abspath(db_path)) + "?mode=ro"
    return uri + "&immutable=1" if immutable else uri


# One Store per history file per process (issue 10): every `open_store` of a file this process has open
# returns the same Store, counted, so no code path can open a second engine (or touch the file) beside it.
# A read-only open shares a writable store of the same file; the key's last item is `readonly`.
_OPEN_STORES: dict[tuple[int, str, bool], Store] = {}
_OPEN_LOCK = threading.Lock()


def open_store(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    warn: Callable[[str], None] | None = _stderr_warning,
    recover: bool = True,
    readonly: bool = False,
) -> Store:
    """Open (creating or migrating as needed) the history of a data directory.

    `warn` receives one-line warnings (network filesystem, "waiting for the history"); the first kind is
    also kept in `store.warnings`, the second goes to `store.on_busy`, which a UI may replace.
    `recover` marks runs whose process is gone as interrupted.

    `readonly=True` (history list/show/export): opens an existing history only, with SQLite's `mode=ro`:
    no directory or file is created, nothing is migrated or recovered, every write is refused. A missing
    history is `NoHistory`. Works on a read-only filesystem or a directory this user cannot write.

    A history this process already has open is not opened again: the same Store comes back (each
    `open_store` is matched by one `close()`; the engine is disposed at the last).
    """
    directory = resolve_data_dir(data_dir)  # HistoryError for an empty --data-dir
    path = os.path.realpath(directory / DB_NAME)
    pid = os.getpid()
    with _OPEN_LOCK:
        for key in [(pid, path, False)] + ([(pid, path, True)] if readonly else []):
            shared = _OPEN_STORES.get(key)
            if shared is not None:
                shared._refs += 1
                return shared
        if readonly:
            store = _open_readonly_store(directory, warn=warn)
        else:
            store = _open_new_store(directory, warn=warn, recover=recover)
        store._registry_key = (pid, path, readonly)
        _OPEN_STORES[store._registry_key] = store
        return store


def _open_readonly_store(directory: Path, *, warn: Callable[[str], None] | None) -> Store:
    db_path = directory / DB_NAME
    if os.path.lexists(directory) and not directory.is_dir():
        raise HistoryError(f"the data directory {directory} is not a directory")
    if not os.path.lexists(db_path):
        raise NoHistory(f"no history at {directory} yet")
    _check_file(db_path)
    # mode=ro still needs the -shm of a WAL file, and creates it when missing: in a directory it cannot
    # write, that fails (SQLITE_CANTOPEN or READONLY_DIRECTORY; IOERR_SHMSIZE on a full disk). With no -wal,
    # or an empty one, nothing outside the main file is to be read, so immutable=1 (no -shm, no locks) reads
    # it exactly. A -wal with content (a writer crashed, or runs as another user) comes with its -shm, and
    # mode=ro reads both, even when it may not write them.
    immutable = False
    try:
        version, tables = _probe(lambda: sqlite3.connect(_readonly_uri(db_path, immutable=False), uri=True))
    except sqlite3.Error as e:
        if _sqlite_code(e) not in (SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_IOERR) or _wal_has_content(db_path):
            raise _probe_error(e, db_path, reading=True) from None
        immutable = True
        try:
            version, tables = _probe(lambda: sqlite3.connect(_readonly_uri(db_path, immutable=True), uri=True))
        except sqlite3.Error as e2:
            raise _probe_error(e2, db_path, reading=True) from None
    if version == 0 and not tables - {"sqlite_sequence"}:
        raise NoHistory(f"no history at {directory} yet")  # created but never written: no runs
    _check_version(db_path, version, tables)
    if version < migrations.LATEST_VERSION:
        # The reader cannot read an older schema. Where the file may be written it is upgraded once, with a
        # backup, as any writable open would do (so `history list` after an upgrade of tnr-lab just works).
        if immutable or place_problem(directory, _files_of(db_path)) is not None:
            raise HistoryError(
                f"history file {db_path} has schema version {version}, older than this tnr-lab's "
                f"({migrations.LATEST_VERSION}), and cannot be upgraded where it is (read-only). Open it once "
                "where it is writable (any tnr-lab command upgrades it, keeping a backup)"
            )
        try:
            conn = sqlite3.connect(db_path, timeout=LOCK_WAIT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise history_error(e, db_path) from None
        try:
            _upgrade(conn, db_path, version)
        except sqlite3.DatabaseError as e:
            raise history_error(e, db_path) from None
        finally:
            conn.close()
    uri = _readonly_uri(db_path, immutable=immutable)
    engine = _make_engine(db_path, wal=False, readonly_uri=uri)
    return Store(
        directory,
        engine,
        journal_mode="immutable" if immutable else "readonly",
        warnings=[],
        readonly=True,
        on_busy=warn,
    )


def _open_new_store(directory: Path, *, warn: Callable[[str], None] | None, recover: bool) -> Store:
    db_path = directory / DB_NAME
    try:
        (directory / OUTPUTS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = place_problem(_existing_parent(directory))
        reason = problem or e.strerror or str(e)
        message = f"cannot create the data directory {directory / OUTPUTS}: {reason}"
        if os.path.lexists(db_path):
            message += " (the history there can still be read: tnr-lab history list)"
        if problem is not None:
            raise HistoryUnwritable(message, problem) from None
        raise HistoryError(message) from None
    _check_file(db_path)
    # Say what is wrong with the place before SQLite does (it would call a read-only file "unable to open").
    problem = place_problem(directory, _files_of(db_path))
    if problem in (READ_ONLY_FS, PERMISSION_DENIED):
        readable = " (it can still be read: tnr-lab history list)" if os.path.lexists(db_path) else ""
        raise HistoryUnwritable(f"cannot write the history in {directory}: {problem}{readable}", problem)
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
        conn = sqlite3.connect(db_path, timeout=LOCK_WAIT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise history_error(e, db_path) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
        mode = conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0]
        _upgrade(conn, db_path, version)
    except sqlite3.DatabaseError as e:
        raise history_error(e, db_path) from None
    finally:
        conn.close()

    engine = _make_engine(db_path, wal=mode == "wal")
    store = Store(directory, engine, journal_mode=mode, warnings=warnings, on_busy=warn)
    if recover:
        try:
            store.mark_interrupted(wait_s=0)  # one slice at most: recovery can wait for the next open
        except HistoryBusy:
            pass
        except BaseException:
            store.engine.dispose()
            raise
    return store


def _upgrade(conn: sqlite3.Connection, db_path: Path, version: int) -> None:
    """Migrate a file at `version` to the latest schema, backing up one that holds data first."""
    if version < migrations.LATEST_VERSION:
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
        if version > 0:
            migrations.backup(conn, db_path, version, utcnow().strftime("%Y%m%dT%H%M%S"))
        migrations.migrate(conn)


def _existing_parent(path: Path) -> Path:
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def _make_engine(db_path: Path, *, wal: bool, readonly_uri: str | None = None) -> Engine:
    if readonly_uri is None:
        engine = create_engine(
            f"sqlite:///{db_path}",
            connect_args={"timeout": BUSY_SLICE_S, "check_same_thread": False},
        )
    else:
        uri = readonly_uri
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_SLICE_S, check_same_thread=False),
            poolclass=QueuePool,
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let the `begin` event own transactions (pysqlite would otherwise BEGIN DEFERRED lazily).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_SLICE_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if readonly_uri is not None:
            cursor.execute("PRAGMA query_only = ON")  # a second lock on the door
        if wal:
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe against corruption
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


__all__ = [
    "HistoryBusy",
    "HistoryError",
    "HistoryUnwritable",
    "NoHistory",
    "OutputFile",
    "Store",
    "history_error",
    "open_store",
    "sha256_file",
]
