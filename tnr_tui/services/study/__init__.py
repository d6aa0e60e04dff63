"""The study: do the seed notebook's claims about True Noise Removal hold on a model we can measure?

Claims under test (the seed's words, turned into measurements):
- TNR resolves the washed-out look of single-prediction sampling: none vs tnr, on colourfulness, saturation,
  contrast and dynamic range (engine.metrics);
- TNR mildly improves prompt coherence: none vs tnr on the checker's accuracy (embedded model only);
- TNR-CFG competes with CFG++: cfg, cfg++ and tnr-cfg over a scale range, each at its best scale;
- TNR steadies RK4: euler, heun and rk4 at equal model evaluations, with and without TNR.

And two sections beyond the notebook (design.py): the common samplers with none, tnr, cfg, cfg++ and tnr-cfg
at equal model evaluations (issue 12), and the guidance methods TNR competes with (apg, cfg-zero-star, pag)
at their best settings, chosen by a scale search on other seeds, at equal model evaluations (issue 13).

Every arm samples the same seeds, and on the embedded model seed s always gets the same prompt (a fixed
shuffle of the toy grammar's scenes), so arms are compared pairwise. Confidence intervals are 95 % percentile
bootstrap intervals over seeds (the same resampled seed sets for every arm, so differences are paired).

Study images go through the real engine path (`load_bundle` once, then `engine.sampler.sample` per image) but
are not recorded in the history: a study makes hundreds of images, and the PNG + database writes would cost
time and bury the user's own runs. The PNG of every image is kept under DIR/images only with `--keep-images`.

Plots are drawn with PIL (no matplotlib): the lab already depends on Pillow, the plots are simple lines with
error bars, and a GPU host running the same command should not need a plotting stack.

Modules: design, statistics, running, runner, tables, plots.
"""

from __future__ import annotations

from tnr_tui.services.study.design import (
    BOOTSTRAP_RESAMPLES,
    CHECK_NAMES,
    FIXED_PARAMS,
    GENERAL_PROMPTS,
    NOTEBOOK_SECTIONS,
    RIVALS,
    SAMPLER_METHODS,
    SAMPLERS,
    SEARCH_SEED,
    SECTIONS,
    SHEET_SEEDS,
    Arm,
    StudyConfig,
    StudyError,
    all_arms,
    best_settings,
    equal_evaluations,
    guidance_rows,
    method_arm,
    prompt_for_seed,
    reported_arms,
    sampler_arm,
    sampler_arms,
    search_arms,
    search_seeds,
    single_arms,
    solver_arms,
    study_evaluations,
    two_prediction_arms,
)
from tnr_tui.services.study.plots import (
    LEGEND_ROW,
    METHOD_COLOURS,
    SOLVER_CYCLE,
    Series,
    draw_legend,
    draw_panel,
    legend_layout,
    nice_ticks,
    plot_accuracy_vs_evaluations,
    plot_guidance,
    plot_metrics_vs_scale,
    plot_samplers,
    solver_colours,
)
from tnr_tui.services.study.runner import (
    StudyReport,
    run_study,
    study_sheet,
)
from tnr_tui.services.study.running import (
    ArmResult,
    SampleFn,
    engine_sampler,
    measure,
    run_arms,
)
from tnr_tui.services.study.statistics import (
    bootstrap_indices,
    mean_ci,
)
from tnr_tui.services.study.tables import (
    RESOLUTION,
    SAME,
    best_scale,
    claim_verdicts,
    direction,
    write_markdown,
)

__all__ = [
    "FIXED_PARAMS",
    "NOTEBOOK_SECTIONS",
    "RIVALS",
    "SAMPLERS",
    "SAMPLER_METHODS",
    "SEARCH_SEED",
    "SECTIONS",
    "best_settings",
    "equal_evaluations",
    "guidance_rows",
    "method_arm",
    "plot_guidance",
    "plot_samplers",
    "reported_arms",
    "sampler_arm",
    "sampler_arms",
    "search_arms",
    "search_seeds",
    "Arm",
    "ArmResult",
    "BOOTSTRAP_RESAMPLES",
    "CHECK_NAMES",
    "GENERAL_PROMPTS",
    "LEGEND_ROW",
    "METHOD_COLOURS",
    "RESOLUTION",
    "SAME",
    "SHEET_SEEDS",
    "SOLVER_CYCLE",
    "SampleFn",
    "Series",
    "StudyConfig",
    "StudyError",
    "StudyReport",
    "all_arms",
    "best_scale",
    "bootstrap_indices",
    "claim_verdicts",
    "direction",
    "draw_legend",
    "draw_panel",
    "engine_sampler",
    "legend_layout",
    "mean_ci",
    "measure",
    "nice_ticks",
    "plot_accuracy_vs_evaluations",
    "plot_metrics_vs_scale",
    "prompt_for_seed",
    "run_arms",
    "run_study",
    "single_arms",
    "solver_arms",
    "solver_colours",
    "study_evaluations",
    "study_sheet",
    "two_prediction_arms",
    "write_markdown",
]
