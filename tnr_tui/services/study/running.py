"""Sampling the arms: every image through the real engine path, measured (image metrics, the checker, CLIP)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.metrics import image_metrics
from engine.request import GenerationRequest
from tnr_tui.services.study.design import SHEET_SEEDS, Arm, StudyConfig, prompt_for_seed
from tnr_tui.services.sweep.sheets import thumbnail

# ---- running ------------------------------------------------------------------------------------------------

SampleFn = Callable[[GenerationRequest], tuple[Any, dict[str, Any]]]


@dataclass
class ArmResult:
    arm: Arm
    seeds: list[int]
    values: dict[str, list[float]]  # metric or check name -> one value per seed
    evaluations: int  # as counted by the sampler (the mean over seeds; all seeds spend the same)
    seconds: float
    thumbs: dict[int, Any] = field(default_factory=dict)  # seed -> small image, for the first SHEET_SEEDS
    schedules: list[str] = field(default_factory=list)  # the grid kinds its runs sampled (stats["schedule"])
    warnings: list[str] = field(default_factory=list)  # its runs' warnings, each once
    steps: dict[int, Any] = field(default_factory=dict)  # seed -> its per-step telemetry rows (StepTable)


def measure(image: Any, prompt: str, embedded: bool, scorer: Any = None) -> dict[str, float]:
    """Image metrics, the checker's verdicts (embedded model) and a CLIP score (with a local CLIP scorer)."""
    values = image_metrics(image)
    if scorer is not None:
        values["clip_score"] = scorer.score(image, prompt)
    if embedded:
        from engine.toy import check

        verdict = check(image, prompt)
        values.update(
            accuracy=float(verdict.all),
            colour_ok=float(verdict.shape_colour),
            background_ok=float(verdict.background),
            shape_ok=float(verdict.shape),
        )
    return values


def run_arms(
    arms: Sequence[Arm],
    cfg: StudyConfig,
    sample_fn: SampleFn,
    *,
    embedded: bool,
    keep_images: Path | None = None,
    scorer: Any = None,
    log: Callable[[str], None] = print,
) -> dict[Arm, ArmResult]:
    seeds = list(range(1, cfg.samples + 1))
    results: dict[Arm, ArmResult] = {}
    total = len(arms) * len(seeds)
    done = 0
    started = time.perf_counter()
    for arm in arms:
        values: dict[str, list[float]] = {}
        evals: list[int] = []
        thumbs: dict[int, Any] = {}
        schedules: dict[str, None] = {}
        warnings: dict[str, None] = {}
        steps: dict[int, Any] = {}
        arm_start = time.perf_counter()
        for seed in seeds:
            prompt = prompt_for_seed(seed, cfg, embedded)
            request = GenerationRequest(
                prompt=prompt,
                model=cfg.model,
                width=cfg.width,
                height=cfg.height,
                seed=seed,
                steps=arm.steps,
                solver=arm.solver,
                schedule=cfg.schedule,
                guidance=arm.guidance,
                scale=arm.scale,
                preview_every=0,
                decode_every=0,
                tags={"study": "1"},
            )
            image, stats = sample_fn(request)
            if _table(stats.get("telemetry")) is not None:
                steps[seed] = _table(stats["telemetry"])
            for name, value in measure(image, prompt, embedded, scorer).items():
                values.setdefault(name, []).append(value)
            evals.append(int(stats.get("model_evaluations", arm.planned_evaluations)))
            if stats.get("schedule"):
                schedules[str(stats["schedule"])] = None
            warnings.update(dict.fromkeys(str(w) for w in stats.get("warnings", ())))
            if seed <= SHEET_SEEDS:
                thumbs[seed] = thumbnail(image)  # small copies only: SDXL images would fill memory
            if keep_images is not None:
                folder = keep_images / arm.label.replace(" ", "_")
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"seed{seed:03d}.png")
            done += 1
        seconds = time.perf_counter() - arm_start
        results[arm] = ArmResult(
            arm, seeds, values, round(float(np.mean(evals))), seconds, thumbs, list(schedules), list(warnings), steps
        )
        elapsed = time.perf_counter() - started
        log(
            f"  {arm.label:<24} {results[arm].evaluations:>3} evaluations  "
            f"{results[arm].seconds / len(seeds):.3f} s/image  [{done}/{total}, {elapsed:.0f} s, "
            f"about {elapsed / done * (total - done):.0f} s left]"
        )
    return results


def _table(telemetry: Any) -> Any:
    """An image's StepTable from what a sampler or worker returns (a table, a list of one, or None)."""
    if isinstance(telemetry, list):
        return telemetry[0] if telemetry else None
    return telemetry


def engine_sampler(bundle: Any) -> SampleFn:
    """The real engine path: one loaded bundle, `engine.sampler.sample` per request."""
    from engine.sampler import sample

    def run(request: GenerationRequest) -> tuple[Any, dict[str, Any]]:
        result = sample(bundle, request)
        return result.image, {**result.stats, "telemetry": result.steps}

    return run
