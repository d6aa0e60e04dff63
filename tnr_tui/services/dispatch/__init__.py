"""Dispatching images to workers: batches of seeds on one device, and Ray workers across devices.

A sweep or a study hands this package its images as `WorkItem`s (a request each, and the history row it goes to).
`make_batches` groups the items that differ only in seed, prompts and tags (engine.batch) into batches of the
size a worker's memory holds (or `--batch N`). A dispatcher runs the batches on workers and hands each batch's
`ImageResult`s back to the caller, which records them (the driver writes the history: `recording`):

- `LocalDispatcher`: one `BatchWorker` in this process, on the model the caller loaded;
- `RayDispatcher` (`ray_driver`): one long-lived Ray actor per device (a GPU each, or CPU threads), each
  loading the model once; a batch whose worker dies is retried on another, up to `MAX_ATTEMPTS`.

Workers return images and numbers (stats, metrics, the checker's verdicts), never touch the history, and need
no shared filesystem. torch loads in the workers only; this package imports it lazily. Ray is optional
(`pip install -e .[ray]`).
"""

from __future__ import annotations

from tnr_tui.services.dispatch.local import LocalDispatcher
from tnr_tui.services.dispatch.progress import Progress
from tnr_tui.services.dispatch.work import Batch, DispatchError, ImageResult, WorkItem, make_batches

__all__ = ["Batch", "DispatchError", "ImageResult", "LocalDispatcher", "Progress", "WorkItem", "make_batches"]
