"""Runs with fixed telemetry rows and frames for the TUI's plot, trajectory, pair and gallery tests.

No model: the rows are closed-form numbers (so a snapshot is the same every time) and the frames are small
synthetic pictures whose colour encodes the step (so a test can tell which frame is shown).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from engine.request import GenerationRequest
from engine.telemetry import StepTable, table_of


def karras_sigmas(steps: int, sigma_min: float = 0.0292, sigma_max: float = 14.61, rho: float = 7.0) -> list[float]:
    """The step sigmas of a Karras grid (without the final 0)."""
    if steps == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + k / (steps - 1) * (lo - hi)) ** rho for k in range(steps)]


def fake_rows(steps: int, *, guidance: str = "cfg", tnr: bool = False, sigmas: list[float] | None = None) -> StepTable:
    """Telemetry rows of a made-up run: every column a smooth function of the step (deterministic)."""
    sigmas = sigmas or karras_sigmas(steps)
    rows = []
    for i, sigma in enumerate(sigmas):
        t = i / max(steps - 1, 1)
        norm_uncond = 128.0 * (1.0 - 0.4 * t)
        ratio = 0.012 + 0.03 * t * t + (0.004 if guidance == "tnr-cfg" else 0.0)
        rows.append(
            {
                "index": i,
                "sigma": sigma,
                "sigma_next": sigmas[i + 1] if i + 1 < len(sigmas) else 0.0,
                "timestep": 999.0 * (1 - t),
                "evaluations": 2 * (i + 1),
                "tnr_factor": (1.0 + 0.9 * t) if tnr else None,
                "norm_cond": norm_uncond * (1 + ratio),
                "norm_uncond": norm_uncond,
                "norm_diff": norm_uncond * ratio,
                "diff_ratio": ratio,
                "cos_diff_uncond": -0.2 + 0.5 * t,
                "norm_guided": norm_uncond * (1 + 4 * ratio),
                "norm_x": 128.0 * math.sqrt(sigma * sigma + 1),
                "std_x": math.sqrt(sigma * sigma + 1),
                "x0_change": None if i == 0 else 0.8 * math.exp(-4 * t) * (1.5 if tnr else 1.0),
            }
        )
    return table_of(rows)


def step_colour(step: int, hue: int = 0) -> tuple[int, int, int]:
    """The colour of a fake frame: red grows with the step, `hue` sets blue (to tell two runs apart)."""
    return (min(255, 10 * step), 60, hue)


def fake_frames(steps: int, size: int = 16, hue: int = 0) -> list[Image.Image]:
    frames = []
    for k in range(steps):
        image = Image.new("RGB", (size, size), step_colour(k, hue))
        image.paste((255, 255, 255), (0, 0, 1 + k % size, 2))  # not flat: a bar that grows with the step
        frames.append(image)
    return frames


def record_run(
    store: Any,
    *,
    steps: int = 12,
    guidance: str = "cfg",
    solver: str = "euler",
    seed: int = 7,
    prompt: str = "a red circle on a blue background",
    frames: bool = True,
    hue: int = 0,
    table: StepTable | None = None,
    image: bool = True,
    decode_every: int = 0,
    run_id: str | None = None,
    telemetry: bool = True,
) -> str:
    """A finished run with its rows (and its frames as the history keeps them); returns its id.

    `decode_every`: also decoded frames at every such step and the last (hue shifted by 100)."""
    from tnr_tui.services.history import OutputFile
    from tnr_tui.services.history.frames import FRAME_SUFFIX, write_frames

    request = GenerationRequest(prompt=prompt, steps=steps, guidance=guidance, solver=solver, seed=seed)
    run_id = store.create_run(request, run_id=run_id) if run_id else store.create_run(request)
    outputs = []
    stats: dict[str, Any] = {"seconds": 0.5, "model_evaluations": 2 * steps}
    if image:
        path = store.new_output_path(run_id, ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), step_colour(steps, hue)).save(path)
        outputs.append(OutputFile.of("image", path))
    if frames:
        path = write_frames(
            fake_frames(steps, hue=hue), list(range(steps)), store.new_output_path(run_id, FRAME_SUFFIX["frames"])
        )
        outputs.append(OutputFile.of("frames", path))
        stats["frames"] = {"frames": list(range(steps))}
        if decode_every:
            decoded = [k for k in range(steps) if (k + 1) % decode_every == 0 or k == steps - 1]
            images = [fake_frames(steps, size=32, hue=hue + 100)[k] for k in decoded]
            path = write_frames(images, decoded, store.new_output_path(run_id, FRAME_SUFFIX["decoded_frames"]))
            outputs.append(OutputFile.of("decoded_frames", path))
            stats["frames"]["decoded_frames"] = decoded
    rows = table if table is not None else fake_rows(steps, guidance=guidance, tnr=guidance == "tnr-cfg")
    if not telemetry:
        rows = None
    store.finish_run(run_id, "done", stats=stats, outputs=outputs, steps=rows)
    return run_id


@dataclass
class FakeEvent:
    index: int
    steps: int
    sigma: float
    sigma_next: float
    tnr_factor: float | None
    evaluations: int
    elapsed: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    preview: Any = None
    image: Any = None
    denoised: Any = None


@dataclass
class FakeOutcome:
    run_id: str
    status: str
    request: Any
    image: Any = None
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def fake_run_fn(step_seconds: float = 0.0, gate: Callable[[int], None] | None = None) -> Callable[..., Any]:
    """A run function for TnrLabApp(run_fn=...): emits the fake rows step by step, records a done run.

    `gate(i)` is called before step i is emitted (a test can hold the run at a step)."""

    def run(
        request: GenerationRequest,
        store: Any,
        *,
        on_step: Any = None,
        should_stop: Any = None,
        run_id: Any = None,
        **_: Any,
    ) -> Any:
        store.start_run(run_id)
        table = fake_rows(request.steps, guidance=request.guidance, tnr=request.guidance == "tnr-cfg" or request.tnr)
        sigmas = [r["sigma"] for r in table.as_dicts()]
        start = time.perf_counter()
        for i, row in enumerate(table.as_dicts()):
            if gate is not None:
                gate(i)
            if should_stop is not None and should_stop():
                store.finish_run(run_id, "cancelled", error="cancelled")
                return FakeOutcome(run_id, "cancelled", request)
            if step_seconds:
                time.sleep(step_seconds)
            on_step(
                FakeEvent(
                    i,
                    request.steps,
                    sigmas[i],
                    row["sigma_next"],
                    row["tnr_factor"],
                    row["evaluations"],
                    time.perf_counter() - start,
                    rows=[row],
                    preview=fake_frames(i + 1)[-1],
                )
            )
        store.finish_run(run_id, "done", stats={"seconds": 0.1, "model_evaluations": 2 * request.steps}, steps=table)
        return FakeOutcome(run_id, "done", request, stats={"seconds": 0.1, "model_evaluations": 2 * request.steps})

    return run


def stored_run_path(store: Any, run_id: str, kind: str) -> Path:
    return store.resolve(store.get_run(run_id).output(kind).path)
