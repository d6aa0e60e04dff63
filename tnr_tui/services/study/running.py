"""Sampling the arms: every image through the real engine path, measured (image metrics, the checker, CLIP)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.metrics import METRIC_NAMES, image_metrics
from engine.request import GenerationRequest
from tnr_tui.services.study.design import SHEET_SEEDS, Arm, StudyConfig, StudyError, prompt_for_seed
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


def arm_request(arm: Arm, seed: int, cfg: StudyConfig, embedded: bool) -> GenerationRequest:
    """The request of one image of the study: the arm's configuration (its units' parameters and --tnr
    included), the seed and the seed's prompt."""
    base = GenerationRequest(
        prompt=prompt_for_seed(seed, cfg, embedded),
        model=cfg.model,
        width=cfg.width,
        height=cfg.height,
        seed=seed,
        schedule=cfg.schedule,
        loras=cfg.loras,
        preview_every=0,
        decode_every=0,
        tags={"study": "1"},
    )
    return arm.request(base)


def from_worker(measured: Any, embedded: bool) -> dict[str, float] | None:
    """`measure`'s numbers from what a dispatch worker returned (image metrics, the checker's verdicts: the same
    functions on the same image), or None where it has not all of them."""
    if not measured:
        return None
    metrics, verdicts = measured
    values = {name: float(metrics[name]) for name in METRIC_NAMES if name in metrics}
    if len(values) != len(METRIC_NAMES):
        return None
    if embedded:
        names = {
            "accuracy": "check_all",
            "colour_ok": "check_colour",
            "background_ok": "check_background",
            "shape_ok": "check_shape",
        }
        if any(verdicts.get(v) is None for v in names.values()):
            return None
        values.update({name: float(verdicts[v]) for name, v in names.items()})
    return values


def run_arms(
    arms: Sequence[Arm],
    cfg: StudyConfig,
    sample_fn: SampleFn | None = None,
    *,
    embedded: bool,
    keep_images: Path | None = None,
    scorer: Any = None,
    log: Callable[[str], None] = print,
    dispatcher: Any = None,
    batch: int | None = None,
    seeds: Sequence[int] | None = None,
) -> dict[Arm, ArmResult]:
    """Sample every arm over every seed (`seeds`, default 1..cfg.samples): with `sample_fn` one image at a
    time, else on `dispatcher` (services.dispatch: an arm's seeds in batches, here or on Ray workers, results
    in any order).

    An arm's `seconds` is its images' sampling time (a batch's time shared by its images) plus measuring them."""
    seeds = list(seeds) if seeds is not None else list(range(1, cfg.samples + 1))
    results: dict[Arm, ArmResult] = {}
    total = len(arms) * len(seeds)
    started = time.perf_counter()
    done = 0
    per_arm: dict[int, dict[int, tuple[Any, dict[str, Any]]]] = {k: {} for k in range(len(arms))}
    measuring: dict[int, float] = dict.fromkeys(range(len(arms)), 0.0)
    sampling: dict[int, float] = dict.fromkeys(range(len(arms)), 0.0)

    def finish_arm(k: int) -> None:
        arm = arms[k]
        values: dict[str, list[float]] = {}
        evals: list[int] = []
        thumbs: dict[int, Any] = {}
        schedules: dict[str, None] = {}
        warnings: dict[str, None] = {}
        steps: dict[int, Any] = {}
        measure_started = time.perf_counter()
        for seed in seeds:
            image, stats = per_arm[k][seed]
            if _table(stats.get("telemetry")) is not None:
                steps[seed] = _table(stats["telemetry"])
            prompt = prompt_for_seed(seed, cfg, embedded)
            numbers = from_worker(stats.get("measured"), embedded)  # the worker measured it: not twice
            if numbers is None:
                numbers = measure(image, prompt, embedded, scorer)
            elif scorer is not None:  # in measure's order: metrics, CLIP score, the checker's verdicts
                metrics = {name: numbers.pop(name) for name in METRIC_NAMES}
                numbers = {**metrics, "clip_score": scorer.score(image, prompt), **numbers}
            for name, value in numbers.items():
                values.setdefault(name, []).append(value)
            evals.append(int(stats.get("model_evaluations", arm.planned_evaluations)))
            if stats.get("schedule"):
                schedules[str(stats["schedule"])] = None
            warnings.update(dict.fromkeys(str(w) for w in stats.get("warnings", ())))
            if seed <= SHEET_SEEDS:  # the study's own seeds only (the search's start at SEARCH_SEED)
                thumbs[seed] = thumbnail(image)  # small copies only: SDXL images would fill memory
            if keep_images is not None:
                folder = keep_images / arm.label.replace(" ", "_")
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"seed{seed:03d}.png")
        per_arm[k].clear()  # the images are measured: only the thumbnails stay
        seconds = sampling[k] + measuring[k] + time.perf_counter() - measure_started
        results[arm] = ArmResult(
            arm, seeds, values, round(float(np.mean(evals))), seconds, thumbs, list(schedules), list(warnings), steps
        )
        elapsed = time.perf_counter() - started
        log(
            f"  {arm.label:<24} {results[arm].evaluations:>3} evaluations  "
            f"{results[arm].seconds / len(seeds):.3f} s/image  [{done}/{total}, {elapsed:.0f} s, "
            f"about {elapsed / done * (total - done):.0f} s left]"
        )

    if sample_fn is not None:
        for k, arm in enumerate(arms):
            for seed in seeds:
                arm_start = time.perf_counter()
                image, stats = sample_fn(arm_request(arm, seed, cfg, embedded))
                sampling[k] += time.perf_counter() - arm_start
                per_arm[k][seed] = (image, stats)
                done += 1
            finish_arm(k)
        return {arm: results[arm] for arm in arms}

    from tnr_tui.services.dispatch import Progress, WorkItem, make_batches
    from tnr_tui.services.dispatch.progress import ProgressPrinter

    items = [
        WorkItem(f"{k}:{seed}", arm_request(arm, seed, cfg, embedded)) for k, arm in enumerate(arms) for seed in seeds
    ]
    batches = make_batches(items, lambda request, images: dispatcher.batch_size(request, images, batch))
    if len(batches) < len(items):
        sizes = ", ".join(str(n) for n in sorted({len(b) for b in batches}, reverse=True))
        log(f"  {len(items)} images in {len(batches)} batches (of {sizes})")
    progress = Progress(total=len(items))
    show = ProgressPrinter(log, interval=10.0)
    for _, returned in dispatcher.run(batches, progress=progress):
        for result in returned:
            if result.status != "done":  # a study needs every image: its numbers pair the arms by seed
                raise StudyError(
                    f"{arms[int(result.key.split(':')[0])].label}, seed {result.key.split(':')[1]}: {result.error}"
                )
            k, seed = (int(part) for part in result.key.split(":"))
            stats = {
                **result.stats,
                "telemetry": _table(result.telemetry),
                "measured": (result.metrics, result.verdicts),
            }
            per_arm[k][seed] = (result.image, stats)
            sampling[k] += float(result.stats.get("seconds", 0.0))
            done += 1
            if len(per_arm[k]) == len(seeds):
                finish_arm(k)
        show(progress)
    return {arm: results[arm] for arm in arms}


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
