"""N seeds of one request as batches on one loaded model, each image its own history run (`generate --batch N`).

Seeds S .. S+N-1; as many per model call as the device's memory holds (engine.batch). Each image gets its row
before its batch samples, its PNG, its numbers and, where asked, its latent and the user's copies: as
`runs.execute` would for each seed alone, with `stats["batch"]` saying it was sampled in a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnr_tui.services.dispatch.recording import cancel_rows, create_rows, record
from tnr_tui.services.dispatch.work import WorkItem, make_batches
from tnr_tui.services.dispatch.worker import BatchWorker


@dataclass
class SeedOutcome:
    run_id: str
    seed: int
    status: str  # done / failed
    image_path: Path | None
    latent_path: Path | None
    stats: dict[str, Any]
    metrics: dict[str, float]
    error: str = ""


def numbered(path: Path, seed: int) -> Path:
    """out.png -> out-SEED.png: one file per seed of a batch."""
    return path.with_name(f"{path.stem}-{seed}{path.suffix}")


def run_seeds(
    request: Any,
    count: int,
    store: Any,
    bundle: Any,
    *,
    out: Path | None = None,
    save_latent: Path | None = None,
    origin: str = "cli",
    forced: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[SeedOutcome]:
    """Sample seeds request.seed .. request.seed + count - 1 and record each. `forced`: images per model call
    (None: from the memory budget). `on_batch(done, total)` after each batch (progress)."""
    from tnr_tui.services.runs import place_copy

    requests = [request.replace(seed=request.seed + k) for k in range(count)]
    worker = BatchWorker(request.model, bundle=bundle, name="local", keep_latents=save_latent is not None)
    model = worker.describe()
    items = [WorkItem(str(r.seed), r) for r in requests]
    batches = make_batches(items, lambda r, n: worker.batch_size(r, n, forced))
    outcomes: list[SeedOutcome] = []
    for batch in batches:
        create_rows(store, batch, origin)
        try:
            results = worker.run(batch)
            records = [record(store, result, model) for result in results]
        except BaseException:
            cancel_rows(store, [batch], "cancelled")
            raise
        # The user's copies once every image of the batch is recorded: one that cannot be written (a full
        # disk, a directory in the way) loses none of them. Each copy is tried; the first failure is raised.
        failure: OSError | None = None
        for result, recorded in zip(results, records, strict=True):
            seed = int(result.request["seed"])
            image_path = latent_path = None
            if recorded.status == "done":
                image_path = recorded.image_path
                try:
                    if out is not None:
                        image_path = numbered(out, seed) if count > 1 else out
                        place_copy(recorded.image_path, image_path)
                    if save_latent is not None and recorded.latent_path is not None:
                        latent_path = numbered(save_latent, seed) if count > 1 else save_latent
                        place_copy(recorded.latent_path, latent_path)
                except OSError as e:
                    failure = failure or e
            outcomes.append(
                SeedOutcome(
                    recorded.run_id,
                    seed,
                    recorded.status,
                    image_path,
                    latent_path,
                    result.stats,
                    result.metrics,
                    result.error,
                )
            )
        if failure is not None:
            raise failure
        if on_batch is not None:
            on_batch(len(outcomes), count)
    return outcomes


def rerun_in_batch(
    request: Any, size: int, index: int, store: Any, bundle: Any, *, parent_id: str, out: Path | None = None
) -> SeedOutcome:
    """Re-run a run recorded from a batch as it was sampled: in a batch of `size` (copies of its own request),
    taking image `index`. On the same machine and library versions an image depends only on its request and
    the batch size (tests/test_batch.py), so this reproduces the stored image bit for bit, where a run alone
    differs in the last bits of the batched convolutions."""
    from tnr_tui.services.runs import place_copy

    worker = BatchWorker(request.model, bundle=bundle, name="local")
    index = min(max(0, int(index)), max(0, int(size) - 1))
    items = [WorkItem(str(k), request) for k in range(max(1, int(size)))]
    items[index].run_id = store.create_run(request, origin="rerun", parent_id=parent_id)
    batch = make_batches(items, lambda r, n: n)[0]
    try:
        result = worker.run(batch)[index]
        recorded = record(store, result, worker.describe())
    except BaseException:
        cancel_rows(store, [batch], "cancelled")
        raise
    image_path = recorded.image_path
    if out is not None and recorded.status == "done":
        place_copy(recorded.image_path, out)
        image_path = out
    return SeedOutcome(
        recorded.run_id, request.seed, recorded.status, image_path, None, result.stats, result.metrics, result.error
    )


def execute_batch(
    requests: list[Any],
    store: Any,
    bundle: Any,
    *,
    run_ids: list[str],
    on_step: Callable[[int, Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Any]:
    """Queued runs (the TUI's, rows already `queued`) that can share a batch, sampled as one and recorded each:
    `runs.RunOutcome`s in order ("done", "failed" with `stats["error"]`, or all "cancelled" when should_stop
    stopped the batch). Any other error closes the rows (failed, or cancelled on ctrl-c) and is re-raised."""
    from engine.request import GenerationRequest
    from engine.sampler import SamplingCancelled
    from tnr_tui.services.runs import RunOutcome

    worker = BatchWorker(requests[0].model, bundle=bundle, name="local")
    items = [WorkItem(str(k), r, run_id) for k, (r, run_id) in enumerate(zip(requests, run_ids, strict=True))]
    batch = make_batches(items, lambda r, n: n)[0]
    for run_id in run_ids:
        store.start_run(run_id)
    try:
        results = worker.run(batch, on_step=on_step, should_stop=should_stop)
    except SamplingCancelled:
        for run_id in run_ids:
            store.finish_run(run_id, "cancelled", error="cancelled", if_live=True)
        return [RunOutcome(run_id, "cancelled", r) for r, run_id in zip(requests, run_ids, strict=True)]
    except BaseException as e:
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        from tnr_tui.services.dispatch.worker import one_line

        for run_id in run_ids:
            try:
                store.finish_run(run_id, status, error=one_line(e), if_live=True, wait_s=0.0)
            except Exception:  # the store failing too: the next open marks the rows interrupted
                pass
        raise
    model = worker.describe()
    outcomes = []
    for result in results:
        recorded = record(store, result, model)
        stats = dict(result.stats) if recorded.status == "done" else {"error": result.error}
        outcomes.append(
            RunOutcome(
                recorded.run_id,
                recorded.status,
                GenerationRequest.from_dict(result.request),
                image_path=recorded.image_path,
                image=result.image,
                stats=stats,
                metrics=result.metrics,
            )
        )
    return outcomes
