"""`tnr-lab history ...`: list, show, steps, export, import, rerun, import-png.

Starts fast: only the store (SQLAlchemy) loads, never torch, except for `rerun`, which samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tnr_tui.cli import UserError
from tnr_tui.cli.common import open_history
from tnr_tui.services.text import visible

RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
MAX_LIMIT = 100_000  # runs per `list` page


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("history", help="browse, export, import and re-run past runs")
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="history location (as the global --data-dir)")
    sub = p.add_subparsers(dest="history_command", metavar="ACTION", required=True)

    def data_dir_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    q = sub.add_parser("list", help="list runs, newest first")
    _filter_flags(q)
    q.add_argument("--limit", default="50", help=f"how many runs, 1..{MAX_LIMIT} (default 50)")
    q.add_argument("--after", help="continue after this run id (the last id of the previous page)")
    q.add_argument("--json", action="store_true", help="a JSON array on stdout")
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_list, readonly=True)

    q = sub.add_parser("show", help="one run in full")
    q.add_argument("id", help="run id (or a unique prefix)")
    q.add_argument("--json", action="store_true")
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_show, readonly=True)

    q = sub.add_parser(
        "delete",
        help="delete runs and the history's own files of them (says what goes and asks first; --yes not to)",
    )
    q.add_argument("ids", nargs="+", metavar="ID", help="run ids (or unique prefixes)")
    q.add_argument("--yes", action="store_true", help="delete without asking (needed where stdin is not a terminal)")
    q.add_argument("--json", action="store_true", help='[{"id", "files"}] of what was deleted, on stdout')
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_delete)

    q = sub.add_parser("steps", help="one run's per-step telemetry rows (sigma, norms, x0 change, ...)")
    q.add_argument("id", help="run id (or a unique prefix)")
    form = q.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help='{"run_id", "format", "columns", "rows"} on stdout')
    form.add_argument("--csv", action="store_true", help="a header of the columns, then one line per step")
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_steps, readonly=True)

    q = sub.add_parser("export", help="write runs to JSONL, CSV or a zip with the images")
    q.add_argument("--format", required=True, choices=("jsonl", "csv", "zip"))
    q.add_argument("--out", required=True, help="the file to write")
    q.add_argument("--force", action="store_true", help="overwrite an existing file")
    _filter_flags(q)
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_export, readonly=True)

    q = sub.add_parser("import", help="import a JSONL or zip export (idempotent by run id)")
    q.add_argument("file")
    q.add_argument(
        "--max-size",
        default="8G",
        help="refuse an import larger than this: run records plus the files it copies (default 8G; K, M, G, T)",
    )
    q.add_argument("--max-runs", default="200000", help="refuse an import of more runs than this (default 200000)")
    q.add_argument("--json", action="store_true")
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_import)

    q = sub.add_parser("rerun", help="run a past request again and report drift against the stored image")
    q.add_argument("id", help="run id (or a unique prefix)")
    q.add_argument("--out", help="where the new PNG goes (default: the data directory)")
    q.add_argument(
        "--batched",
        action="store_true",
        help="a run recorded from a batch of N: sample it again in a batch of N (copies of itself), as it was "
        "sampled, instead of alone (a run alone differs in the last bits of the batched convolutions)",
    )
    q.add_argument("--json", action="store_true")
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_rerun)

    q = sub.add_parser("import-png", help="turn PNGs (tnr-lab or AUTOMATIC1111) into runs you can re-run")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("--json", action="store_true")
    data_dir_flag(q)
    q.set_defaults(func=run, action=cmd_import_png)


def _filter_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument("--search", help="text in the prompt or negative prompt")
    q.add_argument("--status", help=f"one of: {', '.join(RUN_STATUSES)}")
    q.add_argument("--guidance", help="guidance method")
    q.add_argument("--solver", help="solver")
    q.add_argument(
        "--schedule", help="sigma schedule (runs of requests before format 3 named karras: karras_diffusers)"
    )
    for option, what in (("--solver-param", "solver"), ("--guidance-param", "guidance method")):
        q.add_argument(
            option,
            dest=option[2:].replace("-", "_") + "s",
            action="append",
            metavar="NAME=VALUE",
            help=f"runs whose {what} sampled with this parameter value, parsed as the unit's parameter "
            "(eta=1 matches 1.0; a run that left it out has its unit's default); repeat for more",
        )
    q.add_argument("--favourite", action="store_true", default=None, help="favourites only")
    q.add_argument("--since", help="created at or after (UTC: YYYY-MM-DD or ISO time)")
    q.add_argument("--until", help="created before (UTC: YYYY-MM-DD or ISO time)")
    q.add_argument("--sweep", help="runs of this sweep tag")


def _parse_time(flag: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{flag} expects a date (YYYY-MM-DD) or an ISO time, got {text!r}") from None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _param_pairs(option: str, items: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"{option} expects NAME=VALUE, got {item!r}")
        pairs.append((name.strip(), value))
    return tuple(pairs)


def filters_of(args: argparse.Namespace) -> Any:
    from tnr_tui.services.history import FilterError, RunFilter

    solver_params = _param_pairs("--solver-param", args.solver_params)
    guidance_params = _param_pairs("--guidance-param", args.guidance_params)
    try:
        return RunFilter(
            text=args.search,
            guidance=args.guidance,
            solver=args.solver,
            status=args.status,
            favourite=args.favourite,
            since=_parse_time("--since", args.since),
            until=_parse_time("--until", args.until),
            sweep=args.sweep,
            schedule=args.schedule,
            solver_params=solver_params,
            guidance_params=guidance_params,
        )
    except FilterError as e:
        raise UserError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import DatabaseError

    from tnr_tui.services.history import HistoryError, NoHistory

    if args.action in (cmd_list, cmd_export):
        filters_of(args)  # a bad filter is said even where there is no history yet
    try:
        store = open_history(args)
    except NoHistory as e:
        if args.action is cmd_list:  # nothing to list is no error (and nothing was created)
            print("[]" if args.json else visible(str(e)))
            return 0
        raise UserError(str(e)) from None
    try:
        return int(args.action(args, store) or 0)
    except HistoryError as e:
        raise UserError(str(e)) from None
    except DatabaseError as e:
        raise UserError(f"the history {store.location} is damaged: {str(e.orig).splitlines()[0]}") from None
    except BrokenPipeError:
        raise  # `| head` closed stdout: the CLI's entry point ends quietly
    except OSError as e:
        raise UserError(_os_message(e)) from None
    finally:
        store.close()


def _os_message(e: OSError) -> str:
    """One line for a failed file operation: the path and the system's reason."""
    reason = e.strerror or str(e) or type(e).__name__
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _warning(message: str) -> None:
    print(f"tnr-lab: warning: {visible(message)}", file=sys.stderr)


