"""The units of dispatched work: an image to make (`WorkItem`), a batch of them, and what a worker returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.batch import batch_key
from engine.request import GenerationRequest

# A batch whose worker died is retried on another worker this many times in all; then its images fail.
MAX_ATTEMPTS = 3


class DispatchError(RuntimeError):
    """The work cannot be dispatched (no worker left, Ray missing or unreachable); the message is for the user."""


@dataclass
class WorkItem:
    key: str  # the caller's name for the image (a sweep cell's key, a study arm and seed)
    request: GenerationRequest
    run_id: str | None = None  # its history row (the driver creates it just before the batch is handed out)


@dataclass
class Batch:
    """Images that can share one model call per stage (engine.batch.batch_key equal)."""

    batch_id: int
    items: list[WorkItem]
    attempts: int = 0  # times handed to a worker
    failed_on: list[str] = field(default_factory=list)  # workers that died holding it

    @property
    def requests(self) -> list[GenerationRequest]:
        return [item.request for item in self.items]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class ImageResult:
    """One image as a worker returns it: picklable, no tensors (Ray carries it between hosts)."""

    key: str
    run_id: str | None
    status: str  # "done" or "failed"
    request: dict[str, Any]  # the request as sampled (sizes resolved, LoRA hashes), or as given when it failed
    image: Any = None  # PIL.Image (done)
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # image metrics and the checker's verdicts (1.0/0.0)
    verdicts: dict[str, Any] = field(default_factory=dict)  # the checker's verdicts (embedded model), bools
    error: str = ""  # one line (failed)
    worker: str = ""  # which worker made it
    telemetry: Any = None  # the run's per-step table where the sampler kept one (engine.telemetry)
    latent: Any = None  # the final latent (CPU float32), where the worker keeps latents


def make_batches(
    items: Sequence[WorkItem], size_of: Callable[[GenerationRequest, int], int], start_id: int = 0
) -> list[Batch]:
    """Items grouped by batch key (in the order each key first appears, items in their own order), each group
    cut into batches of `size_of(first request of the group, images in the group)`."""
    groups: dict[str, list[WorkItem]] = {}
    for item in items:
        groups.setdefault(batch_key(item.request), []).append(item)
    batches: list[Batch] = []
    for group in groups.values():
        size = max(1, int(size_of(group[0].request, len(group))))
        for start in range(0, len(group), size):
            batches.append(Batch(start_id + len(batches), list(group[start : start + size])))
    return batches
