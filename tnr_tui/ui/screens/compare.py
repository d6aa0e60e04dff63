"""The Compare screen: one prompt and seed across guidance methods and scales (rows: solvers, matched by
model evaluations), as a grid of labelled thumbnails. Every cell is an ordinary queued run in the history.

"Seeds per tile" N: each tile shows seeds S..S+N-1 side by side. They are queued one behind the other and
differ only in the seed, so the device worker samples them as one batch (engine.sampler.sample_batch)."""

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
from textual.widgets import Button, Input, Label, Static

from engine.batch import MAX_BATCH
from engine.request import GenerationRequest, RequestError, parse_field
from engine.units import GUIDANCE, SOLVERS
from tnr_tui.services.cells import GridCell
from tnr_tui.ui.screens import preset_breakpoints
from tnr_tui.ui.screens.lab import EXAMPLE_PROMPT
from tnr_tui.ui.widgets.fields import TextInput
from tnr_tui.ui.widgets.footer import Footer
from tnr_tui.ui.widgets.header import Header
from tnr_tui.ui.widgets.picture import Picture

DEFAULT_METHODS = "none cfg:3 cfg:7 cfg++:0.8 tnr tnr-cfg:5"
TILE_PX = 128  # a tile's picture: the seeds side by side, each shrunk to this height


def seeds_per_tile(text: str) -> int:
    """The 'Seeds per tile' field: a whole number 1..MAX_BATCH (RequestError otherwise)."""
    try:
        value = int(text.strip() or "1")
    except ValueError:
        raise RequestError(f"seeds per tile must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_BATCH:
        raise RequestError(f"seeds per tile must be 1 to {MAX_BATCH}, got {value}")
    return value


def strip(images: list[Any]) -> Any:
    """The tile's picture: its seeds' images side by side (a grey square where one is not there yet)."""
    from PIL import Image

    cells = []
    for image in images:
        if image is None:
            cells.append(Image.new("RGB", (TILE_PX, TILE_PX), (40, 40, 40)))
            continue
        cell = image.convert("RGB").copy()
        cell.thumbnail((TILE_PX, TILE_PX))
        cells.append(cell)
    if len(cells) == 1:
        return cells[0]
    out = Image.new("RGB", (sum(c.width for c in cells) + 2 * (len(cells) - 1), max(c.height for c in cells)))
    x = 0
    for cell in cells:
        out.paste(cell, (x, 0))
        x += cell.width + 2
    return out


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
            shown = (
                ""
                if not GUIDANCE.get(method).uses_scale
                else (f" {scale:g}" if scale is not None else " (default scale)")
            )
            # The exact count (the last step is Euler), not request.model_evaluations, which is an upper bound.
            row.append(
                Tile(cell, f"{method}{shown} · {solver} {steps} steps · {cell.planned_evaluations} evals", request)
            )
        rows.append(row)
    return rows


class CompareScreen(Screen):
    AUTO_FOCUS = "#compare-prompt"
    BINDINGS = [Binding("ctrl+r", "run_grid", "Run grid", id="compare.run")]

    def __init__(self) -> None:
        super().__init__(id="compare")
        self.cells: dict[int, tuple[Picture, int]] = {}  # job id -> its tile and the seed's place in it
        self.tile_state: dict[int, dict[str, Any]] = {}  # id(tile) -> images and outcomes of its seeds

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
                    yield Label("Seeds per tile")
                    yield TextInput("1", id="compare-seeds", compact=True)
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
            count = seeds_per_tile(self.query_one("#compare-seeds", Input).value)
        except RequestError as exc:
            self.notify(str(exc), title="Cannot compare", severity="error", markup=False)
            return
        app: Any = self.app
        box = self.query_one("#compare-grid-box")
        box.remove_children()
        self.cells.clear()
        self.tile_state.clear()
        # A class, not an id: the old grid's removal finishes after this one mounts (a second run's grid with
        # the same id was a DuplicateIds crash).
        grid = Grid(classes="compare-grid")
        grid.styles.grid_size_columns = len(rows[0])
        tiles = []
        queued = 0
        for row in rows:
            for cell in row:
                tile = Picture(f"{cell.label}\nqueued", classes="compare-tile")
                tile.label = cell.label  # type: ignore[attr-defined]
                self.tile_state[id(tile)] = {"images": [None] * count, "outcomes": [None] * count}
                if count == 1:
                    job_ids = [app.submit(cell.request, owner="compare")]
                else:  # the tile's seeds as one item of the queue: the worker samples them as one batch
                    seeds = [cell.request.replace(seed=cell.request.seed + k) for k in range(count)]
                    job_ids = app.submit_batch(seeds, owner="compare") or [None]
                if None in job_ids:  # the history refused it; the app has said why
                    return
                for k, job_id in enumerate(job_ids):
                    self.cells[job_id] = (tile, k)
                queued += len(job_ids)
                tiles.append(tile)
        box.mount(grid)
        grid.mount_all(tiles)
        self.notify(f"queued {queued} runs", markup=False)

    def run_ended(self, message: Any, owner: str) -> None:
        placed = self.cells.get(message.job_id)
        if placed is None:
            return
        tile, k = placed
        state = self.tile_state[id(tile)]
        label = getattr(tile, "label", "")
        if message.status == "done":
            seconds = message.stats.get("seconds")
            outcome = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else "done"
        else:
            outcome = f"{message.status}: {message.error}" if message.error else message.status
        state["images"][k] = message.image
        state["outcomes"][k] = (message.status, outcome, message.stats.get("batch"))
        images, outcomes = state["images"], state["outcomes"]
        if len(images) > 1:  # "3/4 seeds done · batch of 4": how far the tile is
            finished = [o for o in outcomes if o is not None]
            done = sum(o[0] == "done" for o in finished)
            batch = next((o[2] for o in finished if o[2]), None)
            failed = [o[1] for o in finished if o[0] != "done"]
            outcome = f"{done}/{len(images)} seeds" + (f" · batch of {batch['size']}" if batch else "")
            if failed:
                outcome += f" · {failed[0]}"
        shown = None if all(i is None for i in images) else strip(images)
        tile.show(shown, f"{label}\n{outcome}")


__all__ = ["CompareScreen", "plan_grid", "parse_methods", "escape"]
