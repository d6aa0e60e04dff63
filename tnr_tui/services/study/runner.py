"""The study as one command: sample every arm, write the numbers (study.json, study.md) first, then the pictures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnr_tui.services.study.design import (
    SHEET_SEEDS,
    Arm,
    StudyConfig,
    StudyError,
    best_settings,
    guidance_rows,
    prompt_for_seed,
    reported_arms,
    resolve_pag_layers,
    sampler_arm,
    search_arms,
    search_seeds,
    section_of,
    single_arms,
)
from tnr_tui.services.study.plots import (
    plot_accuracy_vs_evaluations,
    plot_guidance,
    plot_metrics_vs_scale,
    plot_samplers,
)
from tnr_tui.services.study.running import ArmResult, SampleFn, run_arms
from tnr_tui.services.study.statistics import bootstrap_indices
from tnr_tui.services.study.tables import _write_text, write_markdown
from tnr_tui.services.study.trajectory import has_rows, steps_lines
from tnr_tui.services.study.trajectory import summary as difference_term
from tnr_tui.services.study.trajectory_plot import plot as plot_difference_term
from tnr_tui.services.sweep.sheets import draw_sheet
from tnr_tui.services.sweep.spec import matched_steps, reference_budget

# ---- the study ----------------------------------------------------------------------------------------------


@dataclass
class StudyReport:
    markdown: Path
    plots: list[Path]
    seconds: float
    images: int
    json: Path | None = None
    warnings: list[str] = field(default_factory=list)  # plots that could not be drawn
    run_warnings: list[str] = field(default_factory=list)  # what the runs warned (a grid that started low), once
    times: dict[str, float] = field(default_factory=dict)  # seconds: the scale search, the arms, each section


def _arm_json(r: ArmResult) -> dict[str, Any]:
    return {
        **r.arm.__dict__,
        "label": r.arm.label,
        "evaluations": r.evaluations,
        "seconds": r.seconds,
        "schedules": r.schedules,
        "warnings": r.warnings,
        **r.values,
    }


def run_study(
    cfg: StudyConfig,
    out_dir: Path,
    *,
    bundle: Any = None,
    sample_fn: SampleFn | None = None,
    model_description: str = "",
    keep_images: bool = False,
    clip_model: Path | None = None,
    command: str | None = None,
    started: float | None = None,
    log: Callable[[str], None] = print,
    batch: int | None = None,
    dispatcher: Any = None,
) -> StudyReport:
    """Sample every arm, then write study.json and study.md (the numbers), then the plots and the contact sheet
    into `out_dir`. A plot that fails is a warning (in the report, the log and study.md), never a lost study.

    `started`: a `time.perf_counter()` taken before the model was loaded, so the reported time covers it.
    Without `sample_fn`, an arm's seeds are sampled in batches (`batch` images each; None: as many as the
    device's memory holds) on `dispatcher` (Ray workers) or here on `bundle`."""
    started = time.perf_counter() if started is None else started
    out_dir.mkdir(parents=True, exist_ok=True)
    own = None
    if sample_fn is None and dispatcher is None:
        if bundle is None:
            from engine.models import load_bundle

            bundle = load_bundle(cfg.model)
        from tnr_tui.services.dispatch import LocalDispatcher

        dispatcher = own = LocalDispatcher(bundle, cfg.model)
    from tnr_tui.services.checks import is_embedded

    if dispatcher is not None and bundle is None:
        info = dispatcher.workers_info()[0]
        embedded = bool(info["embedded"])
        model_description = (
            model_description or f"{info['model_name']} (identity {info['model_identity']}, {info['model_path']})"
        )
    else:
        embedded = is_embedded(cfg.model, bundle)
    if not model_description and bundle is not None:
        model_description = f"{bundle.name} (identity {bundle.identity}, {bundle.path})"
    cfg = resolve_pag_layers(cfg, embedded)
    if cfg.loras:  # every arm samples with them: study.md's header says so once, beside the model
        model_description = f"{model_description or cfg.model}; LoRAs: {lora_description(cfg.loras)}"
    scorer = None
    if clip_model is not None:
        from engine.metrics import ClipScorer, MetricsError

        try:
            scorer = ClipScorer(clip_model)
        except MetricsError as e:
            raise StudyError(str(e)) from None
    common = dict(
        embedded=embedded,
        keep_images=out_dir / "images" if keep_images else None,
        scorer=scorer,
        log=log,
        dispatcher=dispatcher,
        batch=batch,
    )
    times: dict[str, float] = {}
    search: dict[Arm, ArmResult] = {}
    try:
        if cfg.searches:  # the samplers and guidance sections take each method's setting from other seeds
            candidates = list(dict.fromkeys(a for arms in search_arms(cfg).values() for a in arms))
            seeds = search_seeds(cfg)
            log(
                f"study: scale search, {len(candidates)} settings x {len(seeds)} seeds "
                f"{seeds[0]}..{seeds[-1]} = {len(candidates) * len(seeds)} images"
            )
            phase = time.perf_counter()
            search = run_arms(candidates, cfg, sample_fn, seeds=seeds, **common)
            times["scale search"] = time.perf_counter() - phase
            for r in search.values():
                r.steps = {}  # the search's numbers are means; its rows would only fill memory
        best = best_settings(cfg, search, embedded)
        if search:
            log("study: best settings (search seeds): " + ", ".join(a.label for a in best.values()))
        arms = reported_arms(cfg, best)
        log(
            f"study: {len(arms)} arms x {cfg.samples} seeds = {len(arms) * cfg.samples} images "
            f"(sections: {', '.join(cfg.sections)})"
        )
        phase = time.perf_counter()
        results = run_arms(arms, cfg, sample_fn, **common)
        times["arms"] = time.perf_counter() - phase
    finally:
        if own is not None:
            own.close()
    for section in cfg.sections:  # an arm two sections share counts in both
        times[section] = sum(r.seconds for a, r in results.items() if section in section_of(a, cfg, best))
    seconds = time.perf_counter() - started
    indices = bootstrap_indices(cfg.samples)
    data = {
        "config": {**cfg.__dict__, "scales": {k: list(v) for k, v in cfg.scales.items()}},
        "seconds": seconds,
        "section_seconds": times,
        "search": {
            "seeds": search_seeds(cfg) if search else [],
            "arms": [_arm_json(r) for r in search.values()],
            "best": {m: a.label for m, a in best.items()},
        },
        "roles": {"guidance": [[role, arm.label] for role, arm in guidance_rows(cfg, best)]},
        "arms": [_arm_json(r) for r in results.values()],
    }
    if has_rows(results):  # the notebook's difference term, measured (trajectory.py); every image's rows kept
        if cfg.has("claims"):
            data["difference_term"] = difference_term(cfg, results, indices)
        lines = "".join(json.dumps(record) + "\n" for record in steps_lines(results))
        _write_text(out_dir / "steps.jsonl", lines)
    json_path = _write_text(out_dir / "study.json", json.dumps(data, indent=1) + "\n")
    command = command or f"tnr-lab study --samples {cfg.samples} --steps {cfg.steps} --out {out_dir}"

    def markdown(plots: list[Path], failed: list[str]) -> Path:
        return write_markdown(
            cfg,
            results,
            indices,
            out_dir / "study.md",
            seconds,
            model_description,
            embedded,
            plots,
            command,
            failed,
            search=search,
            best=best,
            times=times,
        )

    md = markdown([], [])  # the tables, before anything that draws
    plots: list[Path] = []
    failed: list[str] = []
    drawings: list[tuple[str, Callable[[Path], Path]]] = []
    if cfg.has("claims"):
        drawings.append(
            ("metrics-vs-scale.png", lambda path: plot_metrics_vs_scale(cfg, results, indices, path, embedded))
        )
    if cfg.has("solvers"):
        drawings.append(
            (
                "solvers-vs-evaluations.png",
                lambda path: plot_accuracy_vs_evaluations(cfg, results, indices, path, embedded),
            )
        )
    if cfg.has("samplers"):
        drawings.append(("samplers.png", lambda path: plot_samplers(cfg, results, best, indices, path, embedded)))
    if cfg.has("guidance") and guidance_rows(cfg, best):
        drawings.append(("guidance.png", lambda path: plot_guidance(cfg, results, best, indices, path, embedded)))
    drawings.append(("contact-sheet.png", lambda path: study_sheet(cfg, results, path, embedded, best)))
    if has_rows(results) and "difference_term" in data and data["difference_term"]["reference_scale"] is not None:
        drawings.append(("difference-term.png", lambda path: plot_difference_term(cfg, results, indices, path)))
    for name, draw in drawings:
        try:
            plots.append(draw(out_dir / name))
        except Exception as e:  # a plot is a picture of numbers already written: losing it must not lose them
            failed.append(f"{name} was not drawn: {type(e).__name__}: {e}")
            log(f"warning: {failed[-1]}")
    if plots or failed:
        md = markdown(plots, failed)
    run_warnings = list(dict.fromkeys(w for r in results.values() for w in r.warnings))
    images = len(arms) * cfg.samples + len(search) * (cfg.search_samples if search else 0)
    return StudyReport(md, plots, seconds, images, json_path, failed, run_warnings, times)


