"""Ray across devices: one long-lived worker (actor) per device, each loading the model once and taking batches.

    --ray local      a Ray cluster started for the run on this host (loopback only), stopped at its end
    --ray auto       the cluster this host belongs to (`ray start` ran here, or RAY_ADDRESS)
    --ray ADDRESS    a cluster's address (host:port of its head, or ray://host:10001 for Ray Client)

Workers: one per GPU of the cluster (`num_gpus=1` each) when it has GPUs and the device is auto or cuda;
otherwise CPU workers of `threads` cores each, as many as the cluster's CPUs hold (or `workers`). Each keeps
`IN_FLIGHT` batches queued so it never waits for the driver. A worker that dies (its process killed, its host
lost) is restarted by Ray (`MAX_RESTARTS`) and the batches it held go to another worker; a batch lost
`MAX_ATTEMPTS` times fails. Results come back to the driver, which records them: workers need neither the
history nor a shared filesystem, only the model at the same path (or `embedded`) on every host.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tnr_tui.services.dispatch.progress import Progress
from tnr_tui.services.dispatch.work import MAX_ATTEMPTS, Batch, DispatchError, ImageResult
from tnr_tui.services.dispatch.worker import BatchWorker, one_line

INSTALL_HINT = "--ray needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
MAX_RESTARTS = 3  # Ray restarts a dead worker (reloading the model) this many times
IN_FLIGHT = 2  # batches queued on each worker
WAIT_S = 0.5  # the driver wakes at least this often (ctrl-c is seen between waits)


def import_ray(local: bool = False) -> Any:
    """Ray, or a DispatchError saying how to install it. `local`: a cluster for this run binds to loopback only
    (Ray uses the host's address unless told, before it is imported, that this host is no cluster node)."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # node address 127.0.0.1 (ray_constants)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from an offline lab
    try:
        import ray
    except ImportError:
        raise DispatchError(INSTALL_HINT) from None
    return ray


def _actor_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The errors that mean 'the worker died holding this task' (as opposed to the task itself raising)."""
    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "ObjectLostError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))


class RayDispatcher:
    """Batches on Ray workers; see the module docstring. `close()` stops a cluster it started."""

    def __init__(
        self,
        address: str,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int = 1,
        workers: int | None = None,
        worker_class: type = BatchWorker,
        log: Callable[[str], None] = print,
    ) -> None:
        local = address == "local"
        ray = self.ray = import_ray(local=local)
        self.log = log
        self.started_cluster = False
        if not ray.is_initialized():
            try:
                if local:
                    ray.init(
                        num_cpus=os.cpu_count() or 1,
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                else:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as e:  # ConnectionError, a bad address, no cluster running for "auto"
                raise DispatchError(f"cannot reach the Ray cluster at {address!r}: {one_line(e)}") from None
            self.started_cluster = True
        threads = max(1, int(threads or 1))
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 0))
        on_gpus = gpus > 0 and device in ("auto", "cuda") or device.startswith("cuda:")
        if on_gpus:
            count = workers or gpus
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            device = "cuda" if device.startswith("cuda") else device
        else:
            count = workers or max(1, cpus // threads)
            options = {"num_cpus": threads}
        if count < 1:
            raise DispatchError("the Ray cluster has no CPU or GPU to run a worker on")
        actor = ray.remote(worker_class).options(max_restarts=MAX_RESTARTS, max_task_retries=0, **options)
        self.names = [f"worker {i + 1}" for i in range(count)]
        self.actors = [actor.remote(model, device, dtype, threads, name=name) for name in self.names]
        self.lost = [0] * count
        self.alive = set(range(count))
        try:
            self.info = ray.get([a.describe.remote() for a in self.actors])
        except Exception as e:
            self.close()
            cause = getattr(e, "cause", None) or e
            raise DispatchError(f"a Ray worker could not load {model!r}: {one_line(cause)}") from None
        identities = {i["model_identity"] for i in self.info}
        if len(identities) > 1:
            hosts = ", ".join(f"{i['host']}: {i['model_identity'][:12]}" for i in self.info)
            self.close()
            raise DispatchError(
                f"the workers loaded different weights for {model!r} ({hosts}); give every host the same"
            )
        kind = "GPU" if on_gpus else f"CPU ({threads} thread{'s' if threads > 1 else ''} each)"
        where = "a local Ray cluster (loopback)" if local else f"the Ray cluster at {address}"
        log(f"ray: {count} {kind} worker(s) on {where}: " + ", ".join(f"{i['host']} {i['device']}" for i in self.info))

    # ---- what the runners ask ----

    def workers_info(self) -> list[dict[str, Any]]:
        return list(self.info)

    def worker_pids(self) -> list[int]:
        """The process of each worker now (a restarted worker has a new one)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def batch_size(self, request: Any, images: int, forced: int | None = None) -> int:
        """The smallest of the live workers' sizes: any worker may take any batch (and retries move them)."""
        if forced is not None:
            return max(1, min(int(forced), max(1, images)))
        refs = [self.actors[i].batch_size.remote(request, images, None) for i in sorted(self.alive)]
        return max(1, min(self.ray.get(refs)))

    def run(
        self,
        batches: Iterable[Batch],
        *,
        prepare: Callable[[Batch], None] | None = None,
        progress: Progress | None = None,
        on_dispatch: Callable[[int, Batch], None] | None = None,
    ) -> Iterator[tuple[Batch, list[ImageResult]]]:
        """Yield each batch with its results as workers finish them (in any order). `prepare(batch)` runs
        before a batch first goes out (the driver creates its history rows); `on_dispatch(worker, batch)`
        after each hand-out."""
        ray = self.ray
        died = _actor_errors(ray)
        pending: deque[Batch] = deque(batches)
        inflight: dict[Any, tuple[Batch, int]] = {}
        probes: dict[Any, int] = {}  # a restarting worker's readiness probe -> the worker
        restarting: set[int] = set()
        load = dict.fromkeys(range(len(self.actors)), 0)
        try:
            while pending or inflight:
                while pending:
                    index = self._pick(pending[0], load, restarting)
                    if index is None:
                        break
                    batch = pending.popleft()
                    if prepare is not None and batch.attempts == 0:
                        prepare(batch)
                    batch.attempts += 1
                    inflight[self.actors[index].run.remote(batch)] = (batch, index)
                    load[index] += 1
                    if on_dispatch is not None:
                        on_dispatch(index, batch)
                if not inflight and not probes:
                    raise DispatchError(f"every Ray worker was lost ({len(pending)} batch(es) not done)")
                ready, _ = ray.wait(list(inflight) + list(probes), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    if ref in probes:  # a restarted worker answers again (or is still on its way)
                        index = probes.pop(ref)
                        try:
                            ray.get(ref)
                            restarting.discard(index)
                            self.log(f"ray: {self.names[index]} is back")
                        except died:
                            if index in self.alive:
                                time.sleep(WAIT_S)
                                probes[self.actors[index].pid.remote()] = index
                        continue
                    batch, index = inflight.pop(ref)
                    load[index] -= 1
                    name = self.names[index]
                    try:
                        results = ray.get(ref)
                    except died:
                        # The worker died holding the batch (or was restarting when it got it): Ray restarts it
                        # and reloads the model; the batch goes to another worker meanwhile.
                        if index in restarting:
                            batch.attempts -= 1  # never ran: handed to a worker that was not there yet
                        else:
                            self.lost[index] += 1
                            restarting.add(index)
                            if self.lost[index] > MAX_RESTARTS:
                                self.alive.discard(index)
                            else:
                                probes[self.actors[index].pid.remote()] = index
                            batch.failed_on.append(name)
                            if progress is not None:
                                progress.worker_lost(name)
                            self.log(f"ray: {name} died holding batch {batch.batch_id} ({len(batch)} images); retrying")
                        if batch.attempts >= MAX_ATTEMPTS:
                            results = self._failed(batch, f"its worker died {batch.attempts} times", name)
                        else:
                            pending.appendleft(batch)
                            continue
                    except ray.exceptions.RayTaskError as e:  # the worker's own code raised (not an image's failure)
                        results = self._failed(batch, one_line(getattr(e, "cause", None) or e), name)
                    if progress is not None:
                        progress.batch_finished(name, len(results), sum(r.status != "done" for r in results))
                    yield batch, results
        finally:
            for ref in inflight:
                try:
                    ray.cancel(ref)
                except Exception:  # best effort: the cluster may be going away too
                    pass

    def _pick(self, batch: Batch, load: dict[int, int], restarting: set[int]) -> int | None:
        """The least loaded live worker with room, preferring one the batch has not died on."""
        free = [i for i in sorted(self.alive - restarting) if load[i] < IN_FLIGHT]
        if not free:
            return None
        fresh = [i for i in free if self.names[i] not in batch.failed_on]
        return min(fresh or free, key=lambda i: load[i])

    @staticmethod
    def _failed(batch: Batch, error: str, worker: str) -> list[ImageResult]:
        return [
            ImageResult(item.key, item.run_id, "failed", item.request.to_dict(), error=error, worker=worker)
            for item in batch.items
        ]

    def model_info(self, worker: str = "") -> dict[str, Any]:
        """describe() of the named worker (the first one's when unknown): what its images are recorded with."""
        for name, info in zip(self.names, self.info, strict=True):
            if name == worker:
                return info
        return self.info[0]

    def close(self) -> None:
        """Stop the workers; a cluster started for this run stops with them."""
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.started_cluster and self.ray.is_initialized():
            self.ray.shutdown()
            self.started_cluster = False
