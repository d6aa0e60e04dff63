"""A worker: one loaded model on one device, sampling batches and returning images and numbers.

The same class runs in this process (`LocalDispatcher`) and as a long-lived Ray actor (`RayDispatcher`), where
it loads the model once in its own process and takes batch after batch. It never writes the history: the
driver does, from what `run` returns.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from tnr_tui.services.dispatch.work import Batch, ImageResult


class EncodingCache:
    """The bundle with its text encoding remembered: a study encodes the same prompts for every arm.

    Everything else is the bundle's own (attribute access passes through). An encoding depends only on the
    texts, their zero flags, the size (SDXL's time ids) and the text encoders' LoRAs, which the key holds, and
    the same call gives the same bits, so a remembered encoding is exactly the one a new call would give."""

    def __init__(self, bundle: Any, size: int = 512) -> None:
        self.__dict__["_bundle"] = bundle
        self.__dict__["_cache"] = {}
        self.__dict__["_size"] = size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._bundle, name, value)

    def encode(self, texts: list[str], height: int, width: int, zero_if_empty: list[bool] | None = None) -> Any:
        loras = tuple(
            (lora.get("sha256"), lora.get("weight")) for lora in getattr(self._bundle, "active_loras", None) or []
        )
        key = (tuple(texts), tuple(zero_if_empty or ()), height, width, loras)
        cache = self._cache
        if key not in cache:
            if len(cache) >= self._size:
                cache.pop(next(iter(cache)))
            cache[key] = self._bundle.encode(texts, height, width, zero_if_empty=zero_if_empty)
        return cache[key]


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class BatchWorker:
    """Loads `model` on `device` (or takes a loaded `bundle`) and samples batches with engine.sampler.sample_batch.

    A batch that fails as a whole (an image went non-finite, out of memory) is retried image by image, so each
    image ends as its unbatched run would: done, or failed with its own message.
    """

    def __init__(
        self,
        model: str = "embedded",
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        *,
        bundle: Any = None,
        name: str | None = None,
        keep_latents: bool = False,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        if bundle is None:
            from engine.models import load_bundle

            bundle = load_bundle(model, device=device, dtype=dtype)
        self.bundle = EncodingCache(bundle)
        self.model = model
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        from tnr_tui.services.checks import is_embedded

        self.embedded = is_embedded(model, self.bundle._bundle)
        self.keep_latents = keep_latents  # return each image's final latent too (generate --save-latent)
        self.batches = 0
        self.images = 0

    # ---- what the driver asks ----

    def describe(self) -> dict[str, Any]:
        """The model as the history records it (runs.execute's set_model), and where this worker runs."""
        from tnr_tui.services.runs import library_versions

        bundle = self.bundle
        return {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "model_path": str(bundle.path),
            "model_name": bundle.name,
            "model_identity": str(bundle.identity),
            "device": str(bundle.device),
            "dtype": str(bundle.dtype).removeprefix("torch."),
            "embedded": self.embedded,
            "versions": library_versions(),
        }

    def pid(self) -> int:
        return os.getpid()

    def batch_size(self, request: Any, images: int, forced: int | None = None) -> int:
        """How many images of this request one batch takes on this worker's device (engine.batch)."""
        from engine.batch import choose_batch_size

        return choose_batch_size(self.bundle, request, images, forced=forced)

    # ---- the work ----

    def run(self, batch: Batch, on_step: Any = None, should_stop: Any = None) -> list[ImageResult]:
        """The batch's images. `on_step(image, event)` and `should_stop()` as engine.sampler.sample_batch takes
        them (the TUI's previews and cancel button); SamplingCancelled goes through to the caller."""
        from engine.request import RequestError
        from engine.sampler import SamplingError, sample_batch

        started = time.perf_counter()
        requests = batch.requests
        try:
            results = sample_batch(self.bundle, requests, on_step=on_step, should_stop=should_stop)
        except (SamplingError, RequestError, RuntimeError, MemoryError) as e:
            if len(requests) == 1 or isinstance(e, RequestError):
                return [self._failed(item, e) for item in batch.items]
            return [self._alone(item) for item in batch.items]  # each image as its own run would end
        out = [self._done(item, result) for item, result in zip(batch.items, results, strict=True)]
        self.batches += 1
        self.images += len(out)
        for result in out:
            result.stats.setdefault("worker_seconds", (time.perf_counter() - started) / len(out))
        return out

    def _alone(self, item: Any) -> ImageResult:
        from engine.sampler import sample

        try:
            return self._done(item, sample(self.bundle, item.request))
        except Exception as e:  # the image's own failure: recorded as its run's
            return self._failed(item, e)

    def _failed(self, item: Any, error: BaseException) -> ImageResult:
        return ImageResult(
            item.key, item.run_id, "failed", item.request.to_dict(), error=one_line(error), worker=self.name
        )

    def _done(self, item: Any, result: Any) -> ImageResult:
        from engine.metrics import image_metrics
        from tnr_tui.services.checks import check_verdicts

        request = result.request or item.request
        stats = dict(result.stats)
        # The LoRAs the run used, as runs.execute records them (path, sha256, A1111 hash, weight).
        active = list(getattr(self.bundle, "active_loras", None) or [])
        if active:
            stats["loras"] = active
        metrics = image_metrics(result.image.convert("RGB"))
        verdicts = check_verdicts(result.image, request.prompt) if self.embedded else {}
        metrics.update({k: float(v) for k, v in verdicts.items() if v is not None})
        return ImageResult(
            item.key,
            item.run_id,
            "done",
            request.to_dict(),
            image=result.image,
            stats=stats,
            metrics=metrics,
            verdicts=verdicts,
            worker=self.name,
            telemetry=getattr(result, "telemetry", None),
            latent=result.latent if self.keep_latents else None,
        )