def lora_description(loras: tuple[tuple[str, float], ...]) -> str:
    """'style.safetensors weight 0.5 (sha256 0123456789ab), ...': each LoRA as study.md's header names it (the
    sha256 prefix of the file as it is now; the history's runs record the whole hash)."""
    from engine.loras import file_hashes, resolve_lora_path

    parts = []
    for path, weight in loras:
        try:
            sha = f" (sha256 {file_hashes(resolve_lora_path(path))[0][:12]})"
        except OSError:
            sha = ""
        parts.append(f"{path} weight {weight:g}{sha}")
    return ", ".join(parts)


def study_sheet(
    cfg: StudyConfig, results: dict[Arm, ArmResult], path: Path, embedded: bool, best: dict[str, Arm] | None = None
) -> Path:
    """The first seeds of the arms the claims are about: none/tnr, each method at its best scale, the solvers
    at the smallest budget with and without TNR, the guidance section's methods and dpmpp_2m's arms."""
    from tnr_tui.services.study.tables import best_scale

    best = best or {}
    rows: list[ArmResult] = []

    def add(arm: Arm | None) -> None:
        if arm is not None and arm in results and results[arm] not in rows:
            rows.append(results[arm])

    if cfg.has("claims"):
        for arm in single_arms(cfg):
            add(arm)
        for m in ("cfg", "cfg++", "tnr-cfg"):
            r = best_scale(results, m, cfg, embedded)
            add(None if r is None else r.arm)
    if cfg.has("solvers"):
        budget = reference_budget(min(cfg.budgets))
        for guidance in ("none", "tnr"):
            for solver in cfg.solvers:
                add(Arm(guidance, None, solver, matched_steps(solver, guidance, budget)))
    for _, arm in guidance_rows(cfg, best):
        add(arm)
    if cfg.has("samplers"):
        solver = "dpmpp_2m" if "dpmpp_2m" in cfg.samplers else cfg.samplers[0]
        for method in cfg.sampler_methods:
            add(sampler_arm(cfg, method, solver, best))
    if not rows:
        raise ValueError("no arms to show")
    labels = [f"{r.arm.label} {r.evaluations}ev" for r in rows]
    seeds = list(range(1, min(cfg.samples, SHEET_SEEDS) + 1))
    images = {(label, seed): r.thumbs.get(seed) for label, r in zip(labels, rows, strict=True) for seed in seeds}
    headers = {}
    for seed in seeds:
        prompt = prompt_for_seed(seed, cfg, embedded)
        if embedded:  # "a red circle on a white background" -> "1: red circle\non white"
            words = prompt.split()
            headers[seed] = f"{seed}: {words[1]} {words[2]}\non {words[5]}"
        else:
            headers[seed] = f"{seed}: {prompt[:16]}\n{prompt[16:32]}"
    title = f"seeds 1..{len(seeds)}, one prompt per column; best scales by " + (
        "accuracy" if embedded else "colourfulness"
    )
    draw_sheet(title, labels, seeds, images, path, column_headers=headers)
    return path
