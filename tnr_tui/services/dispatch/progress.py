"""Progress of dispatched work: images done of the total, images per second, overall and per worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class WorkerCount:
    images: int = 0
    failed: int = 0
    lost: int = 0  # batches it died holding
    first: float | None = None  # when it finished its first batch
    last: float | None = None
    batch_images: int = 0  # images of the batches since `first` (its rate's numerator)


@dataclass
class Progress:
    """Counts as batches come back; `line()` is what the terminal shows."""

    total: int
    done: int = 0
    failed: int = 0
    retried: int = 0  # batches handed out again after their worker died
    started: float = field(default_factory=time.perf_counter)
    workers: dict[str, WorkerCount] = field(default_factory=dict)

    def batch_finished(self, worker: str, images: int, failed: int = 0) -> None:
        now = time.perf_counter()
        count = self.workers.setdefault(worker, WorkerCount())
        count.images += images - failed
        count.failed += failed
        if count.first is None:
            count.first = now
        else:
            count.batch_images += images
        count.last = now
        self.done += images - failed
        self.failed += failed

    def worker_lost(self, worker: str) -> None:
        self.workers.setdefault(worker, WorkerCount()).lost += 1
        self.retried += 1

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        """Images per second since the work began (loading the workers included)."""
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    @staticmethod
    def worker_rate(count: WorkerCount) -> float | None:
        """A worker's images per second between its first and last batch (its own pace, without the load)."""
        if count.first is None or count.last is None or count.last <= count.first:
            return None
        return count.batch_images / (count.last - count.first)

    def line(self) -> str:
        finished = self.done + self.failed
        left = (self.total - finished) / self.rate if self.rate > 0 else float("nan")
        text = f"[{finished}/{self.total}] {self.rate:.2f} images/s, {self.elapsed:.0f} s"
        if finished < self.total and left == left:
            text += f", about {left:.0f} s left"
        if self.failed:
            text += f", {self.failed} failed"
        if self.retried:
            text += f", {self.retried} batch(es) retried"
        if len(self.workers) > 1 or any(c.lost for c in self.workers.values()):
            parts = []
            for name, count in self.workers.items():
                rate = self.worker_rate(count)
                pace = f" {rate:.2f}/s" if rate is not None else ""
                lost = f" lost {count.lost}" if count.lost else ""
                parts.append(f"{name}: {count.images}{pace}{lost}")
            text += " | " + "; ".join(parts)
        return text


class ProgressPrinter:
    """Prints `Progress.line()` after each batch, at most every `interval` seconds (and always at the end)."""

    def __init__(self, log: Callable[[str], None], interval: float = 2.0) -> None:
        self.log = log
        self.interval = interval
        self.last = 0.0

    def __call__(self, progress: Progress, force: bool = False) -> None:
        now = time.perf_counter()
        finished = progress.done + progress.failed >= progress.total
        if force or finished or now - self.last >= self.interval:
            self.last = now
            self.log(progress.line())
