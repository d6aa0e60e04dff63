"""A run's trajectory: scrub through its steps (frame, sigma, the telemetry row) with the plot's cursor on it.

Opened from the History (t). What a run kept decides what shows: its telemetry rows (`Store.run_steps`; runs
recorded before telemetry, or with it off, have none) and its frames (`Store.run_frames`: the latent-to-RGB
preview of every step, and the decoded image every `decode_every` steps, when the run was made with
`keep_frames`). Both are read off the UI thread; a missing or damaged file is a line on the screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
from tnr_tui.ui.widgets.choice import Choice
from tnr_tui.ui.widgets.footer import Footer
from tnr_tui.ui.widgets.header import Header
from tnr_tui.ui.widgets.picture import Picture
from tnr_tui.ui.widgets.plot import LinePlot
from tnr_tui.ui.widgets.telemetry import (
    DEFAULT_CHOICE,
    SeriesChoice,
    choice,
    choices_for,
    has_values,
    row_items,
    series_of,
)

FRAME_MAX_PX = 256  # frames are shrunk to this once loaded (a decoded SDXL frame is 1024 px)
KIND_NAMES = {"frames": "latent preview", "decoded_frames": "decoded"}


@dataclass
class Trajectory:
    """What one run kept of its trajectory, loaded (`load_trajectory`)."""

    run: Any
    rows: list[dict[str, Any]] = field(default_factory=list)  # telemetry, one dict a step
    columns: tuple[str, ...] = ()
    frames: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)  # kind -> (step index, image)
    notes: list[str] = field(default_factory=list)  # why something is missing, for the screen

    @property
    def steps(self) -> int:
        """How many steps the run has to scrub through."""
        counts = [len(self.rows)] + [frames[-1][0] + 1 for frames in self.frames.values() if frames]
        recorded = int(self.run.steps or 0) if self.run is not None else 0
        if self.run is not None and getattr(self.run, "status", "done") in ("failed", "cancelled", "interrupted"):
            recorded = 0  # the request's steps were planned, not taken: "no steps", not "step 20/20"
        return max(counts) if max(counts) else recorded

    @property
    def sigmas(self) -> list[float | None]:
        return [row.get("sigma") for row in self.rows]

    def row(self, index: int) -> dict[str, Any] | None:
        return self.rows[index] if 0 <= index < len(self.rows) else None

    def _why_no_frames(self) -> str:
        """Why a run has no frames at all: not asked for, or it ended (failed, cancelled) before it kept one."""
        run = self.run
        try:
            asked = bool(run.request.get("keep_frames")) if run is not None else False
        except (AttributeError, TypeError, ValueError):  # a row without a readable request
            asked = False
        if not asked:
            return "no frames: this run did not keep them (keep_frames off)"
        status = getattr(run, "status", "")
        if status in ("failed", "cancelled", "interrupted"):
            return f"no frames: the run {status} before it kept any"
        return "no frames: none were recorded for this run"

    def kinds(self) -> list[str]:
        return [kind for kind in KIND_NAMES if self.frames.get(kind)]

    def frame(self, index: int, kind: str) -> tuple[Any, str]:
        """(image, caption) of the frame showing step `index`: the latest kept at or before it."""
        frames = self.frames.get(kind) or []
        best = None
        for step, image in frames:
            if step <= index:
                best = (step, image)
        if best is None:
            if not self.frames:
                return None, self._why_no_frames()
            first = frames[0][0] + 1 if frames else "?"
            return None, f"no {KIND_NAMES.get(kind, kind)} frame yet (the first is at step {first})"
        step, image = best
        where = "" if step == index else f" (kept at step {step + 1})"
        return image, f"{KIND_NAMES.get(kind, kind)}, step {index + 1}{where}"


def load_trajectory(store: Any, run_id: str, max_px: int = FRAME_MAX_PX) -> Trajectory:
    """The run's rows and frames (frames shrunk to `max_px`); what cannot be read is a note, not an error."""
    from tnr_tui.services.history.frames import FramesError

    run = store.get_run(run_id)
    if run is None:
        return Trajectory(None, notes=[f"no run with id {run_id}"])
    trajectory = Trajectory(run)
    try:
        table = store.run_steps(run_id)
    except Exception as exc:  # HistoryError for a damaged row
        table, message = None, f"telemetry unreadable: {exc}"
        trajectory.notes.append(message)
    if table is not None:
        trajectory.rows, trajectory.columns = table.as_dicts(), tuple(table.columns)
    elif not trajectory.notes:
        trajectory.notes.append("no telemetry rows: recorded before telemetry, with it off, or not finished")
    try:
        kept = store.run_frames(run_id)
    except Exception as exc:
        kept = None
        trajectory.notes.append(f"frames unreadable: {exc}")
    for kind in kept.paths if kept else ():
        try:
            images = kept.load(kind)
        except FramesError as exc:
            trajectory.notes.append(str(exc))
            continue
        steps = kept.steps.get(kind) or list(range(len(images)))
        for image in images:
            image.thumbnail((max_px, max_px))
        trajectory.frames[kind] = list(zip(steps, images, strict=False))
    return trajectory


