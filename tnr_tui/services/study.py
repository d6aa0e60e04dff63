"""The study: do the seed notebook's claims about True Noise Removal hold on a model we can measure?

Claims under test (the seed's words, turned into measurements):
- TNR resolves the washed-out look of single-prediction sampling: none vs tnr, on colourfulness, saturation,
  contrast and dynamic range (engine.metrics);
- TNR mildly improves prompt coherence: none vs tnr on the checker's accuracy (embedded model only);
- TNR-CFG competes with CFG++: cfg, cfg++ and tnr-cfg over a scale range, each at its best scale;
- TNR steadies RK4: euler, heun and rk4 at equal model evaluations, with and without TNR.

Every arm samples the same seeds, and on the embedded model seed s always gets the same prompt (a fixed
shuffle of the toy grammar's scenes), so arms are compared pairwise. Confidence intervals are 95 % percentile
bootstrap intervals over seeds (the same resampled seed sets for every arm, so differences are paired).

Study images go through the real engine path (`load_bundle` once, then `engine.sampler.sample` per image) but
are not recorded in the history: a study makes hundreds of images, and the PNG + database writes would cost
time and bury the user's own runs. The PNG of every image is kept under DIR/images only with `--keep-images`.

Plots are drawn with PIL (no matplotlib): the lab already depends on Pillow, the plots are simple lines with
error bars, and a GPU host running the same command should not need a plotting stack.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.metrics import METRIC_NAMES, image_metrics
from engine.request import EMBEDDED_MODEL, GenerationRequest
from tnr_tui.services.sweep import draw_sheet, evaluations, matched_steps, reference_budget, thumbnail

CHECK_NAMES: tuple[str, ...] = ("accuracy", "colour_ok", "background_ok", "shape_ok")
BOOTSTRAP_RESAMPLES = 2000
SHEET_SEEDS = 8  # columns of the study's contact sheet
# Prompts for models without a checker (SDXL on a GPU host): varied subjects, colours and textures.
GENERAL_PROMPTS: tuple[str, ...] = (
    "a red vintage car parked on a cobblestone street",
    "a bowl of fruit on a wooden table, still life",
    "a lighthouse on a cliff at sunset",
    "portrait of an old fisherman, dramatic lighting",
    "a blue hummingbird next to a pink flower",
    "a snowy mountain village at night",
)


class StudyError(ValueError):
    """Bad study arguments; the message is meant for the user."""


@dataclass(frozen=True)
class StudyConfig:
    samples: int = 32
    steps: int = 20
    scales: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "cfg": (1.5, 3.0, 5.0, 7.5),
            "cfg++": (0.2, 0.4, 0.6, 0.8, 1.0),
            "tnr-cfg": (1.5, 3.0, 5.0, 7.5),
        }
    )
    # Evaluation budgets (in Euler-with-one-prediction steps) of the solver comparison.
    budgets: tuple[int, ...] = (5, 10, 20)
    solvers: tuple[str, ...] = ("euler", "heun", "rk4")
    model: str = EMBEDDED_MODEL
    prompts: tuple[str, ...] = ()  # for models without a checker; empty: GENERAL_PROMPTS
    width: int | None = None
    height: int | None = None
    # "default": the spacing the model's scheduler config names, or trailing where that grid starts low (SDXL's
    # leading at 1-5 steps, MATH.md 7), so arms of different step counts may sample different kinds: study.md
    # and study.json say which. "trailing" gives every arm the same kind.
    schedule: str = "default"

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise StudyError(f"samples must be at least 2 (a confidence interval needs spread), got {self.samples}")
        if self.steps < 1:
            raise StudyError(f"steps must be at least 1, got {self.steps}")
        if not self.budgets or min(self.budgets) < 1:
            raise StudyError("budgets must be whole numbers of at least 1")


@dataclass(frozen=True)
class Arm:
    """One configuration sampled over all seeds."""

    guidance: str
    scale: float | None
    solver: str
    steps: int

    @property
    def label(self) -> str:
        scale = "" if self.scale is None else f" {self.scale:g}"
        return f"{self.guidance}{scale} {self.solver} {self.steps}st"

    @property
    def evaluations(self) -> int:
        return evaluations(self.solver, self.guidance, self.steps)


def single_arms(cfg: StudyConfig) -> list[Arm]:
    return [Arm("none", None, "euler", cfg.steps), Arm("tnr", None, "euler", cfg.steps)]


def two_prediction_arms(cfg: StudyConfig) -> list[Arm]:
    return [Arm(m, s, "euler", cfg.steps) for m in ("cfg", "cfg++", "tnr-cfg") for s in cfg.scales.get(m, ())]


def solver_arms(cfg: StudyConfig) -> list[Arm]:
    arms = []
    for budget in cfg.budgets:
        for guidance in ("none", "tnr"):
            for solver in cfg.solvers:
                arms.append(Arm(guidance, None, solver, matched_steps(solver, guidance, reference_budget(budget))))
    return arms


def all_arms(cfg: StudyConfig) -> list[Arm]:
    return list(dict.fromkeys(single_arms(cfg) + two_prediction_arms(cfg) + solver_arms(cfg)))


def study_evaluations(cfg: StudyConfig) -> int:
    """Model evaluations the whole study spends (for the time estimate)."""
    return cfg.samples * sum(a.evaluations for a in all_arms(cfg))


def prompt_for_seed(seed: int, cfg: StudyConfig, embedded: bool) -> str:
    """Seed s always gets the same prompt: on the embedded model a fixed shuffle of every toy scene."""
    if embedded:
        from engine.toy import all_scenes

        scenes = all_scenes()
        order = np.random.default_rng(2026).permutation(len(scenes))
        return scenes[int(order[(seed - 1) % len(scenes)])].prompt
    prompts = cfg.prompts or GENERAL_PROMPTS
    return prompts[(seed - 1) % len(prompts)]


# ---- statistics ---------------------------------------------------------------------------------------------


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Resampled seed indices [resamples, n], shared by every arm so that differences are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def mean_ci(values: Sequence[float], indices: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % percentile bootstrap interval of `values` (one per seed)."""
    v = np.asarray(values, dtype=np.float64)
    means = v[indices].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


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
            for name, value in measure(image, prompt, embedded, scorer).items():
                values.setdefault(name, []).append(value)
            evals.append(int(stats.get("model_evaluations", arm.evaluations)))
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
            arm, seeds, values, round(float(np.mean(evals))), seconds, thumbs, list(schedules), list(warnings)
        )
        elapsed = time.perf_counter() - started
        log(
            f"  {arm.label:<24} {results[arm].evaluations:>3} evaluations  "
            f"{results[arm].seconds / len(seeds):.3f} s/image  [{done}/{total}, {elapsed:.0f} s, "
            f"about {elapsed / done * (total - done):.0f} s left]"
        )
    return results


