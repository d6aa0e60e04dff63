"""Running a sweep: every cell not yet done (in the CSV or the history under the same sweep id) becomes an ordinary
history run; the CSV grows as it goes; the contact sheets come last.

Cells that differ only in the seed run as one batch (services.dispatch: one model call per stage for all of
them, the batch size from the device's memory or `batch`), in this process on the caller's model or on Ray
workers (`dispatcher`); either way this process records every image in the history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnr_tui.services.cells import GridCell, cell_of_request  # noqa: F401  (GridCell: the cells of a plan)
from tnr_tui.services.checks import check_verdicts, is_embedded
from tnr_tui.services.sweep.sheets import write_contact_sheets
from tnr_tui.services.sweep.spec import (
    SweepError,
    SweepSpec,
    cell_key_of_request,
    cell_request,
    evaluations,
    plan,
    reference_budget,
    row_label,
)
from tnr_tui.services.sweep.table import CSV_COLUMNS, read_rows, write_rows

# ---- execution ------------------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    sweep_id: str
    total: int
    ran: int
    skipped: int
    failed: int
    csv_path: Path
    sheets: list[Path]
    seconds: float


def history_done_cells(store: Any, sweep_id: str, model_identity: str) -> dict[str, dict[str, Any]]:
    """Cells of this sweep done in the history with these weights: key -> {run_id, request, image, stats, metrics}.

    The newest done run of a cell wins (ids sort by creation time and `iter_runs` lists newest first)."""
    from tnr_tui.services.history import RunFilter

    done: dict[str, dict[str, Any]] = {}
    for run in store.iter_runs(RunFilter(sweep=sweep_id, status="done")):
        request = run.request
        key = cell_key_of_request(request)
        output = run.output("image")
        if key in done or output is None or run.model_identity != model_identity:
            continue
        done[key] = {
            "run_id": run.id,
            "request": request,
            "image": str(store.resolve(output.path)),
            "stats": {**(run.stats or {}), "model_evaluations": run.model_evaluations, "seconds": run.seconds},
            "metrics": run.metrics,
        }
    return done


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    store: Any,
    *,
    sweep_id: str | None = None,
    bundle: Any = None,
    log: Callable[[str], None] = print,
    device: str = "auto",
    dtype: str = "auto",
    clip_model: Path | None = None,
    batch: int | None = None,
    dispatcher: Any = None,
) -> SweepReport:
    """Run every cell not yet done, append the CSV as it goes, then draw the contact sheets.

    `clip_model`: a local CLIP directory; adds a CLIP score per image (rows already in the CSV keep theirs).
    `batch`: images per batch (None: as many as the device's memory holds; 1: one at a time).
    `dispatcher`: where the images are made (services.dispatch.RayDispatcher); None: here, on `bundle`."""
    from PIL import Image

    from engine.metrics import image_metrics

    started = time.perf_counter()
    if dispatcher is not None:
        info = dispatcher.workers_info()[0]
        identity, embedded = str(info["model_identity"]), bool(info["embedded"])
    else:
        if bundle is None:
            from engine.models import load_bundle

            bundle = load_bundle(spec.model, device=device, dtype=dtype)
        identity, embedded = str(bundle.identity), is_embedded(spec.model, bundle)
    sweep_id = sweep_id or spec.sweep_id(identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "sweep.json"
    manifest.write_text(json.dumps({"sweep": sweep_id, "spec": spec.to_dict()}, indent=2, sort_keys=True) + "\n")
    csv_path = out_dir / "sweep.csv"
    cells = plan(spec)
    wanted = {c.key for c in cells}

    scorer = None
    if clip_model is not None:
        from engine.metrics import ClipScorer, MetricsError

        try:
            scorer = ClipScorer(clip_model)
        except MetricsError as e:
            raise SweepError(str(e)) from None

    def measured(image: Any, prompt: str, metrics: dict[str, float] | None) -> dict[str, float]:
        values = dict(metrics or image_metrics(image))
        if scorer is not None:
            values["clip_score"] = scorer.score(image, prompt)
        return values

    rows: dict[str, dict[str, Any]] = {}
    for row in read_rows(csv_path):
        same = row.get("sweep") == sweep_id and row.get("model_identity") == identity
        if same and row["key"] in wanted and Path(row.get("image", "")).is_file():
            rows[row["key"]] = row
    # Runs done in the history but missing from the CSV (a crash between the two, or a deleted CSV).
    for key, done in history_done_cells(store, sweep_id, identity).items():
        if key in wanted and key not in rows and done.get("image") and Path(done["image"]).is_file():
            image = Image.open(done["image"]).convert("RGB")
            prompt = done["request"]["prompt"]
            metrics = measured(image, prompt, done.get("metrics"))
            verdicts = check_verdicts(image, prompt) if embedded else {}
            rows[key] = _row(sweep_id, key, done, metrics, verdicts)
            rows[key]["model_identity"] = identity
    skipped = len(rows)
    todo = [c for c in cells if c.key not in rows]
    log(f"sweep {sweep_id}: {len(cells)} cells, {skipped} already done, {len(todo)} to run")
    if spec.match_evaluations:
        log(
            f"  matched to {reference_budget(spec.steps)} model evaluations (Euler, one prediction, {spec.steps} steps):"
        )
        for method, solver, steps in dict.fromkeys((c.guidance, c.solver, c.steps) for c in cells):
            log(f"    {method:<8} {solver:<8} {steps:>3} steps = {evaluations(solver, method, steps)} evaluations")

    ran = failed = 0
    if todo:
        from tnr_tui.services.dispatch import LocalDispatcher, Progress, WorkItem, make_batches
        from tnr_tui.services.dispatch.progress import ProgressPrinter
        from tnr_tui.services.dispatch.recording import cancel_rows, create_rows, record

        own = dispatcher is None
        if own:
            dispatcher = LocalDispatcher(bundle, spec.model)
        items = []
        for cell in todo:
            request = cell_request(cell, spec, sweep_id)
            if device != "auto" or dtype != "auto":
                request = request.replace(device=device, dtype=dtype)
            items.append(WorkItem(cell.key, request))
        by_key = {cell.key: cell for cell in todo}
        batches = make_batches(items, lambda request, images: dispatcher.batch_size(request, images, batch))
        if len(batches) < len(items):
            sizes = ", ".join(str(n) for n in sorted({len(b) for b in batches}, reverse=True))
            log(f"  {len(items)} images in {len(batches)} batches (of {sizes})")
        progress = Progress(total=len(items))
        show = ProgressPrinter(log)
        handed_out: dict[int, Any] = {}

        def prepare(b: Any) -> None:  # the rows exist before the work goes out (runs.execute's order)
            handed_out[b.batch_id] = b
            create_rows(store, b, "sweep")

        i = 0
        try:
            for done_batch, results in dispatcher.run(batches, prepare=prepare, progress=progress):
                for result in results:
                    i += 1
                    cell = by_key[result.key]
                    recorded = record(store, result, dispatcher.model_info(result.worker))
                    if recorded.status != "done":
                        failed += 1
                        log(f"  [{i}/{len(todo)}] {row_label(cell)} seed {cell.seed}: failed: {result.error}")
                        continue
                    ran += 1
                    done = {
                        "run_id": recorded.run_id,
                        "request": result.request,
                        "image": str(recorded.image_path),
                        "stats": result.stats,
                    }
                    metrics = measured(result.image, cell.prompt, result.metrics)
                    verdicts = dict(result.verdicts) if embedded else {}
                    rows[cell.key] = _row(sweep_id, cell.key, done, metrics, verdicts)
                    rows[cell.key]["model_identity"] = identity
                    in_batch = result.stats.get("batch")
                    shared = f" (batch of {in_batch['size']})" if in_batch else ""
                    log(
                        f"  [{i}/{len(todo)}] {row_label(cell)} seed {cell.seed}: "
                        f"{result.stats.get('model_evaluations')} evaluations, {result.stats.get('seconds', 0):.2f} s{shared}"
                    )
                handed_out.pop(done_batch.batch_id, None)
                write_rows(csv_path, _ordered(cells, rows))
                show(progress)
        except BaseException as e:  # ctrl-c, a lost cluster, the history failing: close what was handed out
            reason = "cancelled" if isinstance(e, KeyboardInterrupt) else f"sweep stopped: {type(e).__name__}: {e}"
            cancel_rows(store, handed_out.values(), reason.splitlines()[0] if reason else "cancelled")
            raise
        finally:
            if own:
                dispatcher.close()
    write_rows(csv_path, _ordered(cells, rows))
    sheets = write_contact_sheets(spec, cells, rows, out_dir)
    return SweepReport(sweep_id, len(cells), ran, skipped, failed, csv_path, sheets, time.perf_counter() - started)


def _row(
    sweep_id: str, key: str, done: dict[str, Any], metrics: dict[str, float], verdicts: dict[str, Any]
) -> dict[str, Any]:
    req = done["request"]
    stats = done.get("stats") or {}
    cell = json.loads(key)
    return {
        "sweep": sweep_id,
        "run_id": done.get("run_id"),
        "prompt": req["prompt"],
        "guidance": req["guidance"],
        "scale": cell[2],
        "solver": req["solver"],
        "steps": req["steps"],
        "seed": req["seed"],
        "evaluations": stats.get("model_evaluations"),
        "planned_evaluations": evaluations(req["solver"], req["guidance"], int(req["steps"])),
        "seconds": stats.get("seconds"),
        "loras": " ".join(f"{lora['path']}:{float(lora.get('weight', 1.0)):g}" for lora in req.get("loras") or []),
        **{k: float(v) for k, v in metrics.items() if k in CSV_COLUMNS},
        **verdicts,
        "image": done.get("image"),
        "key": key,
    }


def _ordered(cells: list[GridCell], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [rows[c.key] for c in cells if c.key in rows]