def run_label(run: Any) -> str:
    """One line naming a run: id, method (scale), solver, steps, seed."""
    if run is None:
        return "?"
    scale = "" if run.scale is None else f" {run.scale:g}"
    return visible(f"{run.id[-8:]} · {run.guidance}{scale} · {run.solver} · {run.steps} steps · seed {run.seed}")


def scrub_index(index: int, steps: int, clamp: bool = False) -> int:
    """The step a scrubbing key lands on: a negative `index` counts from the end (end: -1) unless `clamp`
    (left/right at the edges stay there); always within the run's steps."""
    if index < 0 and not clamp:
        index = steps + index
    return min(max(index, 0), max(steps - 1, 0))


def next_kind(kinds: Sequence[str], current: str) -> str:
    """`d`: the frame kind after `current` among `kinds` (round), or the first when `current` is not one."""
    return kinds[(kinds.index(current) + 1) % len(kinds)] if current in kinds else kinds[0]


def numbers_text(items: Sequence[tuple[str, str]], rows: int, label_width: int = 11, room: int | None = None) -> str:
    """(label, value) pairs laid out in columns of `rows` lines (so a short screen shows them all), and in no
    more columns than `room` cells hold: past it the lines wrapped, a label on one line and its value on the
    next (80x24, found in tmux); then the columns are longer than `rows`."""
    rows = max(rows, 1)
    width = max((len(v) for _, v in items), default=0)
    if room is not None and items:
        fit = max(1, (room + 3) // (label_width + 1 + width + 3))
        rows = max(rows, -(-len(items) // fit))
    columns = [items[k : k + rows] for k in range(0, len(items), rows)]
    lines = []
    for r in range(min(rows, len(items))):
        cells = [f"{col[r][0]:<{label_width}} {col[r][1]:>{width}}" for col in columns if r < len(col)]
        lines.append("   ".join(cells))
    return "\n".join(lines)


class TrajectoryScreen(Screen):
    """One run's steps: ←/→ scrub, home/end jump, d switches latent previews and decoded frames."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="trajectory.back"),
        Binding("left", "step(-1)", "Step back", id="trajectory.back_step"),
        Binding("right", "step(1)", "Step on", id="trajectory.next_step"),
        Binding("pageup", "step(-10)", "−10", show=False, id="trajectory.back_10"),
        Binding("pagedown", "step(10)", "+10", show=False, id="trajectory.next_10"),
        Binding("home", "go(0)", "First", show=False, id="trajectory.first"),
        Binding("end", "go(-1)", "Last", show=False, id="trajectory.last"),
        Binding("d", "kind", "Decoded/preview", id="trajectory.kind"),
        Binding("left_square_bracket", "series(-1)", "Series", show=False, id="trajectory.series_back"),
        Binding("right_square_bracket", "series(1)", "Series", id="trajectory.series_next"),
    ]
    AUTO_FOCUS = None  # ←/→ belong to the scrubber, not to a focused drop-down

    def __init__(self, run_id: str) -> None:
        super().__init__(id="trajectory")
        self.run_id = run_id
        self.trajectory: Trajectory | None = None
        self.index = 0
        self.kind = "frames"

    def compose(self) -> ComposeResult:
        preset_breakpoints(self)
        yield Header()
        yield Static(f"run {self.run_id[-8:]}: loading…", id="traj-title", markup=False)
        with Horizontal(id="traj-top"):
            yield Picture("loading frames…", id="traj-frame")
            yield Static("", id="traj-numbers", markup=False)
        with Vertical(id="traj-plot-box"):
            yield Choice([(c.label, c.key) for c in choices_for()], DEFAULT_CHOICE, id="traj-series")
            yield LinePlot("loading…", id="traj-plot")
        yield Footer()

    def on_mount(self) -> None:
        app: Any = self.app
        store = app.store
        self.run_worker(lambda: load_trajectory(store, self.run_id), thread=True, exit_on_error=False, name="load")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "load":
            return
        if event.state == WorkerState.SUCCESS:
            self.loaded(event.worker.result)
        elif event.state == WorkerState.ERROR:
            from tnr_tui.ui.worker import describe_error

            self.loaded(Trajectory(None, notes=[f"cannot read the run: {describe_error(event.worker.error)}"]))

    def loaded(self, trajectory: Trajectory) -> None:
        """Show a loaded trajectory at its last step (the final image's)."""
        self.trajectory = trajectory
        kinds = trajectory.kinds()
        self.kind = kinds[0] if kinds else "frames"
        select = self.query_one("#traj-series", Choice)
        select.set_options([(c.label, c.key) for c in choices_for(trajectory.columns)])
        self.index = max(trajectory.steps - 1, 0)
        title = f"run {run_label(trajectory.run)}"
        if trajectory.notes:
            title += "\n" + "\n".join(trajectory.notes)
        self.query_one("#traj-title", Static).update(visible(title, keep_newlines=True))
        self.show_step()

    # ---- scrubbing ----

    def action_step(self, delta: int) -> None:
        self.action_go(self.index + delta, clamp=True)

    def action_go(self, index: int, clamp: bool = False) -> None:
        if self.trajectory is None:
            return
        self.index = scrub_index(index, self.trajectory.steps, clamp)
        self.show_step()

    def action_series(self, delta: int) -> None:
        """[ and ]: the plot's previous or next series (enter on the focused picker does it too)."""
        self.query_one("#traj-series", Choice).action_step(delta)

    def action_kind(self) -> None:
        kinds = self.trajectory.kinds() if self.trajectory else []
        if len(kinds) > 1:
            self.kind = next_kind(kinds, self.kind)
            self.show_step()
        elif self.trajectory is not None:
            self.notify("this run kept one kind of frame" if kinds else "this run kept no frames", timeout=3)

    @on(Choice.Changed, "#traj-series")
    def _series_changed(self) -> None:
        if self.trajectory is not None:
            self.show_step(replot=True)

    def chosen(self) -> SeriesChoice:
        return choice(str(self.query_one("#traj-series", Choice).value))

    def show_step(self, replot: bool = True) -> None:
        trajectory = self.trajectory
        if trajectory is None:
            return
        steps, i = trajectory.steps, self.index
        image, caption = trajectory.frame(i, self.kind)
        self.query_one("#traj-frame", Picture).show(image, caption)
        row = trajectory.row(i)
        head = f"step {i + 1}/{steps}" if steps else "no steps"
        items = row_items(row)
        box = self.query_one("#traj-numbers")
        height = max(box.size.height - 1, 4)
        room = box.size.width or None
        text = head + "\n" + numbers_text(items, height, room=room) if items else head + "\n(no telemetry row)"
        self.query_one("#traj-numbers", Static).update(text)
        chosen = self.chosen()
        plot = self.query_one("#traj-plot", LinePlot)
        if replot:
            rows = trajectory.rows
            empty = (
                "no telemetry rows for this run"
                if not rows
                else ""
                if has_values(rows, chosen)
                else f"{chosen.label}: none in this run"
            )
            series = series_of(rows, chosen, x="step")
            x_range = (1.0, float(steps)) if steps > 1 else None
            plot.plot(
                series,
                x_range=x_range,
                log_y=chosen.log_y,
                cursor=float(i + 1),
                x_label="step",
                empty=empty,
                legend=len(series) > 1,
            )
        else:
            plot.set_cursor(float(i + 1))

    def on_resize(self) -> None:
        if self.trajectory is not None:
            self.show_step(replot=False)
