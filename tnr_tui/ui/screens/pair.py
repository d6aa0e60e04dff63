"""Two runs side by side: their frames at the same point of the trajectory and their series on one plot.

Opened from the History: c marks a run, c on a second run opens the pair (for example cfg and tnr-cfg on
one seed, or euler and dpmpp_2m). The runs are aligned by sigma, by nearest neighbour in log sigma: at run
A's step i (sigma s), run B shows its step whose sigma is nearest to s. Nearest, not interpolated: a frame
cannot be interpolated, and the numbers shown are ones the run really had at a sigma it really visited (the
B sigma is shown beside A's, so a gap between the grids is visible). The plot needs no alignment: both runs
are drawn over sigma itself (log axis, sigma falling to the right, as the runs go), each at its own sigmas.
Runs without telemetry rows have no sigmas: they are aligned by their position in the run instead (step i
of N against the step at the same fraction of M), and the screen says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from tnr_tui.services.text import visible
from tnr_tui.ui.screens import preset_breakpoints
from tnr_tui.ui.screens.trajectory import Trajectory, load_trajectory, next_kind, run_label, scrub_index
from tnr_tui.ui.widgets.choice import Choice
from tnr_tui.ui.widgets.footer import Footer
from tnr_tui.ui.widgets.header import Header
from tnr_tui.ui.widgets.picture import Picture
from tnr_tui.ui.widgets.plot import LinePlot
from tnr_tui.ui.widgets.telemetry import (
    COLUMN_LABELS,
    DEFAULT_CHOICE,
    SeriesChoice,
    choice,
    choices_for,
    has_values,
    row_items,
    series_of,
)


def _log(sigma: float | None) -> float | None:
    if sigma is None or not math.isfinite(sigma) or sigma <= 0:
        return None
    return math.log(sigma)


def align_by_sigma(sigmas_a: Sequence[float | None], sigmas_b: Sequence[float | None]) -> list[int | None]:
    """For each step of run A, the index of run B's step with the nearest sigma in log sigma.

    Nearest neighbour (ties go to B's earlier step); None where A's sigma is missing or B has no sigma at
    all. A sigma of 0 or less (a run's end) matches only another such sigma.
    """
    logs_b = [_log(s) for s in sigmas_b]
    ends_b = [j for j, s in enumerate(sigmas_b) if s is not None and math.isfinite(s) and s <= 0]
    out: list[int | None] = []
    for sigma in sigmas_a:
        here = _log(sigma)
        if here is None:
            ends = sigma is not None and math.isfinite(sigma) and sigma <= 0
            out.append(ends_b[0] if ends and ends_b else None)
            continue
        best, best_distance = None, math.inf
        for j, there in enumerate(logs_b):
            if there is not None and abs(there - here) < best_distance:
                best, best_distance = j, abs(there - here)
        out.append(best)
    return out


def align_by_position(steps_a: int, steps_b: int) -> list[int | None]:
    """Without sigmas: step i of A against the step of B at the same fraction of its run."""
    if steps_b <= 0:
        return [None] * steps_a
    if steps_a <= 1:
        return [steps_b - 1] * steps_a
    return [round(i * (steps_b - 1) / (steps_a - 1)) for i in range(steps_a)]


class PairScreen(Screen):
    """Runs A and B: ←/→ move along A, B follows at the nearest sigma; d switches the kind of frame."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="pair.back"),
        Binding("left", "step(-1)", "Step back", id="pair.back_step"),
        Binding("right", "step(1)", "Step on", id="pair.next_step"),
        Binding("pageup", "step(-10)", "−10", show=False, id="pair.back_10"),
        Binding("pagedown", "step(10)", "+10", show=False, id="pair.next_10"),
        Binding("home", "go(0)", "First", show=False, id="pair.first"),
        Binding("end", "go(-1)", "Last", show=False, id="pair.last"),
        Binding("d", "kind", "Decoded/preview", id="pair.kind"),
        Binding("left_square_bracket", "series(-1)", "Series", show=False, id="pair.series_back"),
        Binding("right_square_bracket", "series(1)", "Series", id="pair.series_next"),
        Binding("s", "swap", "Swap A/B", id="pair.swap"),
    ]
    AUTO_FOCUS = None

    def __init__(self, run_a: str, run_b: str) -> None:
        super().__init__(id="pair")
        self.run_ids = (run_a, run_b)
        self.a: Trajectory | None = None
        self.b: Trajectory | None = None
        self.alignment: list[int | None] = []
        self.by_sigma = True
        self.index = 0
        self.kind = "frames"

    def compose(self) -> ComposeResult:
        preset_breakpoints(self)
        yield Header()
        yield Static("loading both runs…", id="pair-title", markup=False)
        with Horizontal(id="pair-top"):
            yield Picture("A: loading…", id="pair-frame-a", classes="pair-frame")
            yield Picture("B: loading…", id="pair-frame-b", classes="pair-frame")
            yield Static("", id="pair-numbers", markup=False)
        with Vertical(id="pair-plot-box"):
            yield Choice(
                [(c.label, c.key) for c in choices_for() if len(c.columns) == 1], DEFAULT_CHOICE, id="pair-series"
            )
            yield LinePlot("loading…", id="pair-plot")
        yield Footer()

    def on_mount(self) -> None:
        app: Any = self.app
        store = app.store
        run_a, run_b = self.run_ids
        self.run_worker(
            lambda: (load_trajectory(store, run_a), load_trajectory(store, run_b)),
            thread=True,
            exit_on_error=False,
            name="load",
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "load":
            return
        if event.state == WorkerState.SUCCESS:
            self.loaded(*event.worker.result)
        elif event.state == WorkerState.ERROR:
            from tnr_tui.ui.worker import describe_error

            note = f"cannot read the runs: {describe_error(event.worker.error)}"
            self.loaded(Trajectory(None, notes=[note]), Trajectory(None, notes=[note]))

    def loaded(self, a: Trajectory, b: Trajectory) -> None:
        self.a, self.b = a, b
        self.by_sigma = bool(a.rows) and bool(b.rows)
        if self.by_sigma:
            self.alignment = align_by_sigma(a.sigmas, b.sigmas)
        else:
            self.alignment = align_by_position(a.steps, b.steps)
        kinds = [k for k in a.kinds() if k in b.kinds()] or a.kinds() or b.kinds()
        self.kind = kinds[0] if kinds else "frames"
        columns = tuple(dict.fromkeys([*a.columns, *b.columns]))
        select = self.query_one("#pair-series", Choice)
        select.set_options([(c.label, c.key) for c in choices_for(columns) if len(c.columns) == 1])
        self.index = max(a.steps - 1, 0)
        how = (
            "aligned by sigma: B at its step of nearest sigma (log sigma)"
            if self.by_sigma
            else "no sigmas in one of the runs: aligned by position in the run"
        )
        lines = [f"A  {run_label(a.run)}", f"B  {run_label(b.run)}", how]
        lines += [f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes]
        self.query_one("#pair-title", Static).update(visible("\n".join(lines), keep_newlines=True))
        self.show_step()

    def action_swap(self) -> None:
        if self.a is not None and self.b is not None:
            self.run_ids = self.run_ids[::-1]
            self.loaded(self.b, self.a)

    def action_step(self, delta: int) -> None:
        self.action_go(self.index + delta, clamp=True)

    def action_go(self, index: int, clamp: bool = False) -> None:
        if self.a is None:
            return
        self.index = scrub_index(index, self.a.steps, clamp)
        self.show_step()

    def action_series(self, delta: int) -> None:
        """[ and ]: the plot's previous or next series (enter on the focused picker does it too)."""
        self.query_one("#pair-series", Choice).action_step(delta)

    def action_kind(self) -> None:
        kinds = sorted(set(self.a.kinds() if self.a else []) | set(self.b.kinds() if self.b else []))
        if len(kinds) > 1:
            self.kind = next_kind(kinds, self.kind)
            self.show_step()

    @on(Choice.Changed, "#pair-series")
    def _series_changed(self) -> None:
        if self.a is not None:
            self.show_step()

    def chosen(self) -> SeriesChoice:
        return choice(str(self.query_one("#pair-series", Choice).value))

    def b_index(self) -> int | None:
        return self.alignment[self.index] if 0 <= self.index < len(self.alignment) else None

    def show_step(self) -> None:
        a, b = self.a, self.b
        if a is None or b is None:
            return
        i, j = self.index, self.b_index()
        image, caption = a.frame(i, self.kind)
        self.query_one("#pair-frame-a", Picture).show(image, f"A: {caption}")
        if j is None:
            self.query_one("#pair-frame-b", Picture).show(None, "B: no step to match")
        else:
            image, caption = b.frame(j, self.kind)
            self.query_one("#pair-frame-b", Picture).show(image, f"B: {caption}")
        short = self.has_class("-short")  # 24 rows: the table may not be taller than the frames
        self.query_one("#pair-numbers", Static).update(self.numbers(i, j, 10 if short else None))
        self._plot(i)

    def numbers(self, i: int, j: int | None, max_rows: int | None = None) -> str:
        """Both rows in one table: label, A's value, B's value. With `max_rows` (a short terminal) the
        plotted series' columns and sigma come first and the rest is cut."""
        a, b = self.a, self.b
        assert a is not None and b is not None
        head = f"{'run':<11} {'A':>9} {'B':>9}\n{'step':<11} {f'{i + 1}/{a.steps}':>9} "
        head += f"{(f'{j + 1}/{b.steps}' if j is not None else '–'):>9}"
        items_a = dict(row_items(a.row(i)))
        items_b = dict(row_items(b.row(j) if j is not None else None))
        labels = list(dict.fromkeys([*items_a, *items_b]))
        if max_rows is not None:
            first = ["σ"] + [COLUMN_LABELS.get(c, c.replace("_", " ")) for c in self.chosen().columns]
            labels = [x for x in first if x in labels] + [x for x in labels if x not in first]
            labels = labels[: max(max_rows - 2, 1)]
        lines = [f"{label:<11} {items_a.get(label, '–'):>9} {items_b.get(label, '–'):>9}" for label in labels]
        return "\n".join([head, *lines])

    def _plot(self, i: int) -> None:
        a, b = self.a, self.b
        assert a is not None and b is not None
        chosen = self.chosen()
        plot = self.query_one("#pair-plot", LinePlot)
        if self.by_sigma:
            series = [
                *series_of(a.rows, chosen, x="sigma", prefix="A "),
                *series_of(b.rows, chosen, x="sigma", prefix="B "),
            ]
            sigma = a.row(i).get("sigma") if a.row(i) else None
            has = has_values(a.rows, chosen) or has_values(b.rows, chosen)
            plot.plot(
                series,
                log_x=True,
                reverse_x=True,
                log_y=chosen.log_y,
                cursor=sigma,
                x_label="σ",
                empty="" if has else f"{chosen.label}: none in either run",
            )
        else:
            series = [
                *series_of(a.rows, chosen, x="step", prefix="A "),
                *series_of(b.rows, chosen, x="step", prefix="B "),
            ]
            plot.plot(series, log_y=chosen.log_y, cursor=float(i + 1), x_label="step", empty="no telemetry rows")