def engine_sampler(bundle: Any) -> SampleFn:
    """The real engine path: one loaded bundle, `engine.sampler.sample` per request."""
    from engine.sampler import sample

    def run(request: GenerationRequest) -> tuple[Any, dict[str, Any]]:
        result = sample(bundle, request)
        return result.image, result.stats

    return run


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
) -> StudyReport:
    """Sample every arm, then write study.json and study.md (the numbers), then the plots and the contact sheet
    into `out_dir`. A plot that fails is a warning (in the report, the log and study.md), never a lost study.

    `started`: a `time.perf_counter()` taken before the model was loaded, so the reported time covers it."""
    started = time.perf_counter() if started is None else started
    out_dir.mkdir(parents=True, exist_ok=True)
    if sample_fn is None:
        if bundle is None:
            from engine.models import load_bundle

            bundle = load_bundle(cfg.model)
        sample_fn = engine_sampler(bundle)
    from tnr_tui.services.sweep import is_embedded

    embedded = is_embedded(cfg.model, bundle)
    if not model_description and bundle is not None:
        model_description = f"{bundle.name} (identity {bundle.identity}, {bundle.path})"
    scorer = None
    if clip_model is not None:
        from engine.metrics import ClipScorer, MetricsError

        try:
            scorer = ClipScorer(clip_model)
        except MetricsError as e:
            raise StudyError(str(e)) from None
    arms = all_arms(cfg)
    log(f"study: {len(arms)} arms x {cfg.samples} seeds = {len(arms) * cfg.samples} images")
    results = run_arms(
        arms,
        cfg,
        sample_fn,
        embedded=embedded,
        keep_images=out_dir / "images" if keep_images else None,
        scorer=scorer,
        log=log,
    )
    seconds = time.perf_counter() - started
    indices = bootstrap_indices(cfg.samples)
    data = {
        "config": {**cfg.__dict__, "scales": {k: list(v) for k, v in cfg.scales.items()}},
        "seconds": seconds,
        "arms": [
            {
                **r.arm.__dict__,
                "label": r.arm.label,
                "evaluations": r.evaluations,
                "seconds": r.seconds,
                "schedules": r.schedules,
                "warnings": r.warnings,
                **r.values,
            }
            for r in results.values()
        ],
    }
    json_path = _write_text(out_dir / "study.json", json.dumps(data, indent=1) + "\n")
    command = command or f"tnr-lab study --samples {cfg.samples} --steps {cfg.steps} --out {out_dir}"

    def markdown(plots: list[Path], failed: list[str]) -> Path:
        return write_markdown(
            cfg, results, indices, out_dir / "study.md", seconds, model_description, embedded, plots, command, failed
        )

    md = markdown([], [])  # the tables, before anything that draws
    plots: list[Path] = []
    failed: list[str] = []
    drawings: list[tuple[str, Callable[[Path], Path]]] = [
        ("metrics-vs-scale.png", lambda path: plot_metrics_vs_scale(cfg, results, indices, path, embedded)),
        (
            "solvers-vs-evaluations.png",
            lambda path: plot_accuracy_vs_evaluations(cfg, results, indices, path, embedded),
        ),
        ("contact-sheet.png", lambda path: study_sheet(cfg, results, path, embedded)),
    ]
    for name, draw in drawings:
        try:
            plots.append(draw(out_dir / name))
        except Exception as e:  # a plot is a picture of numbers already written: losing it must not lose them
            failed.append(f"{name} was not drawn: {type(e).__name__}: {e}")
            log(f"warning: {failed[-1]}")
    if plots or failed:
        md = markdown(plots, failed)
    run_warnings = list(dict.fromkeys(w for r in results.values() for w in r.warnings))
    return StudyReport(md, plots, seconds, len(arms) * cfg.samples, json_path, failed, run_warnings)


