"""Run a request and record it: the one place where sampling meets the history (docs/CONTRACTS.md).

UI-free: the CLI (`generate`, `history rerun`, `sweep`) and the TUI worker call `execute` with their own
`on_step` / `should_stop` callbacks. torch and the engine load inside `execute`, not at import.

The order keeps the history honest: the row is committed as `running` before the model loads; files are
written under temporary names and renamed; only then does one short transaction complete the row and point
it at the files. A crash at any point leaves a run that the next `open_store` marks `interrupted`.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnr_tui.services.history import store as store_module
from tnr_tui.services.history.errors import HistoryBusy, HistoryError, HistoryUnwritable
from tnr_tui.services.history.store import OutputFile, Store


class RunNotRecorded(HistoryError):
    """A run finished and its files exist, but the history could not record it (locked, full, read-only).

    The files are kept: `files` are the history's own copies, `copies` the user's `out`/`save_latent`.
    """

    def __init__(self, run_id: str, reason: HistoryError, files: list[Path], copies: list[Path]) -> None:
        kept = " and ".join(str(p) for p in copies + files)
        super().__init__(
            f"run {run_id} finished, but the history could not record it: {reason}. The image is kept at {kept}"
        )
        self.run_id = run_id
        self.reason = reason
        self.files = files
        self.copies = copies


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "done" or "cancelled" (failures raise)
    request: Any  # the GenerationRequest as sampled (sizes resolved) or as given when cancelled early
    image_path: Path | None = None
    latent_path: Path | None = None
    image: Any = None  # PIL.Image
    result: Any = None  # engine.sampler.Result
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] | None = None

    @property
    def seconds(self) -> float | None:
        return self.stats.get("seconds")

    @property
    def model_evaluations(self) -> int | None:
        return self.stats.get("model_evaluations")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    from tnr_tui import __version__

    versions = {"tnr-lab": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            versions["cuda"] = str(torch.version.cuda)
            versions["gpu"] = torch.cuda.get_device_name()
    except Exception:  # versions are informative; never fail a run over them
        pass
    return versions


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, KeyboardInterrupt):  # ctrl-c, or the CLI's SIGTERM (which names itself)
        return text[0] if text else "interrupted (SIGINT)"
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def save_latent_file(latent: Any, path: Path) -> None:
    """The final latent (model space) under the key `latent`, written atomically.

    The bytes are serialised in memory and written with plain `open`, so the file's mode follows the
    umask like the PNG's (safetensors' own `save_file` creates files 0600).
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            data = save({"latent": latent.detach().to("cpu").contiguous()})
        except Exception as e:  # safetensors reports its failures as its own SafetensorError
            raise OSError(
                errno.EIO, str(e).strip().splitlines()[0] if str(e).strip() else "I/O error", str(path)
            ) from e
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e  # name the file, not its temp
    finally:
        tmp.unlink(missing_ok=True)


def place_copy(source: Path, destination: Path) -> None:
    """Put a copy of `source` at `destination` (atomically).

    The history keeps its own file of every output; `--out` paths are the user's copies, so overwriting one
    later, even in place, never changes what the history recorded (a hard link would share the bytes).
    """
    destination = Path(destination)
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(destination)) from e  # name the user's path, not the temp
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _metrics(image: Any, prompt: str, model: str, bundle: Any) -> dict[str, float]:
    """Image metrics of every run, plus the checker's verdicts (1.0 right, 0.0 wrong) on the embedded model."""
    import numpy as np

    from engine.metrics import image_metrics
    from tnr_tui.services.checks import check_verdicts, is_embedded

    values = image_metrics(np.asarray(image.convert("RGB"), dtype=np.uint8))
    if is_embedded(model, bundle):
        values.update({k: float(v) for k, v in check_verdicts(image, prompt).items() if v is not None})
    return values


class FrameKeeper:
    """Collects a run's trajectory frames from its step events (GenerationRequest.keep_frames): the preview of
    every step (made here where the event has none) and the decoded image of every `decode_every` step."""

    def __init__(self, bundle: Any, on_step: Callable[[Any], None] | None) -> None:
        self.bundle = bundle
        self.on_step = on_step
        self.frames: dict[str, list[tuple[int, Any]]] = {"frames": [], "decoded_frames": []}

    def __call__(self, event: Any) -> None:
        preview = event.preview if event.preview is not None else self.bundle.preview(event.denoised)
        self.frames["frames"].append((event.index, preview))
        if event.image is not None:
            self.frames["decoded_frames"].append((event.index, event.image))
        if self.on_step is not None:
            self.on_step(event)

    def write(self, store: Store, run_id: str) -> tuple[list[Path], dict[str, list[int]]]:
        """The frames files (one APNG per kind that has frames) and the step of each frame, by kind."""
        from tnr_tui.services.history.frames import FRAME_SUFFIX, write_frames

        paths, steps = [], {}
        for kind, frames in self.frames.items():
            if frames:
                path = write_frames(
                    [im for _, im in frames], [i for i, _ in frames], store.new_output_path(run_id, FRAME_SUFFIX[kind])
                )
                paths.append(path)
                steps[kind] = [i for i, _ in frames]
        return paths, steps