# ---- list / show -------------------------------------------------------------------------------------


def _short_time(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def cmd_list(args: argparse.Namespace, store: Any) -> int:
    try:
        limit = int(args.limit)
    except ValueError:
        raise UserError(f"--limit must be a whole number, got {args.limit!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise UserError(f"--limit must be at least 1 and at most {MAX_LIMIT}, got {limit}")
    filters = filters_of(args)
    runs = store.list_runs(filters, after=args.after.upper() if args.after else None, limit=limit)
    if args.json:
        rows = []
        for r in runs:
            d = r.to_dict()
            image = r.output("image")
            rows.append(
                {
                    k: d[k]
                    for k in (
                        "id",
                        "status",
                        "prompt",
                        "created_at",
                        "finished_at",
                        "guidance",
                        "scale",
                        "solver",
                        "steps",
                        "seed",
                        "width",
                        "height",
                        "model",
                        "seconds",
                        "model_evaluations",
                        "favourite",
                        "sweep",
                    )
                }
                | {"image": str(store.resolve(image.path)) if image else None}
            )
        print(strict_json(rows, indent=1))
        return 0
    if not runs:
        # "yet" only for an empty history: with filters or --after, runs may well exist.
        print("no runs yet" if store.count_runs() == 0 else "no runs match")
        return 0
    print(f"{'id':26}  {'created (UTC)':19}  {'status':11}  {'guidance':8} {'scale':>5} {'steps':>5}  prompt")
    gone = 0
    for r in runs:
        scale = "" if r.scale is None else f"{r.scale:g}"
        # Cut before escaping, so that an escape is never cut in half; a newline reads as a space here.
        prompt = r.prompt.replace("\n", " ")
        prompt = visible(prompt if len(prompt) <= 50 else prompt[:49] + "…")
        star = "*" if r.favourite else " "
        status = visible(r.status)
        if store.process_gone(r):  # read-only: what the next writing command will mark interrupted
            status, gone = f"{status}?", gone + 1
        print(
            f"{r.id}  {_short_time(r.to_dict()['created_at'])}  {status:11}  {visible(r.guidance):8} "
            f"{scale:>5} {r.steps:>5} {star}{prompt}"
        )
    if gone:
        print(
            f"{gone} run(s) marked '?': the process of this host running it has ended; the next command that "
            "writes to the history marks it interrupted",
            file=sys.stderr,
        )
    if len(runs) == limit:
        print(f"more: --after {runs[-1].id}", file=sys.stderr)
    return 0


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float, at any depth, as None (JSON's null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON every parser reads: a run's stats, metrics or telemetry may hold NaN (a metric of a black image,
    an imported record), which json.dumps would print as the bare word NaN; here it is null."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def cmd_delete(args: argparse.Namespace, store: Any) -> int:
    """Every id is checked before anything goes: a typo or a live run among them deletes nothing."""
    from tnr_tui.services.history.deleting import delete_question, is_live

    runs: dict[str, Any] = {}
    for key in args.ids:
        found = store.find_run(key)
        if is_live(store, found):
            raise UserError(
                f"run {found.id} is {found.status}: cancel it first (escape in the lab, or stop the command that "
                "runs it), then delete it; nothing was deleted"
            )
        runs.setdefault(found.id, found)
    if not args.yes:
        for found in runs.values():
            print(delete_question(store, found, store.files_to_delete(found.id)) + "\n", file=sys.stderr)
        if not sys.stdin.isatty():
            raise UserError(
                "nothing was deleted: stdin is not a terminal to ask on; give --yes to delete without asking"
            )
        print(f"Delete {len(runs)} run(s)? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing was deleted", file=sys.stderr)
            return 0
    deleted: list[dict[str, Any]] = []
    try:
        for run_id in runs:
            removed = store.delete_run(run_id, delete_files=True)
            deleted.append({"id": run_id, "files": [str(p) for p in removed]})
            if not args.json:
                print(f"deleted run {run_id} and {len(removed)} file(s)")
    finally:
        if args.json:  # what did go, also when a later run of the list failed
            print(strict_json(deleted, indent=2))
    return 0


def cmd_show(args: argparse.Namespace, store: Any) -> int:
    run = store.find_run(args.id)
    d = run.to_dict()
    if args.json:
        print(strict_json(d, indent=2, sort_keys=True))
        return 0
    v = visible  # every value below may come from an import or a PNG found online
    gone = "  (its process has ended: the next command that writes marks it interrupted)"
    print(
        f"run {run.id}  {v(run.status)}"
        + (gone if store.process_gone(run) else "")
        + ("  (favourite)" if run.favourite else "")
    )
    print(f"  created   {_short_time(d['created_at'])} UTC  on {v(run.host)} (pid {run.pid}), from {v(run.origin)}")
    print(f"  prompt    {v(run.prompt)}")
    if run.negative_prompt:
        print(f"  negative  {v(run.negative_prompt)}")
    print(f"  sampling  {v(run.solver)}, {run.steps} steps, schedule {v(run.schedule)}, seed {run.seed}")
    print(f"  guidance  {v(run.guidance)}, scale {run.scale if run.scale is not None else 'default'}")
    if run.width:
        print(f"  size      {run.width}x{run.height}")
    print(f"  model     {v(run.model_name or run.model)}  {v(run.model_identity or '')}")
    for path, weight, sha in _loras(run.request):
        print(f"  lora      {v(path)}  weight {weight}  sha256 {v(sha[:12]) if sha else '(not read)'}")
    if run.seconds is not None:
        print(
            f"  outcome   {run.seconds:.2f} s, {run.model_evaluations} model evaluations on {v(run.device)} "
            f"({v(run.dtype)})"
        )
    if run.metrics:
        print("  metrics   " + ", ".join(f"{v(k)} {val:.3f}" for k, val in sorted(run.metrics.items())))
    if run.error:
        print(f"  error     {v(run.error)}")
    if run.sweep:
        print(f"  sweep     {v(run.sweep)}")
    if run.parent_id:
        print(f"  re-run of {v(run.parent_id)}")
    if run.notes:
        print(f"  notes     {v(run.notes)}")
    for out in run.outputs:
        path = store.resolve(out.path)
        state = "" if path.exists() else "  (missing)"
        print(f"  {v(out.kind):9} {v(path)}  {out.size} bytes{state}")
    shape = store.steps_shape(run.id)
    if shape is not None:
        print(f"  steps     {shape[0]} rows of {shape[1]} columns (tnr-lab history steps {run.id})")
    # json.dumps escapes every control character (and all non-ASCII) itself.
    print("  request   " + json.dumps(run.request, sort_keys=True))
    return 0


def _loras(request: Any) -> list[tuple[str, str, str | None]]:
    """(path, weight, sha256) of each LoRA of a stored request, as written (dicts; (path, weight) pairs in a
    hand-written one); a request without LoRAs (or before they existed) has none."""
    found = []
    items = request.get("loras") if isinstance(request, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            path, weight, sha = item.get("path"), item.get("weight", 1.0), item.get("sha256")
        elif isinstance(item, list) and len(item) == 2:
            (path, weight), sha = item, None
        else:
            continue
        weight_text = (
            f"{weight:g}" if isinstance(weight, (int, float)) and not isinstance(weight, bool) else str(weight)
        )
        found.append((str(path), weight_text, sha if isinstance(sha, str) else None))
    return found


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def cmd_steps(args: argparse.Namespace, store: Any) -> int:
    """A run's per-step rows: a table, JSON or CSV; one line (exit 1) for a run that has none."""
    run = store.find_run(args.id)
    table = store.run_steps(run.id)
    if table is None:
        if run.status in ("queued", "running"):
            reason = "it has not finished"
        elif run.status != "done":  # failed, cancelled, interrupted: its rows go in with the finished run
            reason = f"it was {run.status} before its rows were recorded"
        else:
            reason = "it was recorded before tnr-lab kept them, or with telemetry off"
        print(f"run {run.id} has no per-step rows: {reason}", file=sys.stderr)
        return 1
    if args.json:
        print(strict_json({"run_id": run.id, **table.to_dict()}))
    elif args.csv:
        table.write_csv(sys.stdout)
    else:
        # Column names come from units (extras) and imports: shown through `visible` like all user text.
        names = [visible(c) for c in table.columns]
        cells = [[_cell(v) for v in row] for row in table.rows]
        widths = [max([len(n)] + [len(r[j]) for r in cells]) for j, n in enumerate(names)]
        print("  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
        for row in cells:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return 0


# ---- export / import ---------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, store: Any) -> int:
    from tnr_tui.services.history.transfer import export_runs

    out = Path(args.out).expanduser()
    # A file that is gone or changed since its run is left out of a zip, one warning line each.
    count = export_runs(store, args.format, out, filters_of(args), force=args.force, warn=_warning)
    print(f"exported {count} run{'s' if count != 1 else ''} to {visible(out)}")
    return 0


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(flag: str, text: str) -> int:
    """`8G`, `512M`, `1.5G`, `100000` (bytes); binary units, an optional trailing B or iB."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise UserError(f"{flag} expects a size like 8G, 512M or 100000 (bytes), got {text!r}")
    value = int(float(m.group(1)) * SIZE_UNITS[m.group(2)])
    if value < 1:
        raise UserError(f"{flag} must be at least 1 byte, got {text!r}")
    return value


def cmd_import(args: argparse.Namespace, store: Any) -> int:
    from tnr_tui.services.history.transfer import ImportLimits, import_runs

    try:
        max_runs = int(args.max_runs)
    except ValueError:
        raise UserError(f"--max-runs must be a whole number, got {args.max_runs!r}") from None
    if max_runs < 1:
        raise UserError(f"--max-runs must be at least 1, got {max_runs}")
    limits = ImportLimits(max_bytes=parse_size("--max-size", args.max_size), max_runs=max_runs)
    # A file a JSONL record names that is missing or not its recorded bytes: one warning line each.
    report = import_runs(store, Path(args.file).expanduser(), warn=_warning, limits=limits)
    if args.json:
        print(
            json.dumps(
                {"added": report.added, "skipped": report.skipped, "files": report.files, "missing": report.missing}
            )
        )
    else:
        print(
            f"imported {report.added} run(s), {report.skipped} already present"
            + (f", {report.files} file(s)" if report.files else "")
            + (f", {report.missing} file(s) missing (imported without them)" if report.missing else "")
        )
    return 0


# ---- rerun -------------------------------------------------------------------------------------------


def image_drift(stored: Path, new: Path) -> dict[str, Any]:
    """Pixel difference of two images: identical, or the max and mean absolute difference (0..255)."""
    import numpy as np
    from PIL import Image

    with Image.open(stored) as a, Image.open(new) as b:
        x = np.asarray(a.convert("RGB"), dtype=np.int16)
        y = np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"identical": False, "comparable": False, "stored_size": x.shape[:2], "new_size": y.shape[:2]}
    diff = np.abs(x - y)
    return {
        "identical": bool(not diff.any()),
        "comparable": True,
        "max_abs_diff": int(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "pixels_differing": float((diff.max(axis=-1) > 0).mean()),
    }


def _same_file(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b) or os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def _refuse_stored_output(store: Any, run: Any, out: Path) -> None:
    """--out must not overwrite a file of the run being re-run: that would lose it and compare it with itself."""
    for output in run.outputs:
        stored = store.resolve(output.path)
        if _same_file(out, stored):
            raise UserError(
                f"--out {out} is the stored {output.kind} of run {run.id}; re-running would overwrite it "
                "and compare the new image with itself. Choose another path"
            )


def rerun_batched(request: Any, batch: dict[str, Any], store: Any, out: Path | None, parent_id: str) -> Any:
    """history rerun --batched: the request in a batch of its recorded size (services.dispatch.seeds)."""
    from engine.models import ModelError, load_bundle
    from engine.request import RequestError
    from engine.sampler import SamplingError
    from tnr_tui.cli.generate import ProgressBar, model_message
    from tnr_tui.services.dispatch.seeds import rerun_in_batch
    from tnr_tui.services.runs import RunOutcome

    bar = ProgressBar()
    bar.message(f"loading model {request.model} ...")
    try:
        bundle = load_bundle(request.model, device=request.device, dtype=request.dtype)
        bar.message(model_message(bundle, request) + f" (a batch of {batch.get('size')})")
        done = rerun_in_batch(
            request, int(batch.get("size", 1)), int(batch.get("index", 0)), store, bundle, parent_id=parent_id, out=out
        )
    except (ModelError, SamplingError, RequestError) as e:
        raise UserError(str(e).strip().splitlines()[0]) from None
    if done.status != "done":
        raise UserError(f"re-run {done.run_id} failed: {done.error}")
    return RunOutcome(done.run_id, "done", request, image_path=done.image_path, stats=done.stats, metrics=done.metrics)


def cmd_rerun(args: argparse.Namespace, store: Any) -> int:
    from engine.request import GenerationRequest, RequestError
    from tnr_tui.cli.generate import check_paths, run_request
    from tnr_tui.services.history.store import sha256_file

    old = store.find_run(args.id)
    try:
        request = GenerationRequest.from_dict(old.request)
    except (RequestError, TypeError) as e:
        raise UserError(f"run {old.id} holds a request this version cannot run: {e}") from None
    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        check_paths(out, None)
        _refuse_stored_output(store, old, out)
    batch = (old.stats or {}).get("batch") or None
    if getattr(args, "batched", False) and batch:
        outcome = rerun_batched(request, batch, store, out, old.id)
    else:
        outcome = run_request(request, store, out=out, save_latent=None, origin="rerun", parent_id=old.id)
    if outcome.status != "done":
        raise UserError(f"re-run {outcome.run_id} was {outcome.status}")
    report: dict[str, Any] = {"run_id": outcome.run_id, "rerun_of": old.id, "image": str(outcome.image_path)}
    if batch:  # sampled in a batch: alone, its convolutions ran at another batch size (docs/batching.md)
        report["recorded_in_batch"] = {"size": batch.get("size"), "index": batch.get("index")}
        report["rerun_batched"] = bool(getattr(args, "batched", False))
    stored = old.output("image")
    stored_path = store.resolve(stored.path) if stored else None
    if stored_path is None or not stored_path.is_file():
        report.update(compared=False, reason="the stored image is missing")
    else:
        report["compared"] = True
        report["stored_image"] = str(stored_path)
        report["stored_image_changed"] = sha256_file(stored_path) != stored.sha256
        report.update(image_drift(stored_path, outcome.image_path))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"re-ran {old.id} as {outcome.run_id}: {visible(outcome.image_path)}")
    if batch and report["rerun_batched"]:
        print(f"note: re-run in a batch of {batch.get('size')} (image {batch.get('index', 0) + 1}), as it was recorded")
    elif batch:
        print(
            f"note: the run was recorded from a batch of {batch.get('size')} (image {batch.get('index', 0) + 1}) and "
            "re-ran alone: batched convolutions round differently in the last bits (about 1e-6 relative per model "
            "call on CPU), so it may differ here by a pixel level or so; --batched re-runs it as it was sampled"
        )
    if not report["compared"]:
        print(f"no comparison: {report['reason']}")
    elif not report.get("comparable", True):
        print(f"not comparable: stored image is {report['stored_size']}, new is {report['new_size']}")
    elif report["identical"]:
        print("bit-identical to the stored image")
    else:
        print(
            f"differs from the stored image: max abs {report['max_abs_diff']}/255, "
            f"mean abs {report['mean_abs_diff']:.4f}/255, {100 * report['pixels_differing']:.2f}% of pixels"
        )
    if report.get("stored_image_changed"):
        print("note: the stored image file changed since the run recorded it", file=sys.stderr)
    return 0


# ---- import-png --------------------------------------------------------------------------------------


def cmd_import_png(args: argparse.Namespace, store: Any) -> int:
    """Each PNG becomes a `done` run (origin `import-png`) with the history's own copy of the image."""
    from engine.request import RequestError
    from tnr_tui.services.history import HistoryError
    from tnr_tui.services.history.png import PngMetadataError
    from tnr_tui.services.history.transfer import import_png

    results, failures = [], 0
    for name in args.files:
        path = Path(name).expanduser()
        try:
            # Values a run cannot have (steps past 10 000, a 20-digit seed ...) are RequestErrors here, one
            # line for this file; the next files are still imported.
            imported = import_png(store, path)
        except (PngMetadataError, RequestError, HistoryError, TypeError, ValueError, OSError) as e:
            text = _os_message(e) if isinstance(e, OSError) else str(e)
            message = text if text.startswith(str(path)) else f"{path}: {text}"
            print(f"tnr-lab: error: {visible(message)}", file=sys.stderr)
            failures += 1
            continue
        results.append(
            {
                "file": str(path),
                "run_id": imported.run_id,
                "source": imported.source,
                "new": imported.new,
                "notes": imported.notes,
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            verb = "imported as" if r["new"] else "already in the history as"
            print(f"{visible(r['file'])}: {verb} {r['run_id']} ({r['source']} metadata)")
            for note in r["notes"]:
                print(f"  note: {visible(note)}")
    return 2 if failures else 0  # each failed file had its one error line
