"""The device worker: one thread owns the model and the device and runs queued requests one at a time.

It never touches widgets. It posts Textual messages to the app (model state, progress, previews, the
outcome); progress messages replace each other in the queue and previews are throttled and shrunk, so a
fast sampler cannot flood the event loop. Heavy libraries (torch, diffusers) load inside the thread.
"""

from __future__ import annotations

import functools
import gc
import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.message import Message

from engine.request import GenerationRequest
from tnr_tui.ui.widgets.picture import prerender

PREVIEW_INTERVAL_S = 0.25  # at most four previews a second reach the UI
PREVIEW_MAX_PX = 192  # previews are shrunk to this size before they cross the thread boundary
ROWS_KEPT = 64  # jobs whose telemetry rows the worker holds (a batch has at most engine.batch.MAX_BATCH = 32)


# ---- messages (posted from the worker thread; handled on the UI thread) ---------------------------


class ModelState(Message):
    """The model is loading / loaded / failed to load."""

    def __init__(self, ref: str, state: str, detail: str = "", default_scales: dict[str, float] | None = None) -> None:
        super().__init__()
        self.ref, self.state, self.detail = ref, state, detail
        self.default_scales = dict(default_scales or {})  # the loaded model's own (tnr_lab.json)


class RunStarted(Message):
    def __init__(self, job_id: int, request: GenerationRequest) -> None:
        super().__init__()
        self.job_id, self.request = job_id, request


class RunProgress(Message):
    """One sampler step done. A newer progress message of the same job replaces a queued older one.

    `rows` holds the telemetry row of every step so far (engine.telemetry: column -> value; empty with
    telemetry off), not only this step's: so a message that replaces queued ones loses none of their rows,
    and the UI handles one message however many steps the sampler did meanwhile. The tuple shares its dicts
    with the worker's list (references: a step adds one, nothing is copied but the tuple)."""

    def __init__(
        self,
        job_id: int,
        index: int,
        steps: int,
        sigma: float,
        tnr_factor: float | None,
        evaluations: int,
        elapsed: float,
        rows: tuple[dict[str, Any], ...] = (),
    ) -> None:
        super().__init__()
        self.job_id, self.index, self.steps, self.sigma = job_id, index, steps, sigma
        self.tnr_factor, self.evaluations, self.elapsed = tnr_factor, evaluations, elapsed
        self.rows = rows

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunProgress) and message.job_id == self.job_id


class RunPreview(Message):
    """A small picture of the run in progress: the cheap latent preview or a decoded image."""

    def __init__(self, job_id: int, image: Any, decoded: bool, index: int, prepared: Any = None) -> None:
        super().__init__()
        self.job_id, self.image, self.decoded, self.index = job_id, image, decoded, index
        self.prepared = prepared  # its half-cell lines, drawn on the worker's thread (widgets.picture.prerender)

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunPreview) and message.job_id == self.job_id


class RunEnded(Message):
    """The run finished: status is 'done', 'cancelled' or 'failed' (then error says why)."""

    def __init__(
        self,
        job_id: int,
        request: GenerationRequest,
        status: str,
        run_id: Any = None,
        image: Any = None,
        stats: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        error: str = "",
    ) -> None:
        super().__init__()
        self.job_id, self.request, self.status, self.run_id = job_id, request, status, run_id
        self.image, self.stats, self.metrics, self.error = image, stats or {}, metrics or {}, error

    @classmethod
    def of(cls, job_id: int, request: GenerationRequest, outcome: Any) -> RunEnded:
        """The message for a run that `execute` (or a batch) recorded: its status, run id, image and numbers."""
        return cls(
            job_id,
            request,
            outcome.status,
            run_id=outcome.run_id,
            image=outcome.image,
            stats=outcome.stats,
            metrics=outcome.metrics,
        )


# ---- the worker ------------------------------------------------------------------------------------


@dataclass
class Job:
    job_id: int
    request: GenerationRequest
    run_id: str | None = None  # the history row, recorded `queued` when the job was submitted
    origin: str = "tui"
    parent_id: str | None = None
    prerender: bool = False  # its previews are for the Lab's picture: draw their lines here (picture.prerender)


LoadFn = Callable[[str, str, str], Any]
RunFn = Callable[..., Any]


def _default_load(ref: str, device: str = "auto", dtype: str = "auto", threads: int | None = None) -> Any:
    from engine.models import load_bundle
    from tnr_tui.services.threads import apply_cpu_threads

    apply_cpu_threads(threads)  # here, not at start-up: torch loads after the first frame
    return load_bundle(ref, device=device, dtype=dtype)


def _default_run(request: GenerationRequest, store: Any, **kwargs: Any) -> Any:
    from tnr_tui.services.runs import execute

    return execute(request, store, **kwargs)


