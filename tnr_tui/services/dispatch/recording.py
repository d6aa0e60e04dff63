"""The driver records what workers return: each image becomes an ordinary history run (docs/history.md).

As `runs.execute` does for one image in-process, in the same order: the row exists (`running`) before the work
is handed out; the PNG (A1111 text chunks included) is written under a temporary name and renamed; then one
short transaction completes the row and points it at the file. A batch retried on another worker keeps its
rows, so a cell lost with its worker is recorded once, when it is done. Rows still live when the driver stops
(interrupted, or the work failed as a whole) are closed as cancelled, and the next run of the same command
does those cells again.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnr_tui.services.dispatch.work import Batch, ImageResult


@dataclass
class RecordedImage:
    run_id: str
    status: str
    image_path: Path | None
    result: ImageResult
    latent_path: Path | None = None


def create_rows(store: Any, batch: Batch, origin: str) -> None:
    """A `running` history row for every image of the batch that has none yet (a retried batch keeps its own)."""
    for item in batch.items:
        if item.run_id is None:
            item.run_id = store.create_run(item.request, origin=origin)


def _accepts_steps(store: Any) -> bool:
    """Whether this store keeps per-step telemetry rows (`finish_run(steps=...)`, issue 15)."""
    try:
        return "steps" in inspect.signature(store.finish_run).parameters
    except (TypeError, ValueError):
        return False


def record(store: Any, result: ImageResult, model: dict[str, Any]) -> RecordedImage:
    """Write one returned image into its row: done (PNG + numbers) or failed (its one-line error)."""
    from tnr_tui.services.history import store as store_module
    from tnr_tui.services.history.errors import HistoryError
    from tnr_tui.services.history.png import png_info, write_png
    from tnr_tui.services.history.store import OutputFile
    from tnr_tui.services.runs import RunNotRecorded

    run_id = result.run_id
    assert run_id is not None, "create_rows gives every image its row before the batch goes out"
    store.set_model(
        run_id,
        model_path=model.get("model_path"),
        model_name=model.get("model_name"),
        model_identity=model.get("model_identity"),
        device=model.get("device"),
        dtype=model.get("dtype"),
        versions=model.get("versions"),
    )
    if result.status != "done":
        store.finish_run(run_id, "failed", error=result.error or "failed", if_live=True)
        return RecordedImage(run_id, "failed", None, result)
    path = store.new_output_path(run_id, ".png")
    loras = result.stats.get("loras") or []
    info = png_info(
        result.request,
        model_name=model.get("model_name", ""),
        model_hash=model.get("model_identity", ""),
        run_id=run_id,
        lora_hashes={lora["name"]: lora["a1111_hash"] for lora in loras if "name" in lora},
    )
    write_png(result.image, path, info)
    outputs = [OutputFile.of("image", path)]
    latent_path = None
    if result.latent is not None:  # generate --save-latent: the history keeps its own copy, as execute does
        from tnr_tui.services.runs import save_latent_file

        latent_path = store.new_output_path(run_id, ".safetensors")
        save_latent_file(result.latent, latent_path)
        outputs.append(OutputFile.of("latent", latent_path))
    extra: dict[str, Any] = {}
    table = result.telemetry[0] if isinstance(result.telemetry, list) and result.telemetry else None
    if table is not None and _accepts_steps(store):
        extra["steps"] = table
    try:
        store.finish_run(
            run_id,
            "done",
            stats=result.stats,
            metrics=result.metrics,
            outputs=outputs,
            request=result.request,
            wait_s=store_module.FINISH_WAIT_S,
            **extra,
        )
    except HistoryError as e:
        raise RunNotRecorded(run_id, e, [p for p in (path, latent_path) if p is not None], []) from None
    return RecordedImage(run_id, "done", path, result, latent_path)


def cancel_rows(store: Any, batches: Iterable[Batch], reason: str) -> None:
    """Close the rows of batches handed out but not recorded (the driver stopped): cancelled, if still live."""
    for batch in batches:
        for item in batch.items:
            if item.run_id is None:
                continue
            try:
                store.finish_run(item.run_id, "cancelled", error=reason, if_live=True, wait_s=0.0)
            except Exception:  # the store failing too: the next open marks the row interrupted
                pass