def study_sheet(cfg: StudyConfig, results: dict[Arm, ArmResult], path: Path, embedded: bool) -> Path:
    """The first seeds of the arms the claims are about: none/tnr, each method at its best scale, and the
    solvers at the smallest budget with and without TNR."""
    rows = [results[a] for a in single_arms(cfg)]
    rows += [r for m in ("cfg", "cfg++", "tnr-cfg") if (r := best_scale(results, m, cfg, embedded)) is not None]
    budget = reference_budget(min(cfg.budgets))
    for guidance in ("none", "tnr"):
        for solver in cfg.solvers:
            arm = Arm(guidance, None, solver, matched_steps(solver, guidance, budget))
            if results[arm] not in rows:
                rows.append(results[arm])
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


# ---- tables -------------------------------------------------------------------------------------------------


def _fmt(mean: float, lo: float, hi: float, name: str) -> str:
    if name in CHECK_NAMES:
        return f"{100 * mean:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
    if name in ("colourfulness", "clip_score"):
        return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _columns(embedded: bool, measured: ArmResult) -> list[str]:
    """The table columns: accuracy where the checker applies, the metrics, a CLIP score where one was measured."""
    clip = ["clip_score"] if "clip_score" in measured.values else []
    return (["accuracy"] if embedded else []) + list(METRIC_NAMES) + clip


def _diff(a: ArmResult, b: ArmResult, name: str, indices: np.ndarray) -> tuple[float, float, float]:
    """Paired difference a - b over the same seeds."""
    return mean_ci(np.asarray(a.values[name]) - np.asarray(b.values[name]), indices)


def best_scale(results: dict[Arm, ArmResult], method: str, cfg: StudyConfig, embedded: bool) -> ArmResult | None:
    """The arm of `method` with the highest mean accuracy (embedded) or colourfulness; ties: the smaller scale."""
    key = "accuracy" if embedded else "colourfulness"
    arms = [r for a, r in results.items() if a.guidance == method and a in two_prediction_arms(cfg)]
    if not arms:
        return None
    return max(arms, key=lambda r: (float(np.mean(r.values[key])), -(r.arm.scale or 0.0)))