def _default_store(data_dir: Path | None) -> Any:
    from tnr_tui.services.history import open_store

    return open_store(data_dir)


def describe_error(exc: BaseException) -> str:
    """One line for the user: out-of-memory and NaN errors get a hint, others their own message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    name = type(exc).__name__
    if name in ("ModelError", "SamplingError", "RequestError", "HistoryError", "HistoryUnavailable"):
        return text  # our own messages say what happened
    if "out of memory" in text.lower() or name == "OutOfMemoryError":
        return f"out of memory: {text} (try a smaller size, fewer prompts, or float16)"
    return f"{name}: {text}"


class DeviceWorker:
    """Owns the model and the device in one daemon thread; `post` delivers messages to the UI."""

    def __init__(
        self,
        post: Callable[[Message], Any],
        *,
        data_dir: Path | None = None,
        load_fn: LoadFn | None = None,
        run_fn: RunFn | None = None,
        store_fn: Callable[[Path | None], Any] | None = None,
        threads: int | None = None,
    ) -> None:
        self._post = post
        self._data_dir = data_dir
        self._load = load_fn or functools.partial(_default_load, threads=threads)
        self._run = run_fn or _default_run
        self._open_store = store_fn or _default_store
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()  # the app is quitting
        self._cancel = threading.Event()  # cancel the run in progress
        self._ids = itertools.count(1)
        self._bundles: dict[tuple[str, str, str], Any] = {}  # (model, device, dtype) -> bundle
        self._store: Any = None
        self._job_rows: dict[int, list[dict[str, Any]]] = {}  # job id -> its telemetry rows so far (_on_step)
        self.current_job: int | None = None
        self.current_run_ids: tuple[str, ...] = ()  # the history rows of the job(s) in progress (TUI jobs have them)
        self.pending = 0  # queued runs not started yet; changed by both threads, under _pending_lock
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tnr-device", daemon=True)

    # ---- called from the UI thread ----

    def start(self) -> None:
        self._thread.start()

    def load_model(self, ref: str, device: str = "auto", dtype: str = "auto") -> None:
        self._queue.put(("load", (ref, device, dtype)))

    def submit(
        self,
        request: GenerationRequest,
        *,
        run_id: str | None = None,
        origin: str = "tui",
        parent_id: str | None = None,
        prerender: bool = False,
    ) -> int:
        """Queue one run; `prerender`: its previews go to the Lab's picture, whose lines the worker draws."""
        job = Job(next(self._ids), request, run_id, origin, parent_id, prerender)
        with self._pending_lock:
            self.pending += 1
        self._queue.put(("run", job))
        return job.job_id

    def submit_batch(
        self, requests: list[GenerationRequest], run_ids: list[str | None], origin: str = "tui"
    ) -> list[int]:
        """Runs queued as one item, so the worker takes them together as one batch (they must differ only in
        seed, prompts and tags; the worker samples them in batches its device's memory holds)."""
        jobs = [
            Job(next(self._ids), request, run_id, origin) for request, run_id in zip(requests, run_ids, strict=True)
        ]
        with self._pending_lock:
            self.pending += len(jobs)
        self._queue.put(("runs", jobs))
        return [job.job_id for job in jobs]

    def cancel(self) -> list[Job]:
        """Cancel the run in progress (within one model evaluation); returns the queued jobs it dropped."""
        dropped: list[Job] = []
        kept: list[tuple[str, Any] | None] = []
        try:
            while True:
                item = self._queue.get_nowait()
                if item and item[0] in ("run", "runs"):
                    jobs = item[1] if item[0] == "runs" else [item[1]]
                    dropped.extend(jobs)
                    with self._pending_lock:
                        self.pending -= len(jobs)
                else:
                    kept.append(item)
        except queue.Empty:
            pass
        for item in kept:
            self._queue.put(item)
        if self.current_job is not None:
            self._cancel.set()
        return dropped

    def shutdown(self, timeout: float = 1.5) -> list[Job]:
        """Stop: the run in progress sees the flag at its next model evaluation; the thread is a daemon.
        Returns the queued jobs it dropped (not started: their history rows are the caller's to close)."""
        self._stop.set()
        dropped = self.cancel()
        self._cancel.set()
        self._queue.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return dropped

    @property
    def alive(self) -> bool:
        """The thread still runs (after `shutdown`: it is inside one model evaluation, which no flag stops)."""
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self.current_job is not None or self.pending > 0

    def queue_counts(self) -> tuple[int, int]:
        """(runs in progress, runs queued behind it)."""
        with self._pending_lock:
            return int(self.current_job is not None), self.pending

    # ---- the thread ----

    def _should_stop(self) -> bool:
        return self._cancel.is_set() or self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None or self._stop.is_set():
                return
            kind, payload = item
            try:
                if kind == "load":
                    self._load_model(payload)
                elif kind == "runs":
                    self._run_jobs(payload[0], payload[1:])
                else:
                    self._run_jobs(payload)
            except BaseException as exc:  # the worker must survive anything a run throws
                self._post(ModelState("?", "failed", f"internal error: {describe_error(exc)}"))
                traceback.print_exc()

    def _load_model(self, key: tuple[str, str, str]) -> Any:
        ref = key[0]
        if key in self._bundles:
            bundle = self._bundles[key]
            self._post(ModelState(ref, "loaded", _bundle_label(bundle), getattr(bundle, "default_scales", None)))
            return bundle
        self._post(ModelState(ref, "loading"))
        started = time.perf_counter()
        # One model on the device at a time: the previous one is freed before the next loads (two SDXL models
        # rarely fit). It was frozen for the GC (below), and frozen cycles are never collected: unfreeze first.
        if self._bundles:
            self._bundles.clear()
            gc.unfreeze()
            gc.collect()
        try:
            bundle = self._load(*key)
        except Exception as exc:
            self._post(ModelState(ref, "failed", describe_error(exc)))
            return None
        self._bundles[key] = bundle
        # The libraries and the model are millions of long-lived objects: a full collection walking them froze
        # both threads for ~300 ms mid-run (measured with gc.callbacks). Frozen, later collections skip them.
        gc.collect()
        gc.freeze()
        label = f"{_bundle_label(bundle)} in {time.perf_counter() - started:.1f} s"
        self._post(ModelState(ref, "loaded", label, getattr(bundle, "default_scales", None)))
        return bundle

    def _batchable(self, first: Job) -> list[Job]:
        """Runs queued right behind `first` that can share its batch (engine.batch: they differ only in seed,
        prompts and tags; the Compare screen's seeds per tile), taken off the queue now. Only with the real run
        function (a test's stand-in runs one request at a time) and never re-runs (each has its own parent)."""
        from engine.batch import MAX_BATCH, batch_key

        if self._run is not _default_run or first.parent_id is not None:
            return []
        key = batch_key(first.request)
        taken: list[Job] = []
        with self._queue.mutex:  # the queue's own lock: nothing is put or got while we look
            waiting = self._queue.queue
            while waiting and len(taken) + 1 < MAX_BATCH:
                item = waiting[0]
                if not item or item[0] != "run" or item[1].parent_id is not None:
                    break
                if batch_key(item[1].request) != key:
                    break
                taken.append(waiting.popleft()[1])
        return taken

    def _run_jobs(self, job: Job, together: list[Job] | None = None) -> None:
        """One run, or it and the runs behind it (or submitted with it) that share its batch, as one batch."""
        jobs = [job, *together] if together else [job, *self._batchable(job)]
        if len(jobs) > 1 and self._run is not _default_run:  # a test's stand-in runs one request at a time
            for each in jobs:
                self._run_job(each)
            return
        if len(jobs) == 1:
            self._run_job(job)
            return
        self._cancel.clear()  # before current_job is set: a cancel from then on reaches these jobs
        with self._pending_lock:
            self.pending -= len(jobs)
            self.current_job = job.job_id
            self.current_run_ids = tuple(each.run_id for each in jobs if each.run_id)
        for each in jobs:
            self._post(RunStarted(each.job_id, each.request))
        ended: set[int] = set()
        try:
            request = job.request
            key = (request.model, request.device, request.dtype)
            bundle = self._bundles.get(key) or self._load_model(key)
            if bundle is None:  # the load failed (ModelState said why): each run records its own failure
                for each in jobs:
                    self._run_job_started(each)
                    ended.add(each.job_id)
                return
            if self._store is None:
                self._store = self._open_store(self._data_dir)
            from engine.batch import choose_batch_size
            from tnr_tui.services.dispatch.seeds import execute_batch

            size = choose_batch_size(bundle, request, len(jobs))
            for start in range(0, len(jobs), size):
                chunk = jobs[start : start + size]
                previews = {each.job_id: [0.0] for each in chunk}

                def on_step(image: int, event: Any, chunk: list[Job] = chunk, previews: dict = previews) -> None:
                    job_id = chunk[image].job_id
                    self._on_step(job_id, event, previews[job_id])  # a batch's tiles: not the Lab's picture

                run_ids = [
                    each.run_id or self._store.create_run(each.request, status="queued", origin=each.origin)
                    for each in chunk
                ]
                outcomes = execute_batch(
                    [each.request for each in chunk],
                    self._store,
                    bundle,
                    run_ids=run_ids,
                    on_step=on_step,
                    should_stop=self._should_stop,
                )
                for each, outcome in zip(chunk, outcomes, strict=True):
                    if outcome.status == "failed":
                        message = RunEnded(
                            each.job_id,
                            each.request,
                            "failed",
                            run_id=outcome.run_id,
                            error=outcome.stats.get("error", ""),
                        )
                    else:
                        message = RunEnded.of(each.job_id, each.request, outcome)
                    self._post(message)
                    ended.add(each.job_id)
        except Exception as exc:  # execute_batch has closed the rows; the app stays up
            for each in jobs:
                if each.job_id not in ended:
                    self._post(
                        RunEnded(each.job_id, each.request, "failed", run_id=each.run_id, error=describe_error(exc))
                    )
        finally:
            self.current_job = None
            self.current_run_ids = ()
            self._cancel.clear()

    def _run_job_started(self, job: Job) -> None:
        """A job of a batch that could not run as one: alone, its RunStarted already posted."""
        try:
            outcome = self._run(
                job.request,
                self._store or self._open_store(self._data_dir),
                bundle=None,
                origin=job.origin,
                parent_id=job.parent_id,
                run_id=job.run_id,
            )
            self._post(RunEnded.of(job.job_id, job.request, outcome))
        except Exception as exc:
            self._post(RunEnded(job.job_id, job.request, "failed", run_id=job.run_id, error=describe_error(exc)))

    def _run_job(self, job: Job) -> None:
        self._cancel.clear()  # before current_job is set: a cancel from then on reaches this job
        with self._pending_lock:
            self.pending -= 1
            self.current_job = job.job_id  # together: a reader never sees the job in neither count
            self.current_run_ids = (job.run_id,) if job.run_id else ()
        request = job.request
        self._post(RunStarted(job.job_id, request))
        try:
            key = (request.model, request.device, request.dtype)
            bundle = self._bundles.get(key) or self._load_model(key)
            if self._store is None:
                self._store = self._open_store(self._data_dir)
            last_preview = [0.0]

            def on_step(event: Any) -> None:
                self._on_step(job.job_id, event, last_preview, prerender_lines=job.prerender)

            # With no bundle (the model failed to load) execute() tries again and records the failure.
            outcome = self._run(
                request,
                self._store,
                bundle=bundle,
                on_step=on_step,
                should_stop=self._should_stop,
                origin=job.origin,
                parent_id=job.parent_id,
                run_id=job.run_id,
            )
            self._post(RunEnded.of(job.job_id, request, outcome))
        except Exception as exc:  # execute() has recorded the run as failed; the app stays up
            self._post(RunEnded(job.job_id, request, "failed", run_id=job.run_id, error=describe_error(exc)))
        finally:
            self.current_job = None
            self.current_run_ids = ()
            self._cancel.clear()

    def _on_step(self, job_id: int, event: Any, last_preview: list[float], prerender_lines: bool = False) -> None:
        rows = self._rows_of(job_id, event.index)
        step_rows = getattr(event, "rows", None)
        if step_rows:  # the event's image's row (a batch's event carries its own image's)
            rows.append(step_rows[0])
        self._post(
            RunProgress(
                job_id,
                event.index,
                event.steps,
                float(event.sigma),
                None if event.tnr_factor is None else float(event.tnr_factor),
                int(event.evaluations),
                float(event.elapsed),
                tuple(rows),
            )
        )
        now = time.monotonic()
        decoded = getattr(event, "image", None)
        picture = decoded if decoded is not None else getattr(event, "preview", None)
        last = event.index + 1 >= event.steps
        if picture is None or (decoded is None and not last and now - last_preview[0] < PREVIEW_INTERVAL_S):
            return
        last_preview[0] = now
        shown = shrink(picture)
        prepared = prerender(shown) if prerender_lines else None
        self._post(RunPreview(job_id, shown, decoded is not None, event.index, prepared))

    def _rows_of(self, job_id: int, index: int) -> list[dict[str, Any]]:
        """The job's telemetry rows so far (a new list at its first step); the last ROWS_KEPT jobs' only."""
        rows = self._job_rows.get(job_id)
        if rows is None or index == 0:
            rows = self._job_rows[job_id] = []
            while len(self._job_rows) > ROWS_KEPT:  # a batch's jobs interleave: keep a few, drop the oldest
                self._job_rows.pop(next(iter(self._job_rows)))
        return rows


def shrink(image: Any, max_px: int = PREVIEW_MAX_PX) -> Any:
    """A copy no larger than max_px on its long side (re-encoding a picture costs the UI thread)."""
    if max(image.size) <= max_px:
        return image.copy()
    copy = image.copy()
    copy.thumbnail((max_px, max_px))
    return copy


def _bundle_label(bundle: Any) -> str:
    name = getattr(bundle, "name", None) or getattr(bundle, "ref", "model")
    device = getattr(bundle, "device", "")
    dtype = str(getattr(bundle, "dtype", "")).replace("torch.", "")
    return " ".join(str(x) for x in (name, device, dtype) if x)
