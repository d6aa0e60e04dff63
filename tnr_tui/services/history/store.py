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
import random
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
from tnr_tui.services.history.models import (
    LIVE_STATUSES,
    OUTPUT_KINDS,
    RUN_STATUSES,
    Output,
    OutputBlob,
    Run,
    utcnow,
)
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
from tnr_tui.services.history.search import allocate_keys, count_matching, lock_keys, page_ids, register_functions
from tnr_tui.services.history.steps import RunSteps
from tnr_tui.services.history.steps import decode as decode_steps
from tnr_tui.services.history.steps import encode as encode_steps
from tnr_tui.services.history.steps import encode_values as step_values
from tnr_tui.services.text import visible

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
        "schedule": _indexed_schedule(request),
        "sweep": tags.get("sweep") if isinstance(tags, dict) else None,
    }


def _indexed_schedule(request: dict[str, Any]) -> Any:
    """The schedule the run sampled: a request of format < 3 (an import of an old export) says "karras" for
    what is now "karras_diffusers" (engine.request.upgrade; schema 7 rewrote the rows already stored)."""
    from engine.request import KARRAS_BEFORE_FORMAT_3  # torch-free

    schedule = request.get("schedule", "default")
    fmt = request.get("format")
    if schedule == "karras" and isinstance(fmt, int) and not isinstance(fmt, bool) and fmt < 3:
        return KARRAS_BEFORE_FORMAT_3
    return schedule


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
    """The history of one data directory (SQLite) or one database (PostgreSQL: `backend`, postgres.py).
    Thread-safe for short calls; returns detached Run objects.

    `on_busy(message)` is called (in the calling thread) once per call that has waited `BUSY_SLICE_S` for
    another process's lock; open_store sets it to its `warn`, and a UI may set its own.

    Files: outputs live in `outputs_dir` (`<data dir>/outputs`, or `--outputs DIR`) and are recorded as
    `outputs/<day>/<file>`, so hosts that mount one output directory at different paths share the records.
    `files_in_database` (a PostgreSQL history without an output directory every host sees): each output's
    bytes are stored with its row too, and `resolve` writes a missing file back from them.
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
        outputs_dir: Path | None = None,
        location: str | None = None,
        files_in_database: bool = False,
        backend: Any = None,
    ) -> None:
        self._backend = backend  # None: SQLite; else postgres.PostgresBackend
        self.dialect = "sqlite" if backend is None else backend.dialect
        self.data_dir = data_dir
        self.db_path: Path | None = data_dir / DB_NAME if backend is None else None
        # What messages call the history: its file, or its URL without the password.
        self.location = location or str(self.db_path)
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else data_dir / OUTPUTS
        self.files_in_database = files_in_database
        self.journal_mode = journal_mode
        self.warnings = warnings
        self.readonly = readonly
        self.on_busy = on_busy
        self.engine = engine
        self._writer = self._writer_engine(engine)
        # SQLite's writers are serial already (one write lock); PostgreSQL's run SERIALIZABLE where they must.
        self._serial_writer = self._writer_engine(engine, serializable=True)
        self.host = socket.gethostname()
        self._refs = 1
        self._registry_key: tuple[int, str, bool] | None = None

    def _writer_engine(self, engine: Engine, *, serializable: bool = False) -> Engine:
        if self._backend is not None:
            return self._backend.writer_engine(engine, serializable=serializable)
        return engine.execution_options(sqlite_begin="IMMEDIATE")

    # What the database says about a failed statement.
    def _busy(self, exc: DBAPIError) -> bool:
        return self._backend.busy(exc) if self._backend is not None else _is_busy(exc)

    def _conflict(self, exc: DBAPIError) -> bool:
        """A failure that says "run the whole transaction again now" (PostgreSQL's serialization failures)."""
        return self._backend is not None and self._backend.conflict(exc)

    def _failure(self, exc: DBAPIError, *, reading: bool) -> HistoryError:
        if self._backend is not None:
            return self._backend.failure(exc, self.location, reading=reading)
        assert self.db_path is not None
        return history_error(exc, self.db_path, reading=reading)

    # ---- sessions ---------------------------------------------------------------------------------

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _write(self, *, serializable: bool = False) -> Session:
        return Session(self._serial_writer if serializable else self._writer, expire_on_commit=False)

    def _reading(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one read transaction (returned objects are detached)."""

        def once(_started: list[bool]) -> T:
            with self._read() as session:
                return work(session)

        return self._patiently(once, LOCK_WAIT_S, replayable=True, reading=True)

    def _writing(
        self,
        work: Callable[[Session], T],
        *,
        wait_s: float | None = None,
        replayable: bool = True,
        serializable: bool = False,
    ) -> T:
        """`work(session)` in one BEGIN IMMEDIATE transaction, committed; retried whole while the lock is held.

        `replayable=False`: `work` consumes something once (an iterator), so a lock lost after it began
        (only possible with a rollback journal) is HistoryBusy at once; nothing was written either way.
        """
        if self.readonly:
            raise HistoryError(f"the history {self.location} was opened read-only; nothing was written")

        def once(started: list[bool]) -> T:
            with self._write(serializable=serializable) as session, session.begin():
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
                conflict = self._conflict(e)
                if not conflict and not self._busy(e):
                    raise self._failure(e, reading=reading) from None
                waited = time.monotonic() - start
                if waited >= wait_s or (started and not replayable):
                    raise HistoryBusy(
                        f"the history {self.location} is held by another process (waited {waited:.0f} s); "
                        "try again when it is free"
                    ) from None
                if conflict:
                    # PostgreSQL: another transaction won a serialization conflict or a deadlock. Nothing of
                    # this one was kept; run it again at once (a little jitter keeps two from colliding again).
                    time.sleep(random.uniform(0.0, 0.02))
                    continue
                if not warned and self.on_busy is not None:
                    warned = True
                    self.on_busy(f"waiting for the history (held by another process): {self.location}")
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
        """How a file path is recorded: `outputs/...` inside the output directory, relative to the data
        directory elsewhere inside it, absolute otherwise."""
        resolved = Path(os.path.abspath(path))
        try:
            inside = resolved.relative_to(os.path.abspath(self.outputs_dir)).as_posix()
            return f"{OUTPUTS}/{inside}"
        except ValueError:
            pass
        try:
            relative = resolved.relative_to(os.path.abspath(self.data_dir)).as_posix()
        except ValueError:
            return str(resolved)
        # data_dir/outputs/... while the outputs are elsewhere (--outputs): "outputs/..." would name the
        # other directory, so such a file is recorded by its absolute path.
        return str(resolved) if relative.split("/", 1)[0] == OUTPUTS else relative

    def _path_of(self, stored: str) -> Path:
        p = Path(stored)
        if p.is_absolute():
            return p
        head, _, rest = stored.partition("/")
        if head == OUTPUTS and rest:
            return self.outputs_dir / rest
        return self.data_dir / p

    def resolve(self, stored: str) -> Path:
        """The local path of a recorded file. A file kept in the database (`files_in_database`, or written
        so by another host) that is missing here is first written back from its bytes, checked against its
        sha256; where that fails the path is returned all the same (readers say it is missing)."""
        path = self._path_of(stored)
        if self.dialect != "sqlite" and not os.path.lexists(path):
            try:
                self._restore_file(stored, path)
            except (HistoryError, OSError):
                pass
        return path

    def _restore_file(self, stored: str, path: Path) -> None:
        def work(session: Session) -> tuple[bytes, str] | None:
            row = session.execute(
                select(OutputBlob.data, Output.sha256)
                .join(Output, Output.id == OutputBlob.output_id)
                .where(Output.path == stored)
                .limit(1)
            ).first()
            return None if row is None else (bytes(row[0]), row[1])

        found = self._reading(work)
        if found is None or hashlib.sha256(found[0]).hexdigest() != found[1]:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(found[0])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

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
            lock_keys(session)
            key = allocate_keys(session, [new_id])[new_id]
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
                    search_key=key,
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
        steps: Any = None,
    ) -> bool:
        """Complete a run: its outcome and the rows of its (already complete) files, in one transaction.

        `request`, when given, replaces the stored one (the resolved request: native sizes filled in).
        `steps`: the run's per-step telemetry rows (an engine.telemetry.StepTable), kept in `run_steps`.
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
        contents = self._contents(outputs)  # read before the transaction, not while holding it
        target = update(Run).where(Run.id == run_id)
        if if_live:
            target = target.where(Run.status.in_(LIVE_STATUSES))

        def work(session: Session) -> bool:
            if not session.execute(target.values(**values)).rowcount:
                if if_live:
                    return False
                raise HistoryError(f"no run with id {run_id}")
            self._add_outputs(session, run_id, outputs, contents)
            if steps is not None:
                session.merge(encode_steps(run_id, steps))
            return True

        return self._writing(work, wait_s=wait_s)

    def add_output(self, run_id: str, output: OutputFile) -> None:
        contents = self._contents([output])
        self._writing(lambda session: self._add_outputs(session, run_id, [output], contents))

    def _contents(self, outputs: Sequence[OutputFile]) -> list[bytes | None]:
        """The bytes of each output where the database keeps them (`files_in_database`), checked against the
        sha256 the row will carry: a file changed since it was described is an error, not a wrong record."""
        if not self.files_in_database:
            return [None] * len(outputs)
        contents: list[bytes | None] = []
        for out in outputs:
            try:
                data = Path(out.path).read_bytes()
            except OSError as e:
                raise HistoryError(f"cannot read the output {out.path} to store it: {e.strerror or e}") from None
            if hashlib.sha256(data).hexdigest() != out.sha256:
                raise HistoryError(f"the output {out.path} changed after it was written; nothing was recorded")
            contents.append(data)
        return contents

    def _add_outputs(
        self, session: Session, run_id: str, outputs: Sequence[OutputFile], contents: Sequence[bytes | None]
    ) -> None:
        for out, data in zip(outputs, contents, strict=True):
            row = Output(
                run_id=run_id, kind=out.kind, path=self.stored_path(out.path), sha256=out.sha256, size=out.size
            )
            session.add(row)
            if data is not None:
                session.flush()  # the row's id, which the bytes point at
                session.add(OutputBlob(output_id=row.id, data=data))

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
            real = os.path.realpath(self._path_of(out.path))
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

        # SERIALIZABLE on PostgreSQL: the files kept because another run records them must still be recorded
        # by it when this commits (two deletes of the two runs sharing a file must not both keep it).
        paths = self._writing(work, serializable=True)
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

    def process_gone(self, run: Run, pid_alive: Callable[[int], bool] | None = None) -> bool:
        """Whether `run` is left queued/running by a process of this host that has ended: what
        `mark_interrupted` would mark, for a reader that does not write (a read-only `history list`)."""
        if run.status not in LIVE_STATUSES or run.host != self.host:
            return False
        return run.pid is None or not (pid_alive or _pid_alive)(run.pid)

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
            raise HistoryError(f"no run with id {id_or_prefix!r} in {self.location}")
        if len(ids) > 1:
            raise HistoryError(f"run id prefix {id_or_prefix!r} is ambiguous; give more characters")
        run = self.get_run(ids[0])
        assert run is not None
        return run

    def list_runs(self, filters: RunFilter | None = None, after: str | None = None, limit: int = 50) -> list[Run]:
        """One page of runs, newest first; pass the last id of a page as `after` for the next one.

        A prompt search on SQLite reads the full-text indexes newest first (search.page_ids); the result is
        what the plain query gives, only sooner."""
        if filters is not None and filters.text and self.dialect == "sqlite":
            needle = filters.text
            conditions = filters.conditions(self.dialect)  # the LIKE check included: the index only proposes

            def work(session: Session) -> list[Run]:
                ids = page_ids(session, needle, conditions, after, limit)
                if not ids:
                    return []
                rows = session.scalars(select(Run).options(selectinload(Run.outputs)).where(Run.id.in_(ids))).all()
                return sorted(rows, key=lambda run: run.id, reverse=True)

            return self._reading(work)
        query = select(Run).options(selectinload(Run.outputs)).order_by(Run.id.desc()).limit(limit)
        if filters is not None:
            query = filters.apply(query, self.dialect)
        if after is not None:
            query = query.where(Run.id < after)
        return self._reading(lambda session: list(session.scalars(query).all()))

    def count_runs(self, filters: RunFilter | None = None) -> int:
        if filters is not None and filters.text and self.dialect == "sqlite":
            needle, conditions = filters.text, filters.conditions(self.dialect)
            return self._reading(lambda session: count_matching(session, needle, conditions))
        query = select(func.count()).select_from(Run)
        if filters is not None:
            query = filters.apply(query, self.dialect)
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

    # ---- a run's trajectory: its per-step rows and frames (docs/CONTRACTS.md) ------------------------------

    def run_steps(self, run_id: str) -> Any:
        """The run's per-step telemetry rows (an engine.telemetry.StepTable), or None where it has none (a run
        recorded before schema 4, with telemetry off, or not finished). HistoryError for a damaged row."""
        from engine.telemetry import TelemetryError

        row = self._reading(lambda session: session.get(RunSteps, run_id))
        if row is None:
            return None
        try:
            return decode_steps(row)
        except TelemetryError as e:
            raise HistoryError(str(e)) from None

    def steps_shape(self, run_id: str) -> tuple[int, int] | None:
        """(rows, columns) of the run's per-step rows, read without decoding them (`history show`)."""
        query = select(RunSteps.steps, RunSteps.names).where(RunSteps.run_id == run_id)
        row = self._reading(lambda session: session.execute(query).first())
        if row is None:
            return None
        try:
            return int(row[0]), len(json.loads(row[1]))
        except (TypeError, ValueError):
            raise HistoryError(f"run {run_id}: its step columns are not a JSON list") from None

    def steps_of(self, run_ids: Iterable[str]) -> dict[str, Any]:
        """run id -> StepTable for those of `run_ids` that have rows (one query per 500 ids)."""
        from engine.telemetry import TelemetryError

        ids = list(dict.fromkeys(run_ids))

        def work(session: Session) -> list[RunSteps]:
            found: list[RunSteps] = []
            for i in range(0, len(ids), 500):
                found.extend(session.scalars(select(RunSteps).where(RunSteps.run_id.in_(ids[i : i + 500]))).all())
            return found

        try:
            return {row.run_id: decode_steps(row) for row in self._reading(work)}
        except TelemetryError as e:
            raise HistoryError(str(e)) from None

    def run_frames(self, run_id: str) -> Any:
        """The run's kept frames (frames.RunFrames: file and step index of each frame, per kind); falsy when it
        kept none. The steps come from the run's stats (no file is opened); `RunFrames.load(kind)` reads one."""
        from tnr_tui.services.history.frames import FRAME_KINDS, RunFrames

        run = self.get_run(run_id)
        if run is None:
            raise HistoryError(f"no run with id {run_id}")
        kept = (run.stats or {}).get("frames") or {}
        paths, steps = {}, {}
        for kind in FRAME_KINDS:
            out = run.output(kind)
            if out is not None:
                paths[kind] = self.resolve(out.path)
                steps[kind] = [int(s) for s in kept.get(kind, [])]
        return RunFrames(run_id, paths, steps)

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

        In chunks of `IMPORT_CHUNK` records: one query for the ids already present, one for the search keys,
        one multi-row insert of the runs and one of their outputs (it flushed once per record: 5 000 runs
        held the write lock for 5.5-15 s).
        """
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError, InterfaceError

        replayable = isinstance(records, Sequence)  # a generator can be consumed once: no retry after it began

        def work(session: Session) -> tuple[int, int]:
            added = skipped = 0
            current = None
            lock_keys(session)  # PostgreSQL: other writers of runs wait; their rows are committed or not yet begun
            seen: set[str] = set()
            try:
                for chunk in _chunks(records, IMPORT_CHUNK):
                    current = chunk[0].get("id")
                    ids = [rec["id"] for rec in chunk]
                    present = set(session.scalars(select(Run.id).where(Run.id.in_(ids))).all())
                    fresh = []
                    for rec in chunk:
                        if rec["id"] in present or rec["id"] in seen:
                            skipped += 1
                            continue
                        seen.add(rec["id"])
                        fresh.append(rec)
                    if not fresh:
                        continue
                    keys = allocate_keys(session, [rec["id"] for rec in fresh])
                    rows, outputs, step_rows = [], [], []
                    for rec in fresh:
                        current = rec["id"]
                        rows.append(_record_row(rec, keys[rec["id"]]))
                        if rec.get("telemetry") is not None:  # checked by transfer.py; a bad one is a ValueError here
                            from engine.telemetry import StepTable

                            step_rows.append(step_values(rec["id"], StepTable.from_dict(rec["telemetry"])))
                        for out in rec.get("outputs") or ():
                            outputs.append(
                                {
                                    "run_id": rec["id"],
                                    "kind": out["kind"],
                                    "path": out["path"],
                                    "sha256": out["sha256"],
                                    "size": out["size"],
                                }
                            )
                    current = fresh[0]["id"]
                    session.execute(insert(Run), rows)
                    if outputs and self.files_in_database:
                        made = session.scalars(
                            insert(Output).returning(Output.id, sort_by_parameter_order=True), outputs
                        ).all()
                        blobs = [
                            {"output_id": oid, "data": self._stored_bytes(out)}
                            for oid, out in zip(made, outputs, strict=True)
                        ]
                        session.execute(insert(OutputBlob), blobs)
                    elif outputs:
                        session.execute(insert(Output), outputs)
                    if step_rows:
                        session.execute(insert(RunSteps), step_rows)
                    added += len(fresh)
            except (
                OverflowError,
                ValueError,
                TypeError,
                KeyError,
                AttributeError,
                InterfaceError,
                IntegrityError,
            ) as e:
                # Rolled back by the transaction's `with`. A multi-row insert fails as a whole: the run named is
                # the first of its chunk.
                detail = str(getattr(e, "orig", None) or e).splitlines()
                reason = detail[0] if detail else type(e).__name__
                raise HistoryError(
                    f"cannot store the import (near run {current}): {reason}; nothing was imported"
                ) from None
            return added, skipped

        return self._writing(work, replayable=replayable)

    def _stored_bytes(self, out: dict[str, Any]) -> bytes:
        """An imported output's bytes, for a history that keeps them in the database (checked as recorded)."""
        path = self._path_of(out["path"])
        try:
            data = path.read_bytes()
        except OSError as e:
            raise HistoryError(f"cannot read the output {path} to store it: {e.strerror or e}") from None
        if hashlib.sha256(data).hexdigest() != out["sha256"]:
            raise HistoryError(f"the output {path} is not the file its record describes; nothing was imported")
        return data


IMPORT_CHUNK = 500


def _chunks(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _record_row(rec: dict[str, Any], key: int) -> dict[str, Any]:
    """The runs row of an imported record (every column, so one multi-row insert takes them all)."""
    from tnr_tui.services.history.models import parse_iso

    request = rec["request"]
    status = rec.get("status", "done")
    if status not in RUN_STATUSES:
        raise HistoryError(f"run {rec['id']}: unknown status {status!r}")
    return {
        "id": rec["id"],
        "created_at": parse_iso(rec.get("created_at")) or utcnow(),
        "started_at": parse_iso(rec.get("started_at")),
        "finished_at": parse_iso(rec.get("finished_at")),
        "status": status,
        "request_json": json.dumps(request, sort_keys=True),
        "model_path": rec.get("model_path"),
        "model_name": rec.get("model_name"),
        "model_identity": rec.get("model_identity"),
        "seconds": rec.get("seconds"),
        "seconds_per_step": rec.get("seconds_per_step"),
        "model_evaluations": rec.get("model_evaluations"),
        "metrics": rec.get("metrics"),
        "stats": rec.get("stats"),
        "device": rec.get("device"),
        "dtype": rec.get("dtype"),
        "versions": rec.get("versions"),
        "error": rec.get("error"),
        "favourite": bool(rec.get("favourite", False)),
        "notes": rec.get("notes") or "",
        "pid": rec.get("pid"),
        "host": rec.get("host"),
        "origin": rec.get("origin") or "import",
        "parent_id": rec.get("parent_id"),
        "search_key": key,
        **_index_columns(request),
    }


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
    # Quoted from the path's bytes: a path that is not UTF-8 (argv bytes Python holds as lone surrogates)
    # cannot be encoded as text, and SQLite decodes the %-escapes back to the same bytes.
    uri = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(db_path))) + "?mode=ro"
    return uri + "&immutable=1" if immutable else uri


# One Store per history file per process (issue 10): every `open_store` of a file this process has open
# returns the same Store, counted, so no code path can open a second engine (or touch the file) beside it.
# A read-only open shares a writable store of the same file; the key's last item is `readonly`.
_OPEN_STORES: dict[tuple[int, str, bool], Store] = {}
_OPEN_LOCK = threading.Lock()


def open_store(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    outputs: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] | None = _stderr_warning,
    recover: bool = True,
    readonly: bool = False,
) -> Store:
    """Open (creating or migrating as needed) the history of a data directory, or the shared one at `url`.

    `url` (else $TNR_LAB_HISTORY_URL): a PostgreSQL URL (`postgresql+psycopg://host/db`); the history is
    that database (postgres.py), the data directory holds only local things (and the files, see below).
    `outputs` (else $TNR_LAB_OUTPUTS): the directory of the history's files, a path every host sees for a
    shared history; default `<data dir>/outputs`, and a PostgreSQL history without one keeps each file's
    bytes in the database too (docs/history.md, "A shared history").

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
    url = resolve_history_url(url)
    outputs_dir = resolve_outputs(outputs)
    if url is not None:
        from tnr_tui.services.history.postgres import location_key

        path = location_key(url, outputs_dir, directory)
    else:
        path = os.path.realpath(directory / DB_NAME)
        if outputs_dir is not None:
            path += f"\0{os.path.abspath(outputs_dir)}"
    pid = os.getpid()
    with _OPEN_LOCK:
        for key in [(pid, path, False)] + ([(pid, path, True)] if readonly else []):
            shared = _OPEN_STORES.get(key)
            if shared is not None:
                shared._refs += 1
                return shared
        if url is not None:
            store = _open_postgres_store(
                directory, url, outputs_dir=outputs_dir, warn=warn, recover=recover, readonly=readonly
            )
        elif readonly:
            store = _open_readonly_store(directory, warn=warn, outputs_dir=outputs_dir)
        else:
            store = _open_new_store(directory, warn=warn, recover=recover, outputs_dir=outputs_dir)
        store._registry_key = (pid, path, readonly)
        _OPEN_STORES[store._registry_key] = store
        return store


def resolve_history_url(url: str | None) -> str | None:
    """The argument, else $TNR_LAB_HISTORY_URL (blank = unset); an explicit blank one is an error."""
    if url is not None:
        if not url.strip():
            raise HistoryError("--history-url is empty; give a PostgreSQL URL (or leave the option out for SQLite)")
        return url.strip()
    env = os.environ.get("TNR_LAB_HISTORY_URL", "")
    return env.strip() or None


def resolve_outputs(outputs: str | os.PathLike[str] | None) -> Path | None:
    """The argument, else $TNR_LAB_OUTPUTS (blank = unset), as an absolute path; None: the default."""
    if outputs is not None:
        if not os.fspath(outputs).strip():
            raise HistoryError("--outputs is empty; give a directory (or leave the option out for the default)")
        return Path(os.path.abspath(Path(outputs).expanduser()))
    env = os.environ.get("TNR_LAB_OUTPUTS", "")
    return Path(os.path.abspath(Path(env).expanduser())) if env.strip() else None


def _open_postgres_store(
    directory: Path,
    url: str,
    *,
    outputs_dir: Path | None,
    warn: Callable[[str], None] | None,
    recover: bool,
    readonly: bool,
) -> Store:
    """A shared history in a PostgreSQL database (postgres.py says what differs from the SQLite file)."""
    from tnr_tui.services.history import postgres

    url = postgres.normalize_url(url)
    location = postgres.display_url(url)
    lock_ms = int(BUSY_SLICE_S * 1000)
    engine = postgres.make_engine(url, readonly=readonly, lock_ms=lock_ms)
    try:
        postgres.prepare(engine, url, location, readonly=readonly, warn=warn, lock_ms=lock_ms)
    except BaseException:
        engine.dispose()
        raise
    # No directory every host sees: the files' bytes go into the database too, the data dir keeps copies.
    files_in_database = outputs_dir is None
    local_outputs = outputs_dir if outputs_dir is not None else directory / OUTPUTS
    if not readonly:
        try:
            local_outputs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            engine.dispose()
            raise HistoryError(f"cannot create the output directory {local_outputs}: {e.strerror or e}") from None
    backend = postgres.PostgresBackend()
    store = Store(
        directory,
        engine,
        journal_mode=backend.journal_mode,
        warnings=[],
        readonly=readonly,
        on_busy=warn,
        outputs_dir=local_outputs,
        location=location,
        files_in_database=files_in_database,
        backend=backend,
    )
    if recover and not readonly:
        try:
            store.mark_interrupted(wait_s=0)  # this host's runs only, as with SQLite
        except HistoryBusy:
            pass
        except BaseException:
            engine.dispose()
            raise
    return store


def _open_readonly_store(
    directory: Path, *, warn: Callable[[str], None] | None, outputs_dir: Path | None = None
) -> Store:
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
        outputs_dir=outputs_dir,
    )


def _open_new_store(
    directory: Path, *, warn: Callable[[str], None] | None, recover: bool, outputs_dir: Path | None = None
) -> Store:
    db_path = directory / DB_NAME
    outputs_path = outputs_dir if outputs_dir is not None else directory / OUTPUTS
    if os.path.lexists(directory) and not directory.is_dir():  # as a read-only open says it
        raise HistoryError(f"the data directory {directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        outputs_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = place_problem(_existing_parent(outputs_path if directory.is_dir() else directory))
        reason = problem or e.strerror or str(e)
        message = f"cannot create the data directory {outputs_path}: {reason}"
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
            f"the data directory {visible(directory)} is on a network filesystem ({visible(fstype)}); SQLite's "
            "WAL mode is unsafe "
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
    store = Store(directory, engine, journal_mode=mode, warnings=warnings, on_busy=warn, outputs_dir=outputs_dir)
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
        if version > 0 and migrations.needs_backup(version):
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
        register_functions(dbapi_connection)  # the search index's triggers call it (search.py)
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
