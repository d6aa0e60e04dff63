"""Sweeps: a grid of runs over prompts x guidance methods x scales x solvers x seeds, recorded in the history.

Every cell is an ordinary history run (made by `tnr_tui.services.runs.execute`) tagged `{"sweep": <id>}`. A sweep writes
into its output directory a CSV of one row per image (parameters, evaluations, metrics, the checker's verdicts
on the embedded model) and one labelled contact sheet PNG per prompt. Cells already done (in the CSV or in the
history under the same sweep id) are skipped, so an interrupted sweep resumes where it stopped.

Model evaluations (`--match-evaluations`): a step of a solver with k stages under a method with P predictions
costs k * P UNet evaluations, except the last step (to sigma 0), which every solver takes with Euler (MATH.md 4),
so n steps cost `P * (k * (n - 1) + 1)`. The reference budget is `--steps` of Euler with one prediction
(`budget = steps`); each solver/method gets the step count whose cost is nearest to the budget (ties: the fewer
steps, so no cell spends more than its tie partner). The CSV reports the evaluations actually spent.

No torch here at import time: the planning half is pure Python; execution imports the engine lazily.

Modules: spec, table, runner, sheets.
"""

from __future__ import annotations

from tnr_tui.services.sweep.runner import (
    SweepReport,
    history_done_cells,
    run_sweep,
)
from tnr_tui.services.sweep.sheets import (
    PAD,
    THUMB,
    draw_sheet,
    slug,
    thumbnail,
    write_contact_sheets,
)
from tnr_tui.services.sweep.spec import (
    MAX_SEEDS,
    SCALED_METHODS,
    SweepError,
    SweepSpec,
    cell_key_of_request,
    cell_request,
    evaluations,
    matched_steps,
    parse_list,
    parse_scales,
    parse_seeds,
    plan,
    reference_budget,
    row_label,
)
from tnr_tui.services.sweep.table import (
    CSV_COLUMNS,
    read_rows,
    write_rows,
)

__all__ = [
    "CSV_COLUMNS",
    "MAX_SEEDS",
    "PAD",
    "SCALED_METHODS",
    "SweepError",
    "SweepReport",
    "SweepSpec",
    "THUMB",
    "cell_key_of_request",
    "cell_request",
    "draw_sheet",
    "evaluations",
    "history_done_cells",
    "matched_steps",
    "parse_list",
    "parse_scales",
    "parse_seeds",
    "plan",
    "read_rows",
    "reference_budget",
    "row_label",
    "run_sweep",
    "slug",
    "thumbnail",
    "write_contact_sheets",
    "write_rows",
]
