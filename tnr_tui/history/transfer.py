"""Export and import of runs: JSONL (one run per line, its request and outputs), CSV (flat columns),
zip (runs.jsonl + the files). Import is idempotent by run id and all-or-nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from tnr_tui.history.models import OUTPUT_KINDS, RUN_STATUSES, parse_iso
from tnr_tui.history.queries import RunFilter
from tnr_tui.history.store import HistoryError, Store, _stderr_warning, sha256_file

EXPORT_FORMATS = ("jsonl", "csv", "zip")
RECORD_FORMAT = 1  # the "tnr_lab_run" marker of an exported line
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
    files: int  # files extracted from a zip


def _record(run: Any, store: Store) -> dict[str, Any]:
    rec = run.to_dict()
    rec["tnr_lab_run"] = RECORD_FORMAT
    # Absolute paths: a JSONL line must still find its files when imported into another data directory.
    # (abspath: a relative --data-dir must not give relative paths.)
    for out in rec["outputs"]:
        out["path"] = os.path.abspath(store.resolve(out["path"]))
    return rec


def _atomic_target(out: Path, force: bool) -> Path:
    if out.exists() and not force:
        raise HistoryError(f"{out} exists; pass --force to overwrite it")
    if out.exists() and out.is_dir():
        raise HistoryError(f"{out} is a directory")
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
        tmp.unlink(missing_ok=True)


def _export_to(
    store: Store, fmt: str, out: Path, tmp: Path, filters: RunFilter | None, warn: Callable[[str], None] | None
) -> int:
    count = 0
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for run in store.iter_runs(filters):
                f.write(json.dumps(_record(run, store), sort_keys=True) + "\n")
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
        for run in store.iter_runs(filters):
            rec = _record(run, store)
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
    from tnr_tui.history.ids import is_run_id

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


def _parse_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise HistoryError(f"{source} line {number}: not JSON ({e.msg})") from None
        records.append(_validate_record(rec, f"{source} line {number}"))
    return records


def _safe_member(name: str) -> bool:
    """A zip member name that stays inside the extraction directory."""
    if not name or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return False
    return ".." not in PurePosixPath(name.replace("\\", "/")).parts


def import_runs(store: Store, path: Path) -> ImportReport:
    """Import a JSONL or zip export. Everything is checked before anything is written; the rows go in one
    transaction, and files extracted for a failed import are removed again."""
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return _import_zip(store, path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HistoryError(f"{path}: neither a zip nor a UTF-8 JSONL file") from None
    records = _parse_jsonl(text, str(path))
    return _insert(store, records, files=0)


def _insert(store: Store, records: list[dict[str, Any]], files: int) -> ImportReport:
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise HistoryError("the import holds the same run id twice")
    added, skipped = store.insert_records(records)
    return ImportReport(added, skipped, files)


def _import_zip(store: Store, path: Path) -> ImportReport:
    try:
        return _import_zip_members(store, path)
    except ZIP_ERRORS as e:  # the files extracted so far are removed already
        reason = str(e) or type(e).__name__
        raise HistoryError(f"{path}: the zip is damaged ({reason}); nothing was imported") from None


def _import_zip_members(store: Store, path: Path) -> ImportReport:
    with zipfile.ZipFile(path) as zf:
        encrypted = [i.filename for i in zf.infolist() if i.flag_bits & 0x1]
        if encrypted:
            raise HistoryError(f"{path}: refused, the zip holds an encrypted member: {encrypted[0]!r}")
        names = zf.namelist()
        unsafe = [n for n in names if not _safe_member(n)]
        if unsafe:
            raise HistoryError(f"{path}: refused, the zip holds a path outside its folder: {unsafe[0]!r}")
        if ZIP_RUNS not in names:
            raise HistoryError(f"{path}: not a tnr-lab export (no {ZIP_RUNS} inside)")
        records = _parse_jsonl(zf.read(ZIP_RUNS).decode("utf-8", "replace"), f"{path}:{ZIP_RUNS}")
        present = store.existing_ids(r["id"] for r in records)
        for rec in records:
            for out in rec.get("outputs") or ():
                if out["path"] not in names:
                    raise HistoryError(f"{path}: run {rec['id']} names a file the zip lacks: {out['path']!r}")
        written: list[Path] = []  # files this import created (removed again if it fails)
        made_dirs: list[Path] = []
        tmp: Path | None = None
        extracted = 0
        try:
            for rec in records:
                if rec["id"] in present:
                    continue
                for out in rec.get("outputs") or ():
                    target = store.outputs_dir / "imported" / rec["id"] / PurePosixPath(out["path"]).name
                    for parent in reversed([target.parent, *target.parent.parents]):
                        if not parent.exists():
                            parent.mkdir()
                            made_dirs.append(parent)
                    tmp = target.with_name(f".{target.name}.tmp")
                    with zf.open(out["path"]) as src, open(tmp, "wb") as dst:
                        for block in iter(lambda src=src: src.read(1 << 20), b""):
                            dst.write(block)
                    # Checked before it takes the real name: a bad file never replaces anything.
                    if sha256_file(tmp) != out["sha256"]:
                        raise HistoryError(f"{path}: {out['path']} does not match its recorded sha256")
                    existed = target.exists()
                    os.replace(tmp, target)
                    tmp = None
                    extracted += 1
                    if not existed:
                        written.append(target)
                    out["path"] = store.stored_path(target)
            report = _insert(store, records, files=extracted)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            for p in written:
                p.unlink(missing_ok=True)
            for d in reversed(made_dirs):
                try:
                    d.rmdir()
                except OSError:
                    pass
            raise
    return report


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