def execute(
    request: Any,
    store: Store,
    *,
    bundle: Any = None,
    on_step: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    save_latent: Path | None = None,
    out: Path | None = None,
    origin: str = "cli",
    parent_id: str | None = None,
    run_id: str | None = None,
    on_model_loaded: Callable[[Any], None] | None = None,
) -> RunOutcome:
    """Sample `request` (a GenerationRequest) and record it in `store`.

    - `bundle`: a loaded ModelBundle to use; None loads `request.model` on `request.device`/`request.dtype`.
    - The PNG always goes to `<data dir>/outputs/<date>/<run id>.png` (the history's own file); `out` also
      gets a copy, so overwriting `out` later (even in place) loses nothing the history recorded.
    - `save_latent`: also write the final latent (safetensors, key `latent`), kept the same way.
    - `origin`: who ran it (`cli`, `tui`, `sweep`, `rerun`); `parent_id`: the run this one re-runs.
    - `run_id`: start a run already recorded as `queued` (the TUI's queue) instead of creating one.
    - `on_model_loaded(bundle)`: called once the model is loaded, before sampling (progress displays).
    - The run's per-step telemetry rows (`request.telemetry`) are recorded with it (`store.run_steps`); with
      `request.keep_frames` its frames too (`store.run_frames`: one APNG per kind beside the image).

    Returns the outcome (`done`, or `cancelled` when `should_stop` stopped it). Any other failure is
    recorded as `failed` with its message and then re-raised (ModelError, SamplingError, RequestError for a
    size the model refuses, OSError writing files ...); KeyboardInterrupt (and the CLI's SIGTERM, a
    subclass) is recorded as `cancelled`. A failed or cancelled run keeps no files in the history's folder.

    The history failing (HistoryBusy past its wait, HistoryUnwritable: full disk, read-only) is re-raised
    as is; at the final commit of a finished run, which waits `FINISH_WAIT_S`, it is `RunNotRecorded`,
    naming where the image is (kept).
    """
    if run_id is None:
        run_id = store.create_run(request, origin=origin, parent_id=parent_id)
    else:
        store.start_run(run_id)
    written: list[Path] = []  # the history's own files of this run, once they exist
    copies: list[Path] = []
    try:
        from engine.sampler import SamplingCancelled, sample

        if bundle is None:
            from engine.models import load_bundle

            bundle = load_bundle(request.model, device=request.device, dtype=request.dtype)
        store.set_model(
            run_id,
            model_path=str(bundle.path),
            model_name=bundle.name,
            model_identity=bundle.identity,
            device=str(bundle.device),
            dtype=str(bundle.dtype).removeprefix("torch."),
            versions=library_versions(),
        )
        if on_model_loaded is not None:
            on_model_loaded(bundle)
        keeper = FrameKeeper(bundle, on_step) if getattr(request, "keep_frames", False) else None
        try:
            result = sample(bundle, request, on_step=keeper or on_step, should_stop=should_stop)
        except SamplingCancelled:
            store.finish_run(run_id, "cancelled", error="cancelled")
            return RunOutcome(run_id, "cancelled", request)

        resolved = result.request or request
        resolved_dict = resolved.to_dict()
        from tnr_tui.services.history.png import png_info, write_png

        # The history's own files under its data dir; `out` / `save_latent` get the user's copies.
        stored_image = store.new_output_path(run_id, ".png")
        # The LoRAs the run used, as the sampler left them active: path, sha256, weight (with the stats) and
        # A1111's short hashes for the PNG's "Lora hashes" (engine.models.lora).
        active = list(getattr(bundle, "active_loras", None) or [])
        if active:
            result.stats["loras"] = active
        lora_hashes = {lora["name"]: lora["a1111_hash"] for lora in active}
        info = png_info(
            resolved_dict, model_name=bundle.name, model_hash=bundle.identity, run_id=run_id, lora_hashes=lora_hashes
        )
        write_png(result.image, stored_image, info)
        written.append(stored_image)
        outputs = [OutputFile.of("image", stored_image)]
        image_path = stored_image
        latent_path = None
        if out is not None:
            image_path = Path(out)
            place_copy(stored_image, image_path)
            copies.append(image_path)
        if save_latent is not None:
            stored_latent = store.new_output_path(run_id, ".safetensors")
            save_latent_file(result.latent, stored_latent)
            written.append(stored_latent)
            outputs.append(OutputFile.of("latent", stored_latent))
            latent_path = Path(save_latent)
            place_copy(stored_latent, latent_path)
            copies.append(latent_path)
        if keeper is not None:
            frame_paths, frame_steps = keeper.write(store, run_id)
            written.extend(frame_paths)
            outputs += [OutputFile.of(kind, path) for kind, path in zip(frame_steps, frame_paths, strict=True)]
            result.stats["frames"] = frame_steps
        metrics = _metrics(result.image, resolved.prompt, resolved.model, bundle)
        try:
            store.finish_run(
                run_id,
                "done",
                stats=result.stats,
                metrics=metrics,
                outputs=outputs,
                request=resolved_dict,
                wait_s=store_module.FINISH_WAIT_S,
                steps=getattr(result, "steps", None),
            )
        except HistoryError as e:
            raise RunNotRecorded(run_id, e, list(written), list(copies)) from None
    except BaseException as e:
        if isinstance(e, (RunNotRecorded, HistoryBusy, HistoryUnwritable)):
            raise  # the history is what fails: recording the failure would only wait for it again
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        try:
            # if_live: an interrupt that lands just after the final commit must not undo a `done` run.
            # An interrupt may have come while waiting for the lock: one slice, not another full wait.
            wait_s = 0.0 if status == "cancelled" else None
            changed = store.finish_run(run_id, status, error=_one_line(e), if_live=True, wait_s=wait_s)
        except Exception:
            changed = False  # the store itself failing: the original error is the one to report
        if changed:  # recorded failed/cancelled with no outputs: its files in the history's folder go too
            for path in written:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
        raise
    return RunOutcome(
        run_id,
        "done",
        resolved,
        image_path=image_path,
        latent_path=latent_path,
        image=result.image,
        result=result,
        stats=dict(result.stats),
        metrics=metrics,
    )
