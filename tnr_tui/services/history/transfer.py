"""Export and import of runs: JSONL (one run per line, its request and outputs), CSV (flat columns),
zip (runs.jsonl + the files). Import is idempotent by run id and all-or-nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from tnr_tui.services.history.frames import FRAME_SUFFIX
from tnr_tui.services.history.models import LIVE_STATUSES, OUTPUT_KINDS, RUN_STATUSES, parse_iso, utcnow
from tnr_tui.services.history.queries import RunFilter
from tnr_tui.services.history.store import HistoryError, Store, _stderr_warning, sha256_file

EXPORT_FORMATS = ("jsonl", "csv", "zip")
RECORD_FORMAT = 1  # the "tnr_lab_run" marker of an exported line
IMPORTED_LIVE = "it was still running when it was exported; imported as interrupted"
ZIP_RUNS = "runs.jsonl"
SQLITE_INT = (-(2**63), 2**63 - 1)  # what an INTEGER column holds
# Errors of reading a damaged zip (bad CRC, corrupt deflate stream, truncated member, unknown compression).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)

CSV_COLUMNS = (
    "id",
    "status",
    "created_at",
    "finished_at",
    "prompt",
    "negative_prompt",
    "model",
    "model_name",
    "model_identity",
    "solver",
    "guidance",
    "scale",
    "steps",
    "seed",
    "width",
    "height",
    "schedule",
    "seconds",
    "seconds_per_step",
    "model_evaluations",
    "device",
    "dtype",
    "favourite",
    "notes",
    "sweep",
    "error",
    "image",
)


@dataclass(frozen=True)
class ImportReport:
    added: int
    skipped: int  # already present (same id)
    files: int  # files copied into the history's outputs/
    missing: int = 0  # files a JSONL record names that were absent or not the recorded bytes (left out)


MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class ImportLimits:
    """What one import may read and write; past a limit it is refused before anything is written.

    `max_bytes` counts the run records (a zip's runs.jsonl uncompressed) plus every file the import copies
    into outputs/; `max_runs` bounds the records (pass 1 keeps a few hundred bytes per run); `max_line`
    bounds one record, so a file without line breaks is never read whole.
    """

    max_bytes: int = 8 * GiB
    max_runs: int = 200_000
    max_line: int = 16 * MiB
    free_reserve: int = 64 * MiB  # left free on the data dir's disk after the files (the database grows too)


def size_text(n: int) -> str:
    """A byte count as people write it: 8 GiB, 16 MiB, 1.5 KiB, 12 bytes."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _record(run: Any, store: Store, steps: Any = None) -> dict[str, Any]:
    rec = run.to_dict()
    rec["tnr_lab_run"] = RECORD_FORMAT
    if steps is not None:  # the run's per-step telemetry rows (StepTable.to_dict: columns and rows)
        rec["telemetry"] = steps.to_dict()
    # Absolute paths: a JSONL line must still find its files when imported into another data directory.
    # (abspath: a relative --data-dir must not give relative paths.)
    for out in rec["outputs"]:
        out["path"] = os.path.abspath(store.resolve(out["path"]))
    return rec


def _runs_with_steps(store: Store, filters: RunFilter | None, page: int = 500) -> Iterator[tuple[Any, Any]]:
    """(run, its StepTable or None) for every matching run, the rows read one query per `page` runs."""
    batch: list[Any] = []
    for run in store.iter_runs(filters):
        batch.append(run)
        if len(batch) == page:
            steps = store.steps_of(r.id for r in batch)
            yield from ((r, steps.get(r.id)) for r in batch)
            batch = []
    if batch:
        steps = store.steps_of(r.id for r in batch)
        yield from ((r, steps.get(r.id)) for r in batch)


def _atomic_target(out: Path, force: bool) -> Path:
    if out.exists() and out.is_dir():
        raise HistoryError(f"{out} is a directory")
    if out.exists() and not out.is_file():
        # The rename would replace the device or pipe itself (/dev/stdout, /dev/full), even with --force.
        raise HistoryError(f"{out} is not a regular file (a device, pipe or socket); export writes a file")
    if out.exists() and not force:
        raise HistoryError(f"{out} exists; pass --force to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HistoryError(f"cannot create {out.parent}: {e.strerror or e}") from None
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def export_runs(
    store: Store,
    fmt: str,
    out: Path,
    filters: RunFilter | None = None,
    *,
    force: bool = False,
    warn: Callable[[str], None] | None = _stderr_warning,
) -> int:
    """Write the matching runs to `out` (temporary name, then rename); returns how many.

    A zip leaves out each file that is missing or no longer matches its recorded sha256 (the run itself is
    exported, without that file), so that the zip can always be imported; `warn` gets one line per file.
    HistoryError for an output path that cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise HistoryError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    tmp = _atomic_target(out, force)
    try:
        return _export_to(store, fmt, out, tmp, filters, warn)
    except OSError as e:
        reason = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(tmp) else ""
        raise HistoryError(f"cannot export to {out}: {reason}{where}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only place refuses even a missing file's unlink (EROFS): the export's own error stands
            pass


def _export_to(
    store: Store, fmt: str, out: Path, tmp: Path, filters: RunFilter | None, warn: Callable[[str], None] | None
) -> int:
    count = 0
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for run, steps in _runs_with_steps(store, filters):
                f.write(json.dumps(_record(run, store, steps), sort_keys=True) + "\n")
                count += 1
    elif fmt == "csv":
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for run in store.iter_runs(filters):
                rec = run.to_dict()
                image = run.output("image")
                rec["image"] = str(store.resolve(image.path)) if image else ""
                writer.writerow(["" if rec.get(c) is None else rec[c] for c in CSV_COLUMNS])
                count += 1
    else:
        count = _export_zip(store, tmp, filters, warn)
    os.replace(tmp, out)
    return count


def _export_zip(store: Store, tmp: Path, filters: RunFilter | None, warn: Callable[[str], None] | None) -> int:
    count = 0
    lines = io.StringIO()
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for run, steps in _runs_with_steps(store, filters):
            rec = _record(run, store, steps)
            outputs = []
            for out in rec["outputs"]:
                source = Path(out["path"])  # absolute already (_record); resolving again doubled a relative dir
                # A file deleted or changed since the run: the run is exported without it (import checks
                # every file against its sha256 and would refuse the whole zip).
                problem = None
                if not source.is_file():
                    problem = "is missing"
                else:
                    try:
                        if sha256_file(source) != out["sha256"]:
                            problem = "changed since the run recorded it (sha256 differs)"
                    except OSError as e:
                        problem = f"cannot be read ({e.strerror or e})"
                if problem is not None:
                    if warn is not None:
                        warn(f"run {run.id}: its {out['kind']} file {source} {problem}; exported without it")
                    continue
                arcname = f"files/{run.id}/{out['kind']}{source.suffix}"
                # PNGs are compressed already; store them as they are.
                zf.write(source, arcname, compress_type=zipfile.ZIP_STORED)
                outputs.append({**out, "path": arcname})
            rec["outputs"] = outputs
            lines.write(json.dumps(rec, sort_keys=True) + "\n")
            count += 1
        zf.writestr(ZIP_RUNS, lines.getvalue())
    return count


# ---- import ---------------------------------------------------------------------------------------


def _validate_record(rec: Any, where: str) -> dict[str, Any]:
    from engine.request import GenerationRequest, RequestError  # torch-free

    if not isinstance(rec, dict) or rec.get("tnr_lab_run") != RECORD_FORMAT:
        raise HistoryError(f'{where}: not a tnr-lab run record (no "tnr_lab_run": {RECORD_FORMAT})')
    from tnr_tui.services.history.ids import is_run_id

    if not isinstance(rec.get("id"), str) or not is_run_id(rec["id"]):
        raise HistoryError(f"{where}: run id {rec.get('id')!r} is not a tnr-lab run id")
    run = f"{where}: run {rec['id']}"
    try:
        GenerationRequest.from_dict(rec.get("request"))
    except (RequestError, TypeError) as e:
        raise HistoryError(f"{run} has an invalid request: {e}") from None
    # Every other field as the store will hold it: a bad value is a message naming the line here, not an
    # OverflowError / ValueError in the middle of the insert.
    status = rec.get("status", "done")
    if status not in RUN_STATUSES:
        raise HistoryError(f"{run} has an unknown status {status!r}; expected one of: {', '.join(RUN_STATUSES)}")
    if rec.get("favourite") is not None and not isinstance(rec["favourite"], bool):  # bool("no") would star it
        raise HistoryError(f"{run}: favourite must be true or false, got {rec['favourite']!r}")
    for key in ("created_at", "started_at", "finished_at"):
        value = rec.get(key)
        try:
            if value is not None and not isinstance(value, str):
                raise TypeError
            parse_iso(value)
        except (TypeError, ValueError, OverflowError):
            raise HistoryError(f"{run}: {key} {value!r} is not an ISO time (like 2025-01-31T12:00:00.000Z)") from None
    for key in ("model_evaluations", "pid"):
        _check_int(rec.get(key), f"{run}: {key}", optional=True)
    for key in ("seconds", "seconds_per_step"):
        value = rec.get(key)
        if value is not None and not _finite_number(value):
            raise HistoryError(f"{run}: {key} must be a finite number, got {value!r}")
    for key in ("model_path", "model_name", "model_identity", "device", "dtype", "error", "notes", "host"):
        _check_text(rec.get(key), f"{run}: {key}")
    for key in ("origin", "parent_id"):
        _check_text(rec.get(key), f"{run}: {key}")
    for key in ("metrics", "stats", "versions"):
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            raise HistoryError(f"{run}: {key} must be a JSON object, got {type(rec[key]).__name__}")
    metrics = rec.get("metrics") or {}
    bad = [k for k, v in metrics.items() if not _finite_number(v)]
    if bad:
        raise HistoryError(f"{run}: metric {bad[0]!r} must be a finite number, got {metrics[bad[0]]!r}")
    outputs = rec.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise HistoryError(f"{run}: outputs must be a list")
    for out in outputs or ():
        if not isinstance(out, dict) or not {"kind", "path", "sha256", "size"} <= set(out):
            raise HistoryError(f"{run} has a malformed output entry")
        if out["kind"] not in OUTPUT_KINDS:
            raise HistoryError(f"{run} has an output of unknown kind {out['kind']!r}")
        if not isinstance(out["path"], str) or not out["path"]:
            raise HistoryError(f"{run} has an output without a path")
        if not isinstance(out["sha256"], str) or len(out["sha256"]) != 64:
            raise HistoryError(f"{run}: output {out['path']!r} has a malformed sha256")
        _check_int(out["size"], f"{run}: output {out['path']!r} size", minimum=0)
    from engine.telemetry import TelemetryError
    from tnr_tui.services.history.steps import table_from_record

    try:
        table_from_record(rec.get("telemetry"), run)
    except TelemetryError as e:
        raise HistoryError(f"{e}; nothing was imported") from None
    return rec


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int past a float's range
        return False


def _check_int(value: Any, what: str, *, optional: bool = False, minimum: int = SQLITE_INT[0]) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= SQLITE_INT[1]:
        raise HistoryError(f"{what} must be a whole number in {minimum}..{SQLITE_INT[1]}, got {value!r}")


def _check_text(value: Any, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise HistoryError(f"{what} must be text, got {type(value).__name__}")


def _safe_member(name: str) -> bool:
    """A zip member name that stays inside the extraction directory."""
    if not name or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return False
    return ".." not in PurePosixPath(name.replace("\\", "/")).parts


# ---- reading an export, line by line -----------------------------------------------------------------


def _lines(stream: BinaryIO, source: str, limits: ImportLimits) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line, reading at most `max_line` + 1 bytes at a time and `max_bytes` in
    all: a file without line breaks is refused at its first `max_line` bytes, never read whole."""
    number = total = 0
    while True:
        raw = stream.readline(limits.max_line + 1)
        if not raw:
            return
        number += 1
        total += len(raw)
        if len(raw) > limits.max_line:
            raise HistoryError(
                f"{source} line {number} is longer than {size_text(limits.max_line)}, more than any run record; "
                "refused, nothing was imported"
            )
        if total > limits.max_bytes:
            raise HistoryError(_over_bytes(source, limits))
        yield number, raw


def _decoded(raw: bytes, number: int, source: str) -> Any:
    """The JSON of one line (unchecked), None for a blank line."""
    try:
        # utf-8-sig on the first line: an editor's byte-order mark is not part of the JSON.
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        raise HistoryError(f"{source}: neither a zip nor a UTF-8 JSONL file (line {number} is not UTF-8)") from None
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise HistoryError(f"{source} line {number}: not JSON ({e.msg})") from None
    except RecursionError:
        raise HistoryError(f"{source} line {number}: JSON nested too deeply to be a run record") from None


def _line_digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def _over_bytes(source: str, limits: ImportLimits, needed: int | None = None) -> str:
    amount = f" ({size_text(needed)})" if needed is not None else ""
    return (
        f"{source}: refused, the import is larger{amount} than the limit of {size_text(limits.max_bytes)} "
        "(run records plus the files it copies; --max-size raises it); nothing was imported"
    )


def _check_room(store: Store, source: str, limits: ImportLimits, records: int, files: int) -> None:
    """Refuse, before any file is written, an import past `max_bytes` or larger than the free disk space."""
    if records + files > limits.max_bytes:
        raise HistoryError(_over_bytes(source, limits, records + files))
    try:
        free = shutil.disk_usage(store.outputs_dir).free
    except OSError:
        return  # unknown: the copy itself will say "no space left" if it comes to that
    if files and files + limits.free_reserve > free:
        raise HistoryError(
            f"{source}: refused, its files need {size_text(files)} in {store.outputs_dir} and {size_text(free)} "
            f"is free (an import leaves {size_text(limits.free_reserve)} for the history); nothing was imported"
        )


@dataclass
class _Wanted:
    """A file of a run the import brings into the history: where it comes from and what it must be."""

    index: int  # its place in the record's outputs
    kind: str
    source: str  # the zip member, or the path as the JSONL record gives it
    sha256: str
    size: int


@dataclass
class _Plan:
    """What pass 1 learnt of one new run: its line, its output day and the files it wants."""

    line: int
    day: str
    wanted: list[_Wanted]
    placed: dict[int, str] = field(default_factory=dict)  # output index -> stored path
    dropped: list[str] = field(default_factory=list)  # one line per file left out


@dataclass
class _Scan:
    """Pass 1's result: the plan of each run and a digest of each line (pass 2 must read the same lines)."""

    plans: dict[str, _Plan]
    line_digests: bytearray  # 16 bytes a line
    bytes_read: int


def _scan(stream: BinaryIO, source: str, limits: ImportLimits) -> _Scan:
    """Pass 1: every record checked, no id twice, at most `max_runs`; the files each run wants."""
    plans: dict[str, _Plan] = {}
    digests = bytearray()
    read = 0
    for number, raw in _lines(stream, source, limits):
        digests += _line_digest(raw)
        read += len(raw)
        rec = _decoded(raw, number, source)
        if rec is None:
            continue
        if len(plans) >= limits.max_runs:
            raise HistoryError(
                f"{source}: refused, it holds more than {limits.max_runs} runs (the import limit; "
                "--max-runs raises it); nothing was imported"
            )
        rec = _validate_record(rec, f"{source} line {number}")
        try:
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:  # "\ud800" is valid JSON and no text SQLite can store
            bad = e.object[e.start : e.end].encode("unicode_escape").decode()
            raise HistoryError(
                f"{source} line {number}: run {rec['id']} holds text that is not Unicode (a lone surrogate {bad}); "
                "nothing was imported"
            ) from None
        first = plans.get(rec["id"])
        if first is not None:
            raise HistoryError(
                f"{source} line {number}: run {rec['id']} appears twice (first on line {first.line}); "
                "nothing was imported"
            )
        created = parse_iso(rec.get("created_at")) or utcnow()
        wanted = [
            _Wanted(i, out["kind"], out["path"], out["sha256"], out["size"])
            for i, out in enumerate(rec.get("outputs") or ())
        ]
        plans[rec["id"]] = _Plan(number, created.strftime("%Y-%m-%d"), wanted)
    return _Scan(plans, digests, read)


def _rewritten(
    stream: BinaryIO, source: str, scan: _Scan, present: set[str], limits: ImportLimits
) -> Iterator[dict[str, Any]]:
    """Pass 2, inside the insert's transaction: each new record pointing at the history's own copies.

    Each line must be the line pass 1 checked (same digest), so records are not checked again; a file
    changed in between is refused and the transaction rolled back, never half imported.
    """
    changed = f"{source} changed while it was being imported; nothing was imported"
    count = 0
    for number, raw in _lines(stream, source, limits):
        if scan.line_digests[16 * count : 16 * count + 16] != _line_digest(raw):
            raise HistoryError(changed)
        count += 1
        rec = _decoded(raw, number, source)
        if rec is None:
            continue
        if rec["id"] in present:
            yield rec  # the store skips it
            continue
        plan = scan.plans[rec["id"]]
        if rec.get("status") in LIVE_STATUSES:
            # Queued or running where it was exported: no process here will ever finish this copy, and crash
            # recovery only ends runs of this host's dead processes (an exported pid may be alive here, or
            # the host another), so it would show `running` for ever.
            rec["status"] = "interrupted"
            rec["error"] = rec.get("error") or IMPORTED_LIVE
        outputs = rec.get("outputs") or []
        rec["outputs"] = [{**out, "path": plan.placed[i]} for i, out in enumerate(outputs) if i in plan.placed]
        if plan.dropped:
            rec["notes"] = "; ".join([*filter(None, [rec.get("notes")]), *plan.dropped])
        yield rec
    if 16 * count != len(scan.line_digests):
        raise HistoryError(changed)


# ---- bringing files into the history -----------------------------------------------------------------

KIND_SUFFIX = {"image": ".png", "latent": ".safetensors", "preview": ".png", **FRAME_SUFFIX}
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,12}")


class FileMismatch(Exception):
    """A file is not the one its record describes (size or sha256); the message says how."""


class _Placer:
    """The files one import brings into `outputs/<day>/<run id>.<ext>`: each is copied under a temporary
    name, checked against its recorded size and sha256 while it is copied, then renamed; an existing file is
    never replaced. `rollback` removes every file and folder this import made."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.written: list[tuple[str, Path]] = []  # (run id, file)
        self.made_dirs: list[Path] = []
        self.tmp: Path | None = None
        self.bytes_copied = 0

    def _day_dir(self, day: str) -> Path:
        folder = self.store.outputs_dir / day
        for parent in reversed([folder, *folder.parents]):
            if not parent.exists():
                parent.mkdir()
                self.made_dirs.append(parent)
        return folder

    def place(self, src: BinaryIO, run_id: str, day: str, wanted: _Wanted) -> str:
        """Copy `src` in; the stored path. FileMismatch (nothing left behind) if it is not the file wanted;
        HistoryError when the history's folder cannot take it (read-only, disk full)."""
        suffix = PurePosixPath(wanted.source.replace("\\", "/")).suffix
        suffix = suffix.lower() if _SUFFIX.fullmatch(suffix) else KIND_SUFFIX[wanted.kind]
        if wanted.kind in FRAME_SUFFIX:  # `<run id>.frames.png`, never a second `<run id>.png` beside the image
            suffix = FRAME_SUFFIX[wanted.kind]
        try:
            folder = self._day_dir(day)
            self.tmp = folder / f".{run_id}{suffix}.{os.getpid()}.tmp"
            try:
                with open(self.tmp, "wb") as dst:
                    sha256, size = _copy_at_most(src, dst, wanted.size)
                if size != wanted.size:
                    more = "more than" if size > wanted.size else f"{size} bytes, not"
                    raise FileMismatch(f"holds {more} its recorded {wanted.size} bytes")
                if sha256 != wanted.sha256:
                    raise FileMismatch("does not match its recorded sha256")
                target = self._free_name(folder, run_id, suffix, wanted)
                if not target.exists():
                    os.replace(self.tmp, target)
                    self.written.append((run_id, target))
                # else: the same bytes are there already (an earlier import): that file is recorded
                return self.store.stored_path(target)
            finally:
                self.tmp.unlink(missing_ok=True)
                self.tmp = None
        except OSError as e:
            raise HistoryError(
                f"cannot write into {self.store.outputs_dir}: {e.strerror or e}; nothing was imported"
            ) from None

    @staticmethod
    def _free_name(folder: Path, run_id: str, suffix: str, wanted: _Wanted) -> Path:
        """`<run id><suffix>`, or `<run id>-N<suffix>` past names taken by other bytes."""
        for n in itertools.count():
            target = folder / (f"{run_id}{suffix}" if n == 0 else f"{run_id}-{n}{suffix}")
            if not target.exists():
                return target
            try:
                if target.stat().st_size == wanted.size and sha256_file(target) == wanted.sha256:
                    return target
            except OSError:
                pass  # unreadable: not ours to reuse; try the next name
        raise AssertionError("unreachable")

    def rollback(self) -> None:
        """Remove what this import made, except the files of runs the history holds after all (an
        interruption, SIGTERM say, right after the commit): a recorded run never loses its file."""
        ids = {run_id for run_id, _ in self.written}
        try:
            recorded = self.store.existing_ids(ids) if ids else set()
        except BaseException:  # cannot tell: an orphan file is better than a run without its file
            return
        for run_id, path in self.written:
            if run_id not in recorded:
                path.unlink(missing_ok=True)
        for folder in reversed(self.made_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: something else lives there now


def _copy_at_most(src: BinaryIO, dst: BinaryIO, size: int) -> tuple[str, int]:
    """Copy up to `size` + 1 bytes (one past is enough to know the source is too long): (sha256, bytes)."""
    digest = hashlib.sha256()
    copied = 0
    while copied <= size:
        try:
            block = src.read(min(1 << 20, size + 1 - copied))
        except OSError as e:  # the source's fault; a failed write below is the history's
            raise FileMismatch(f"cannot be read ({e.strerror or e})") from None
        if not block:
            break
        digest.update(block)
        dst.write(block)
        copied += len(block)
    return digest.hexdigest(), copied


# ---- import ------------------------------------------------------------------------------------------


def _starts_like_a_zip(path: Path) -> bool:
    """The file begins with a zip's local-file signature (an export file, never the history's database)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def import_runs(
    store: Store,
    path: Path,
    *,
    warn: Callable[[str], None] | None = _stderr_warning,
    limits: ImportLimits = ImportLimits(),
) -> ImportReport:
    """Import a JSONL or zip export (idempotent by run id, all or nothing).

    The history owns every file it records: each output file is copied into `outputs/<day>/<run id>.<ext>`
    and the copy is recorded, never the path the export names. A zip's files must all be there and match
    their records (else nothing is imported). A JSONL record's file (an absolute path, or one relative to the
    JSONL's folder) is copied when it exists and matches its recorded size and sha256; otherwise the run is
    imported without it, `warn` gets one line and the run's notes say which file was left out.

    Every record is checked before anything is written, the rows go in one transaction, and the files of a
    failed import are removed again. `limits` bound what it reads and writes (ImportLimits); each file is
    read up to its recorded size only.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except OSError as e:
        raise HistoryError(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise HistoryError(f"{path}: not a regular file")
    if zipfile.is_zipfile(path):
        return _import_zip(store, path, limits)
    if _starts_like_a_zip(path):  # a zip's first entry without its directory at the end: a copy cut short
        raise HistoryError(f"{path}: a zip that is damaged or cut short (no central directory); nothing was imported")
    if st.st_size > limits.max_bytes:
        raise HistoryError(_over_bytes(str(path), limits, st.st_size))
    return _import_jsonl(store, path, warn, limits)


def _import_jsonl(store: Store, path: Path, warn: Callable[[str], None] | None, limits: ImportLimits) -> ImportReport:
    source = str(path)
    with open(path, "rb") as stream:
        scan = _scan(stream, source, limits)
        plans = scan.plans
        present = store.existing_ids(plans)
        _check_room(store, source, limits, scan.bytes_read, _wanted_bytes(plans, present))
        placer = _Placer(store)
        base = path.parent
        try:
            missing = 0
            for run_id, plan in plans.items():
                if run_id in present:
                    continue
                for wanted in plan.wanted:
                    problem = _bring_file(placer, base, run_id, plan, wanted)
                    if problem is not None:
                        missing += 1
                        plan.dropped.append(f"imported without its {wanted.kind} file: {wanted.source} {problem}")
                        if warn is not None:
                            warn(f"run {run_id}: its {wanted.kind} file {wanted.source} {problem}; imported without it")
            stream.seek(0)
            added, skipped = store.insert_records(_rewritten(stream, source, scan, present, limits))
        except BaseException:
            placer.rollback()
            raise
    return ImportReport(added, skipped, _placed(plans), missing)


def _bring_file(placer: _Placer, base: Path, run_id: str, plan: _Plan, wanted: _Wanted) -> str | None:
    """Copy one file a JSONL record names into the history; None, or why it was left out."""
    source = Path(wanted.source)
    source = source if source.is_absolute() else base / source
    try:
        st = source.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size != wanted.size:
        return f"is {st.st_size} bytes, not its recorded {wanted.size}"
    try:
        src = open(source, "rb")
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    with src:
        try:
            plan.placed[wanted.index] = placer.place(src, run_id, plan.day, wanted)
        except FileMismatch as e:
            return str(e)
    return None


def _wanted_bytes(plans: dict[str, _Plan], present: set[str]) -> int:
    return sum(w.size for run_id, plan in plans.items() if run_id not in present for w in plan.wanted)


def _import_zip(store: Store, path: Path, limits: ImportLimits) -> ImportReport:
    # Before zipfile reads the central directory (hundreds of bytes of memory per member).
    members = _zip_member_count(path)
    if members is not None and members > limits.max_runs * (len(OUTPUT_KINDS) + 1) + 16:
        raise HistoryError(
            f"{path}: refused, the zip holds {members} members, more than an export of {limits.max_runs} runs "
            "(the import limit; --max-runs raises it); nothing was imported"
        )
    try:
        return _import_zip_members(store, path, limits)
    except ZIP_ERRORS as e:  # the files extracted so far are removed already
        reason = str(e) or type(e).__name__
        raise HistoryError(f"{path}: the zip is damaged ({reason}); nothing was imported") from None


def _import_zip_members(store: Store, path: Path, limits: ImportLimits) -> ImportReport:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        encrypted = [name for name, i in infos.items() if i.flag_bits & 0x1]
        if encrypted:
            raise HistoryError(f"{path}: refused, the zip holds an encrypted member: {encrypted[0]!r}")
        unsafe = [n for n in infos if not _safe_member(n)]
        if unsafe:
            raise HistoryError(f"{path}: refused, the zip holds a path outside its folder: {unsafe[0]!r}")
        if ZIP_RUNS not in infos:
            raise HistoryError(f"{path}: not a tnr-lab export (no {ZIP_RUNS} inside)")
        source = f"{path}:{ZIP_RUNS}"
        if infos[ZIP_RUNS].file_size > limits.max_bytes:
            raise HistoryError(_over_bytes(source, limits, infos[ZIP_RUNS].file_size))
        with zf.open(ZIP_RUNS) as stream:
            scan = _scan(stream, source, limits)
        plans = scan.plans
        present = store.existing_ids(plans)
        for run_id, plan in plans.items():
            for wanted in plan.wanted:
                info = infos.get(wanted.source)
                if info is None:
                    raise HistoryError(f"{path}: run {run_id} names a file the zip lacks: {wanted.source!r}")
                # A member larger than its record (a zip bomb, or the wrong file) is refused unread.
                if info.file_size != wanted.size and run_id not in present:
                    raise HistoryError(
                        f"{path}: {wanted.source} is {info.file_size} bytes uncompressed, its record says "
                        f"{wanted.size}; nothing was imported"
                    )
        _check_room(store, source, limits, scan.bytes_read, _wanted_bytes(plans, present))
        placer = _Placer(store)
        try:
            for run_id, plan in plans.items():
                if run_id in present:
                    continue
                for wanted in plan.wanted:
                    try:
                        with zf.open(wanted.source) as src:
                            plan.placed[wanted.index] = placer.place(src, run_id, plan.day, wanted)
                    except FileMismatch as e:
                        raise HistoryError(f"{path}: {wanted.source} {e}; nothing was imported") from None
            with zf.open(ZIP_RUNS) as stream:
                added, skipped = store.insert_records(_rewritten(stream, source, scan, present, limits))
        except BaseException:
            placer.rollback()
            raise
    return ImportReport(added, skipped, _placed(plans))


def _placed(plans: dict[str, _Plan]) -> int:
    return sum(len(plan.placed) for plan in plans.values())


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


def _zip_member_count(path: Path) -> int | None:
    """How many members the zip's end record declares (zip64 too); None when it cannot be read (zipfile
    then says what is wrong)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            tail_start = max(0, size - (22 + 0xFFFF + 20))  # end record + the longest comment + zip64 locator
            f.seek(tail_start)
            tail = f.read()
            at = tail.rfind(_EOCD)
            if at < 0 or len(tail) < at + 22:
                return None
            count = int.from_bytes(tail[at + 10 : at + 12], "little")
            if count != 0xFFFF or at < 20 or tail[at - 20 : at - 16] != _ZIP64_LOCATOR:
                return count
            end64 = int.from_bytes(tail[at - 12 : at - 4], "little")
            f.seek(end64)
            record = f.read(56)
            if len(record) < 40 or record[:4] != b"PK\x06\x06":
                return None
            return int.from_bytes(record[32:40], "little")
    except OSError:
        return None


# ---- import-png --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PngImport:
    run_id: str
    source: str  # whose metadata: "tnr-lab" or "a1111"
    notes: list[str]  # what could not be carried over exactly
    new: bool  # False: a run already records this image


def import_png(store: Store, path: Path) -> PngImport:
    """A `done` run (origin `import-png`) from a PNG's metadata, so that `rerun` can compare with it.

    The history records its own copy, `outputs/<today>/<run id>.png`, never the user's file (a delete of
    the run must not remove it). A PNG whose bytes a run records already gives that run. PngMetadataError,
    RequestError (a value no run can have) or HistoryError, with a message for the user.
    """
    from engine.request import GenerationRequest  # torch-free
    from tnr_tui.services.history.ids import new_run_id
    from tnr_tui.services.history.models import iso
    from tnr_tui.services.history.png import PngMetadataError, request_from_png

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PngMetadataError(f"{path}: no such file") from None
    except OSError as e:
        raise PngMetadataError(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise PngMetadataError(f"{path}: not a regular file")
    request_dict, source, notes = request_from_png(path)
    request = GenerationRequest.from_dict(request_dict)
    try:
        json.dumps(request.to_dict(), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud800" in the tnr-lab chunk's JSON: no text SQLite can store
        bad = e.object[e.start : e.end].encode("unicode_escape").decode()
        raise PngMetadataError(f"{path}: its request holds text that is not Unicode (a lone surrogate {bad})") from None
    run_id = new_run_id()
    placer = _Placer(store)
    now = utcnow()
    try:
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            sha256 = _sha256_stream(src)
            existing = store.run_with_output(sha256)
            if existing is not None:
                return PngImport(existing, source, notes, False)
            src.seek(0)
            wanted = _Wanted(0, "image", ".png", sha256, size)
            try:
                stored = placer.place(src, run_id, now.strftime("%Y-%m-%d"), wanted)
            except FileMismatch:
                raise HistoryError(f"{path} changed while it was being imported; nothing was imported") from None
        record = {
            "id": run_id,
            "request": request.to_dict(),
            "status": "done",
            "created_at": iso(now),
            "started_at": iso(now),
            "finished_at": iso(now),
            "origin": "import-png",
            "pid": os.getpid(),
            "host": store.host,
            "notes": f"imported from {source} PNG: " + "; ".join(notes) if notes else "",
            "outputs": [{"kind": "image", "path": stored, "sha256": sha256, "size": size}],
        }
        store.insert_records([record])
    except BaseException:
        placer.rollback()
        raise
    return PngImport(run_id, source, notes, True)


def _sha256_stream(src: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: src.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
