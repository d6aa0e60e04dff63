"""The Compare screen: one prompt and seed across guidance methods and scales (rows: solvers, matched by
model evaluations), as a grid of labelled thumbnails. Every cell is an ordinary queued run in the history."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Static

from engine.request import GenerationRequest, RequestError, parse_field
from engine.units import GUIDANCE, SOLVERS
from tnr_tui.services.cells import GridCell
from tnr_tui.ui.screens import preset_breakpoints
from tnr_tui.ui.screens.lab import EXAMPLE_PROMPT
from tnr_tui.ui.widgets.fields import TextInput
from tnr_tui.ui.widgets.picture import Picture

DEFAULT_METHODS = "none cfg:3 cfg:7 cfg++:0.8 tnr tnr-cfg:5"


@dataclass(frozen=True)
class Tile:
    """One picture of the grid: the sampling cell (services.cells, as sweeps and the study use) and its run."""

    cell: GridCell
    label: str
    request: GenerationRequest


def parse_methods(spec: str) -> list[tuple[str, float | None]]:
    """'cfg:3 cfg:7 tnr' -> [('cfg', 3.0), ('cfg', 7.0), ('tnr', None)]; RequestError on a bad token."""
    out: list[tuple[str, float | None]] = []
    for token in spec.replace(",", " ").split():
        name, _, scale = token.partition(":")
        method = GUIDANCE.canonical(name)
        if method is None:
            raise RequestError(f"unknown guidance method {name!r}; choose one of: {', '.join(GUIDANCE.names())}")
        out.append((method, parse_field("scale", scale) if scale else None))
    if not out:
        raise RequestError("give at least one method, e.g. 'cfg:5 tnr'")
    return out


def plan_grid(base: GenerationRequest, methods: str, solvers: str) -> list[list[Tile]]:
    """Rows of cells: one row per solver, one cell per method:scale. In each column (one method) every
    solver gets the step count whose model evaluations are nearest those of the base request's steps with
    Euler under that method: P * (k * (steps - 1) + 1), the last step being Euler, the sweep's own rule
    (`tnr_tui.services.sweep.matched_steps`), so a grid cell and the sweep's matched cell are the same run.
    Methods are compared at the same steps, as typed (`tnr-lab sweep --match-evaluations` also matches
    the methods' budgets)."""
    from tnr_tui.services.sweep import (  # here: the sweep module is not needed for the first frame
        evaluations,
        matched_steps,
    )

    names = solvers.replace(",", " ").split() or [base.solver]
    canonical = [SOLVERS.canonical(name) for name in names]
    for name, solver in zip(names, canonical, strict=True):
        if solver is None:
            raise RequestError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVERS.names())}")
    names = [solver for solver in canonical if solver is not None]
    grid_id = f"compare-{int(time.time())}"
    rows = []
    for solver in names:
        row = []
        for method, scale in parse_methods(methods):
            steps = matched_steps(solver, method, evaluations("euler", method, base.steps))
            cell = GridCell(method, scale, solver, steps)
            request = cell.request(base, tags={**base.tags, "compare": grid_id})
            # No scale given: the model's default (tnr_lab.json) or the lab's, resolved when the run starts.
            shown = "" if not GUIDANCE.get(method).uses_scale else (f" {scale:g}" if scale is not None else " (default scale)")
            # The exact count (the last step is Euler), not request.model_evaluations, which is an upper bound.
            row.append(Tile(cell, f"{method}{shown} · {solver} {steps} steps · {cell.planned_evaluations} evals", request))
        rows.append(row)
    return rows


class CompareScreen(Screen):
    AUTO_FOCUS = "#compare-prompt"
    BINDINGS = [Binding("ctrl+r", "run_grid", "Run grid", id="compare.run")]

    def __init__(self) -> None:
        super().__init__(id="compare")
        self.cells: dict[int, Picture] = {}  # job id -> its tile

    def compose(self) -> ComposeResult:
        preset_breakpoints(self)
        yield Header()
        with Vertical(id="compare-form", classes="panel") as form:
            form.border_title = "Compare"
            with Horizontal(classes="pair"):
                with Vertical(classes="wide"):
                    yield Label("Prompt")
                    yield TextInput(EXAMPLE_PROMPT, placeholder="(empty prompt)", id="compare-prompt", compact=True)
                with Vertical():
                    yield Label("Seed")
                    yield TextInput("0", id="compare-seed", compact=True)
                with Vertical():
                    yield Label("Euler steps")
                    yield TextInput("20", id="compare-steps", compact=True)
            with Horizontal(classes="pair"):
                with Vertical(classes="wide"):
                    yield Label("Methods (method:scale ...)")
                    yield TextInput(DEFAULT_METHODS, id="compare-methods", compact=True)
                with Vertical():
                    yield Label("Solvers")
                    yield TextInput("euler", id="compare-solvers", compact=True)
                yield Button("Run grid", id="run-grid", variant="primary", compact=True)
        yield VerticalScroll(Static("the grid appears here", id="compare-empty", markup=False), id="compare-grid-box")
        yield Footer()

    def base_request(self) -> GenerationRequest:
        """The Lab's request (model, size, negative prompt ...) with this screen's prompt, seed and steps."""
        app: Any = self.app
        try:
            base = app.lab.build_request()
        except (RequestError, Exception):
            base = GenerationRequest(prompt="", model=app.model_ref)
        return base.replace(
            prompt=parse_field("prompt", self.query_one("#compare-prompt", TextInput).exact_value),
            seed=parse_field("seed", self.query_one("#compare-seed", Input).value),
            steps=parse_field("steps", self.query_one("#compare-steps", Input).value),
            prompts=(),
        )

    @on(Button.Pressed, "#run-grid")
    def _run_pressed(self) -> None:
        self.action_run_grid()

    def action_run_grid(self) -> None:
        try:
            rows = plan_grid(
                self.base_request(),
                self.query_one("#compare-methods", Input).value,
                self.query_one("#compare-solvers", Input).value,
            )
        except RequestError as exc:
            self.notify(str(exc), title="Cannot compare", severity="error", markup=False)
            return
        app: Any = self.app
        box = self.query_one("#compare-grid-box")
        box.remove_children()
        self.cells.clear()
        grid = Grid(id="compare-grid")
        grid.styles.grid_size_columns = len(rows[0])
        tiles = []
        for row in rows:
            for cell in row:
                job_id = app.submit(cell.request, owner="compare")
                if job_id is None:  # the history refused it; the app has said why
                    return
                tile = Picture(f"{cell.label}\nqueued", classes="compare-tile")
                tiles.append(tile)
                self.cells[job_id] = tile
                tile.label = cell.label  # type: ignore[attr-defined]
        box.mount(grid)
        grid.mount_all(tiles)
        self.notify(f"queued {len(tiles)} runs", markup=False)

    def run_ended(self, message: Any, owner: str) -> None:
        tile = self.cells.get(message.job_id)
        if tile is None:
            return
        label = getattr(tile, "label", "")
        if message.status == "done":
            seconds = message.stats.get("seconds")
            outcome = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else "done"
        else:
            outcome = f"{message.status}: {message.error}" if message.error else message.status
        image = message.image
        if image is not None:
            image = image.copy()
            image.thumbnail((128, 128))
        tile.show(image, f"{label}\n{outcome}")


__all__ = ["CompareScreen", "plan_grid", "parse_methods", "escape"]