def _table(rows: list[ArmResult], indices: np.ndarray, embedded: bool, extra: bool = False) -> list[str]:
    cols = _columns(embedded, rows[0])
    head = ["arm", "evaluations"] + cols + (["colour / background / shape"] if extra and embedded else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.arm.label, str(r.evaluations)] + [_fmt(*mean_ci(r.values[c], indices), c) for c in cols]
        if extra and embedded:
            parts = [f"{100 * np.mean(r.values[c]):.0f}%" for c in ("colour_ok", "background_ok", "shape_ok")]
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _diff_table(pairs: list[tuple[str, ArmResult, ArmResult]], indices: np.ndarray, embedded: bool) -> list[str]:
    cols = _columns(embedded, pairs[0][1])
    lines = ["| difference (paired over seeds) | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for title, a, b in pairs:
        cells = []
        for c in cols:
            mean, lo, hi = _diff(a, b, c, indices)
            mark = " *" if direction(lo, hi, c) != SAME else ""
            cells.append(_fmt(mean, lo, hi, c).replace("% [", " pts [").replace("%", "") + mark)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(
    cfg: StudyConfig,
    results: dict[Arm, ArmResult],
    indices: np.ndarray,
    path: Path,
    seconds: float,
    model_description: str,
    embedded: bool,
    plots: list[Path],
    command: str,
    failed_plots: Sequence[str] = (),
) -> Path:
    import torch

    by_arm = results
    single = [by_arm[a] for a in single_arms(cfg)]
    two = [by_arm[a] for a in two_prediction_arms(cfg)]
    lines = [
        "# The TNR study",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- model: {model_description or cfg.model}",
        f"- sigma schedule: {cfg.schedule}" + _grids_sampled(results),
        f"- seeds 1..{cfg.samples} per arm"
        + (
            ", each seed with its own toy prompt (the same in every arm)" if embedded else ", prompts cycled over seeds"
        ),
        f"- {len(results)} arms, {len(results) * cfg.samples} images, {seconds:.0f} s "
        f"({seconds / 60:.1f} min) on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(torch threads: {torch.get_num_threads()})",
        f"- intervals: 95 % percentile bootstrap over seeds ({BOOTSTRAP_RESAMPLES} resamples, paired across arms); "
        "a difference marked * has an interval that excludes 0 by more than the last printed digit",
    ]
    if embedded:
        lines.append(
            "- accuracy: the share of images in which the toy checker (engine.toy.check) finds the prompt's shape "
            "colour, background and shape all right"
        )
    lines += [
        "- metrics (engine/metrics.py): colourfulness (Hasler and Suesstrunk, 0..255 scale), saturation (mean HSV "
        "S), contrast (std of Rec. 709 luma, 0..1), dynamic range (1st to 99th percentile of luma, 0..1)",
        "",
        f"## 1. Single prediction: none vs TNR (Euler, {cfg.steps} steps)",
        "",
        *_table(single, indices, embedded, extra=True),
        "",
        *_diff_table([("tnr - none", single[1], single[0])], indices, embedded),
        "",
        f"## 2. Two predictions: CFG vs CFG++ vs TNR-CFG (Euler, {cfg.steps} steps)",
        "",
        *_table(two, indices, embedded, extra=True),
        "",
    ]
    bests = {m: best_scale(results, m, cfg, embedded) for m in ("cfg", "cfg++", "tnr-cfg")}
    chosen = "accuracy" if embedded else "colourfulness"
    lines.append(
        f"Best scale of each method (highest mean {chosen}; chosen on the same seeds, so the best of each is "
        "slightly flattered, equally for all three): "
        + ", ".join(f"{m} {r.arm.scale:g}" for m, r in bests.items() if r is not None)
        + "."
    )
    lines.append("")
    pairs = []
    if bests["tnr-cfg"] is not None and bests["cfg++"] is not None:
        pairs.append(("tnr-cfg (best) - cfg++ (best)", bests["tnr-cfg"], bests["cfg++"]))
    if bests["tnr-cfg"] is not None and bests["cfg"] is not None:
        pairs.append(("tnr-cfg (best) - cfg (best)", bests["tnr-cfg"], bests["cfg"]))
    for s in sorted(set(cfg.scales.get("cfg", ())) & set(cfg.scales.get("tnr-cfg", ()))):
        pairs.append(
            (
                f"tnr-cfg {s:g} - cfg {s:g}",
                by_arm[Arm("tnr-cfg", s, "euler", cfg.steps)],
                by_arm[Arm("cfg", s, "euler", cfg.steps)],
            )
        )
    if pairs:
        lines += [*_diff_table(pairs, indices, embedded), ""]
    lines += [
        "## 3. Solvers at equal model evaluations, with and without TNR",
        "",
        "Budget B: the evaluations of B Euler steps with one prediction; each solver gets the step count whose "
        "evaluations are nearest (the final step to sigma 0 is Euler for every solver, so n steps of a k-stage "
        "solver cost k(n-1)+1). `evaluations` is what the sampler counted.",
        "",
    ]
    solver_rows = [by_arm[a] for a in solver_arms(cfg)]
    lines += _table(solver_rows, indices, embedded)
    lines.append("")
    pairs = []
    for budget in cfg.budgets:
        for guidance in ("none", "tnr"):
            ref = Arm(guidance, None, "euler", matched_steps("euler", guidance, reference_budget(budget)))
            for solver in cfg.solvers:
                if solver == "euler" or ref not in by_arm:
                    continue
                arm = Arm(guidance, None, solver, matched_steps(solver, guidance, reference_budget(budget)))
                pairs.append((f"B={budget} {guidance}: {solver} - euler", by_arm[arm], by_arm[ref]))
        for solver in cfg.solvers:
            tnr = Arm("tnr", None, solver, matched_steps(solver, "tnr", reference_budget(budget)))
            none = Arm("none", None, solver, matched_steps(solver, "none", reference_budget(budget)))
            pairs.append((f"B={budget} {solver}: tnr - none", by_arm[tnr], by_arm[none]))
    if pairs:
        lines += [*_diff_table(pairs, indices, embedded), ""]
    lines += claim_verdicts(cfg, results, indices, embedded, bests)
    warnings = list(dict.fromkeys(w for r in results.values() for w in r.warnings))
    if warnings:
        lines += ["## Warnings of the runs", "", *(f"- {w}" for w in warnings), ""]
    lines += ["## Plots", ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    lines += [f"- {text}" for text in failed_plots]
    if not plots and not failed_plots:
        lines.append("(drawn after the tables)")
    return _write_text(path, "\n".join(lines) + "\n")


def _grids_sampled(results: dict[Arm, ArmResult]) -> str:
    """ "; sampled as trailing in arms ..." when the arms did not all sample one grid kind (MATH.md 7)."""
    kinds: dict[str, list[str]] = {}
    for r in results.values():
        for kind in r.schedules:
            kinds.setdefault(kind, []).append(r.arm.label)
    if len(kinds) < 2:
        return f" (sampled as {next(iter(kinds))})" if kinds else ""
    fewest = sorted(kinds.items(), key=lambda item: len(item[1]))
    return "; sampled as " + "; ".join(
        f"{kind} in {'all other arms' if i == len(fewest) - 1 else ', '.join(labels)}"
        for i, (kind, labels) in enumerate(fewest)
    )


def _write_text(path: Path, text: str) -> Path:
    """Write a whole file or leave the old one: a half-written study.json is no better than none."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


SAME = "no detectable difference"
# Differences smaller than the tables print are not findings, even when every resample agrees on the sign
# (TNR changes an RK4 image at 2 steps by far less than one grey level: its first step has c - n = 0).
RESOLUTION: dict[str, float] = {"colourfulness": 0.05, "clip_score": 0.05, **dict.fromkeys(CHECK_NAMES, 0.005)}


def direction(lo: float, hi: float, name: str = "") -> str:
    """What a paired 95 % interval says about a difference (beyond the printed resolution of `name`)."""
    resolution = RESOLUTION.get(name, 0.0005) if name else 0.0
    if lo > resolution:
        return "higher"
    if hi < -resolution:
        return "lower"
    return SAME


def claim_verdicts(
    cfg: StudyConfig,
    results: dict[Arm, ArmResult],
    indices: np.ndarray,
    embedded: bool,
    bests: dict[str, ArmResult | None],
) -> list[str]:
    """A mechanical reading of each claim from the paired intervals (the prose interpretation is the reader's)."""
    lines = [
        "## What the intervals say about each claim",
        "",
        "Mechanical: 'higher'/'lower' where the paired 95 % interval of the difference excludes 0 (by more than "
        "the tables' last printed digit).",
        "",
        "| claim | comparison | measure | difference [95% CI] | reading |",
        "|---|---|---|---|---|",
    ]

    def row(claim: str, title: str, a: ArmResult, b: ArmResult, name: str) -> None:
        mean, lo, hi = _diff(a, b, name, indices)
        value = _fmt(mean, lo, hi, name).replace("% [", " pts [").replace("%", "")
        lines.append(f"| {claim} | {title} | {name} | {value} | {direction(lo, hi, name)} |")

    none, tnr = (results[a] for a in single_arms(cfg))
    for name in ("colourfulness", "saturation", "contrast", "dynamic_range"):
        row("TNR lifts the washed-out look", "tnr - none", tnr, none, name)
    if embedded:
        row("TNR mildly improves prompt coherence", f"euler {cfg.steps} steps: tnr - none", tnr, none, "accuracy")
        for budget in cfg.budgets:
            if budget == cfg.steps or "euler" not in cfg.solvers:
                continue
            a, b = results[Arm("tnr", None, "euler", budget)], results[Arm("none", None, "euler", budget)]
            row("TNR mildly improves prompt coherence", f"euler {budget} steps: tnr - none", a, b, "accuracy")
    key = "accuracy" if embedded else "colourfulness"
    if bests.get("tnr-cfg") is not None and bests.get("cfg++") is not None:
        a, b = bests["tnr-cfg"], bests["cfg++"]
        assert a is not None and b is not None
        title = f"tnr-cfg {a.arm.scale:g} - cfg++ {b.arm.scale:g} (best)"
        row("TNR-CFG competes with CFG++", title, a, b, key)
        if embedded:
            row("TNR-CFG competes with CFG++", title, a, b, "colourfulness")
    if "rk4" in cfg.solvers:
        for budget in cfg.budgets:
            steps = {g: matched_steps("rk4", g, reference_budget(budget)) for g in ("none", "tnr")}
            a, b = results[Arm("tnr", None, "rk4", steps["tnr"])], results[Arm("none", None, "rk4", steps["none"])]
            row("TNR steadies RK4", f"rk4 {a.evaluations} evaluations: tnr - none", a, b, key)
    lines.append("")
    return lines


# ---- plots (PIL) --------------------------------------------------------------------------------------------

# The guidance methods' own colours (every study has these five).
METHOD_COLOURS: dict[str, tuple[int, int, int]] = {
    "cfg": (31, 119, 180),
    "cfg++": (255, 127, 14),
    "tnr-cfg": (44, 160, 44),
    "none": (127, 127, 127),
    "tnr": (214, 39, 40),
}
# Solvers take these in the order the study lists them (any registered solver, any number of them).
SOLVER_CYCLE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (148, 103, 189),
    (44, 160, 44),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (214, 39, 40),
    (127, 127, 127),
)


def solver_colours(solvers: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """One colour per solver, by position: the cycle, darkened by a third on each pass past its end."""
    colours = {}
    for i, solver in enumerate(dict.fromkeys(solvers)):
        shade = (2 / 3) ** (i // len(SOLVER_CYCLE))
        colours[solver] = tuple(round(c * shade) for c in SOLVER_CYCLE[i % len(SOLVER_CYCLE)])
    return colours  # type: ignore[return-value]


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    lo: list[float]
    hi: list[float]
    colour: tuple[int, int, int]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def draw_panel(
    draw: Any,
    box: tuple[int, int, int, int],
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    font: Any,
    hlines: Sequence[tuple[str, float, tuple[int, int, int]]] = (),
    y_range: tuple[float, float] | None = None,
    dodge: float = 0.0,
) -> None:
    """A line plot with error bars in `box` (x0, y0, x1, y1) of an ImageDraw.

    `y_range` fixes the y axis (accuracy: 0..100, so small differences do not look large); `dodge` shifts
    each series sideways by that many pixels times its index, so overlapping error bars stay readable."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 58, x1 - 10, y0 + 24, y1 - 40
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.lo + s.hi] + [h[1] for h in hlines]
    if not xs or not ys:
        return
    pad = 0.04 * (max(xs) - min(xs))  # keep points off the frame
    xt = nice_ticks(min(xs) - pad, max(xs) + pad)
    yt = nice_ticks(*(y_range or (min(ys), max(ys))))
    xmin, xmax, ymin, ymax = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (x - xmin) / (xmax - xmin or 1.0)
        fy = (y - ymin) / (ymax - ymin or 1.0)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    draw.text((x0 + 4, y0 + 4), title, fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for t in xt:
        x, _ = px(t, ymin)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x - 10, bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font)
    for t in yt:
        _, y = px(xmin, t)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left + 1, y, right - 1, y), fill=(235, 235, 235))
        draw.text((x0 + 4, y - 7), f"{t:g}", fill=(0, 0, 0), font=font)
    draw.text(((left + right) / 2 - 30, bottom + 22), xlabel, fill=(0, 0, 0), font=font)
    draw.text((left + 4, top + 2), ylabel, fill=(90, 90, 90), font=font)
    for label, value, colour in hlines:
        _, y = px(xmin, value)
        for xa in range(int(left), int(right), 8):
            draw.line((xa, y, min(xa + 4, right), y), fill=colour, width=1)
        draw.text((right - 40, y - 14), label, fill=colour, font=font)
    for k, s in enumerate(series):
        shift = dodge * (k - (len(series) - 1) / 2)
        pts = [(px(x, y)[0] + shift, px(x, y)[1]) for x, y in zip(s.xs, s.ys, strict=True)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
            if s.dashed:
                n = max(int(math.hypot(xb - xa, yb - ya) / 6), 1)
                for k in range(0, n, 2):
                    fa, fb = k / n, min((k + 1) / n, 1.0)
                    draw.line(
                        (xa + fa * (xb - xa), ya + fa * (yb - ya), xa + fb * (xb - xa), ya + fb * (yb - ya)),
                        fill=s.colour,
                        width=2,
                    )
            else:
                draw.line((xa, ya, xb, yb), fill=s.colour, width=2)
        for x, lo, hi in zip(s.xs, s.lo, s.hi, strict=True):
            xa, ya = px(x, lo)
            xa += shift
            _, yb = px(x, hi)
            draw.line((xa, ya, xa, yb), fill=s.colour, width=1)
            draw.line((xa - 3, ya, xa + 3, ya), fill=s.colour)
            draw.line((xa - 3, yb, xa + 3, yb), fill=s.colour)
        for xa, ya in pts:
            draw.ellipse((xa - 3, ya - 3, xa + 3, ya + 3), fill=s.colour)


LEGEND_ROW = 20  # pixels per legend line


def legend_layout(series: list[Series], font: Any, width: int, x0: int = 10) -> list[tuple[int, int, Series]]:
    """(x, row, series) of each legend entry, wrapped to `width` (a study may compare any number of solvers)."""
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x, row, placed = x0, 0, []
    for s in series:
        span = 40 + int(measure.textlength(s.label + (" (dashed)" if s.dashed else ""), font=font))
        if x > x0 and x + span > width:
            x, row = x0, row + 1
        placed.append((x, row, s))
        x += span
    return placed


def draw_legend(draw: Any, y: int, placed: list[tuple[int, int, Series]], font: Any) -> None:
    for x, row, s in placed:
        ya = y + row * LEGEND_ROW
        for xa in range(x, x + 24, 8 if s.dashed else 24):
            draw.line((xa, ya + 7, xa + (4 if s.dashed else 24), ya + 7), fill=s.colour, width=2)
        draw.text((x + 30, ya), s.label + (" (dashed)" if s.dashed else ""), fill=(0, 0, 0), font=font)


def _series(
    rows: list[ArmResult], x_of: Callable[[ArmResult], float], name: str, indices: np.ndarray, **kw: Any
) -> Series:
    stats = [mean_ci(r.values[name], indices) for r in rows]
    scale = 100.0 if name in CHECK_NAMES else 1.0
    return Series(
        xs=[x_of(r) for r in rows],
        ys=[scale * m for m, _, _ in stats],
        lo=[scale * lo for _, lo, _ in stats],
        hi=[scale * hi for _, _, hi in stats],
        **kw,
    )


def _save(image: Any, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
    return path


def plot_metrics_vs_scale(
    cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray, path: Path, embedded: bool
) -> Path:
    """Rows: metrics; columns: cfg, cfg++, tnr-cfg (each its own scale axis); dashed: none and tnr."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    metrics = _columns(embedded, next(iter(results.values())))
    methods = [m for m in ("cfg", "cfg++", "tnr-cfg") if cfg.scales.get(m)]
    pw, ph = 330, 220
    img = Image.new("RGB", (pw * max(len(methods), 1), ph * len(metrics) + 30), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text(
        (6, 8),
        f"metric vs scale (Euler, {cfg.steps} steps, {cfg.samples} seeds, 95% bootstrap CI); "
        "dashed lines: none and tnr",
        fill=(0, 0, 0),
        font=font,
    )
    single = {a.guidance: results[a] for a in single_arms(cfg)}
    for i, name in enumerate(metrics):
        unit = " (%)" if name in CHECK_NAMES else ""
        scale = 100.0 if name in CHECK_NAMES else 1.0
        hlines = [(g, scale * float(np.mean(single[g].values[name])), METHOD_COLOURS[g]) for g in ("none", "tnr")]
        for j, method in enumerate(methods):
            rows = sorted(
                (r for a, r in results.items() if a.guidance == method and a in two_prediction_arms(cfg)),
                key=lambda r: r.arm.scale or 0.0,
            )
            s = _series(
                rows, lambda r: float(r.arm.scale or 0.0), name, indices, label=method, colour=METHOD_COLOURS[method]
            )
            box = (j * pw, 30 + i * ph, (j + 1) * pw, 30 + (i + 1) * ph)
            y_range = (0.0, 100.0) if name in CHECK_NAMES else None
            draw_panel(draw, box, [s], f"{method}: {name}{unit}", "scale", "", font, hlines, y_range=y_range)
    return _save(img, path)


def plot_accuracy_vs_evaluations(
    cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray, path: Path, embedded: bool
) -> Path:
    """Accuracy (or colourfulness without a checker) against model evaluations; solid tnr, dashed none."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    names = ["accuracy", "colourfulness"] if embedded else ["colourfulness", "contrast"]
    colours = solver_colours(cfg.solvers)
    panels: list[list[Series]] = []
    for name in names:
        series = []
        for guidance in ("tnr", "none"):
            for solver in cfg.solvers:
                budgets = [reference_budget(b) for b in cfg.budgets]
                arms = [Arm(guidance, None, solver, matched_steps(solver, guidance, b)) for b in budgets]
                rows = sorted((results[a] for a in dict.fromkeys(arms)), key=lambda r: r.evaluations)
                series.append(
                    _series(
                        rows,
                        lambda r: float(r.evaluations),
                        name,
                        indices,
                        label=f"{solver} {guidance}",
                        colour=colours[solver],
                        dashed=guidance == "none",
                    )
                )
        panels.append(series)
    placed = legend_layout(panels[-1], font, 720)
    legend_rows = 1 + max((row for _, row, _ in placed), default=0)
    img = Image.new("RGB", (720, 2 * 420 + 30 + legend_rows * LEGEND_ROW), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (name, series) in enumerate(zip(names, panels, strict=True)):
        unit = " (%)" if name in CHECK_NAMES else ""
        draw_panel(
            draw,
            (0, i * 420, 720, (i + 1) * 420),
            series,
            f"{name}{unit} vs model evaluations ({cfg.samples} seeds, 95% bootstrap CI)",
            "model evaluations per image",
            "",
            font,
            y_range=(0.0, 100.0) if name in CHECK_NAMES else None,
            dodge=4.0,
        )
    draw_legend(draw, 2 * 420 + 20, placed, font)
    return _save(img, path)
