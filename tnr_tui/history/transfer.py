"""Export and import of runs: JSONL (one run per line, its request and outputs), CSV (flat columns),
zip (runs.jsonl + the files). Import is idempotent by run id and all-or-nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from tnr_tui.history.queries import RunFilter
from tnr_tui.history.store import HistoryError, Store, sha256_file

EXPORT_FORMATS = ("jsonl", "csv", "zip")
RECORD_FORMAT = 1  # the "tnr_lab_run" marker of an exported line
ZIP_RUNS = "runs.jsonl"

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
    for out in rec["outputs"]:
        out["path"] = str(store.resolve(out["path"]))
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


def export_runs(store: Store, fmt: str, out: Path, filters: RunFilter | None = None, *, force: bool = False) -> int:
    """Write the matching runs to `out` (temporary name, then rename); returns how many."""
    if fmt not in EXPORT_FORMATS:
        raise HistoryError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    tmp = _atomic_target(out, force)
    count = 0
    try:
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
            count = _export_zip(store, tmp, filters)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _export_zip(store: Store, tmp: Path, filters: RunFilter | None) -> int:
    count = 0
    lines = io.StringIO()
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for run in store.iter_runs(filters):
            rec = _record(run, store)
            outputs = []
            for out in rec["outputs"]:
                source = store.resolve(out["path"])
                if not source.is_file():
                    continue  # a file deleted since: the run is exported without it
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
    try:
        GenerationRequest.from_dict(rec.get("request"))
    except RequestError as e:
        raise HistoryError(f"{where}: run {rec['id']} has an invalid request: {e}") from None
    for out in rec.get("outputs") or ():
        if not isinstance(out, dict) or not {"kind", "path", "sha256", "size"} <= set(out):
            raise HistoryError(f"{where}: run {rec['id']} has a malformed output entry")
    return rec


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
    with zipfile.ZipFile(path) as zf:
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
        written: list[Path] = []
        try:
            for rec in records:
                if rec["id"] in present:
                    continue
                for out in rec.get("outputs") or ():
                    target = store.outputs_dir / "imported" / rec["id"] / PurePosixPath(out["path"]).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.tmp")
                    with zf.open(out["path"]) as src, open(tmp, "wb") as dst:
                        for block in iter(lambda src=src: src.read(1 << 20), b""):
                            dst.write(block)
                    os.replace(tmp, target)
                    written.append(target)
                    if sha256_file(target) != out["sha256"]:
                        raise HistoryError(f"{path}: {out['path']} does not match its recorded sha256")
                    out["path"] = store.stored_path(target)
            report = _insert(store, records, files=len(written))
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
    return report


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
