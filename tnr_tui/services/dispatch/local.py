"""The in-process dispatcher: one worker on the model the caller loaded, batch after batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tnr_tui.services.dispatch.progress import Progress
from tnr_tui.services.dispatch.work import Batch, ImageResult
from tnr_tui.services.dispatch.worker import BatchWorker


class LocalDispatcher:
    """Runs batches on one BatchWorker in this process (the caller's bundle; nothing is loaded twice)."""

    def __init__(self, bundle: Any, model: str = "embedded", *, name: str = "local") -> None:
        self.worker = BatchWorker(model, bundle=bundle, name=name)
        self.info = self.worker.describe()

    def workers_info(self) -> list[dict[str, Any]]:
        return [self.info]

    def model_info(self, worker: str = "") -> dict[str, Any]:
        """What this worker's images are recorded with (runs.execute's set_model)."""
        return self.info

    def batch_size(self, request: Any, images: int, forced: int | None = None) -> int:
        return self.worker.batch_size(request, images, forced)

    def run(
        self,
        batches: Iterable[Batch],
        *,
        prepare: Callable[[Batch], None] | None = None,
        progress: Progress | None = None,
    ) -> Iterator[tuple[Batch, list[ImageResult]]]:
        for batch in batches:
            if prepare is not None:
                prepare(batch)
            batch.attempts += 1
            results = self.worker.run(batch)
            if progress is not None:
                progress.batch_finished(self.worker.name, len(results), sum(r.status != "done" for r in results))
            yield batch, results

    def close(self) -> None:
        pass
