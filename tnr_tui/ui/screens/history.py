"""The History screen: the run store, one page at a time (keyset pagination on the run id)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Checkbox, DataTable, Input, Select, Static

from engine.request import GenerationRequest, RequestError
from engine.units import GUIDANCE
from tnr_tui.services.history.deleting import delete_question, is_live
from tnr_tui.services.text import visible
from tnr_tui.ui.screens import preset_breakpoints
from tnr_tui.ui.screens.dialogs import ConfirmDialog, ExportDialog, NoteDialog
from tnr_tui.ui.widgets.fields import TextInput
from tnr_tui.ui.widgets.footer import Footer
from tnr_tui.ui.widgets.gallery import Gallery
from tnr_tui.ui.widgets.header import Header
from tnr_tui.ui.widgets.picture import Picture, read_image

PAGE_SIZE = 60
PREFETCH_ROWS = 15  # fetch the next page when the cursor gets this close to the last loaded row
STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
IMAGE_KINDS = ("image", "png")
KEYS_HINT = "g gallery · t trajectory · c pair"
KEYS_HINT_SHORT = "g grid · t steps · c pair"  # fits the title of the 36-column panel of 80x24


def recorded_image(store: Any, run: Any) -> Path | None:
    """Where the run's image is recorded to be, whether or not a file is there now."""
    for kind in IMAGE_KINDS:
        out = run.output(kind)
        if out is not None:
            return store.resolve(out.path)
    return None


def run_image_path(store: Any, run: Any) -> Path | None:
    path = recorded_image(store, run)
    return path if path is not None and path.is_file() else None


def describe_run(run: Any) -> str:
    """The full parameters and outcome of a run, as plain text."""
    lines = [f"run {run.id}  ·  {run.status}  ·  {run.created_at:%Y-%m-%d %H:%M:%S} UTC"]
    if run.favourite:
        lines[0] += "  ·  ★"
    if run.error:
        lines.append(f"error: {run.error}")
    if run.seconds is not None:
        evaluations = "" if run.model_evaluations is None else f" · {run.model_evaluations} model evaluations"
        lines.append(f"{run.seconds:.2f} s{evaluations}")
    if run.metrics:
        lines.append(" · ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in sorted(run.metrics.items())))
    if run.notes:
        lines.append(f"note: {run.notes}")
    if run.model_name or run.device:
        lines.append(f"model: {run.model_name or run.model} on {run.device or '?'} {run.dtype or ''}".rstrip())
    lines.append("")
    for key, value in sorted(run.request.items()):
        if key == "format":
            continue
        lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    # Every value may come from an import: one line each, control characters shown (tnr_tui.services.text).
    return "\n".join(visible(line) for line in lines)


def export_run(store: Any, run: Any, fmt: str, path: Path) -> Path:
    """Write one run: its PNG (with metadata), its whole record as JSON, or its bare request as JSON."""
    if fmt == "png":
        source = run_image_path(store, run)
        if source is None:
            raise ValueError(f"run {run.id} has no image file")
        shutil.copyfile(source, path)
    elif fmt == "json":
        path.write_text(json.dumps(run.to_dict(), indent=2, sort_keys=True, default=str, ensure_ascii=False))
    elif fmt == "request":
        path.write_text(json.dumps(run.request, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return path


class HistoryScreen(Screen):
    """Search and filter runs; select one to see its picture and parameters; act on it."""

    AUTO_FOCUS = "#runs"
    BINDINGS = [
        Binding("slash", "focus_search", "Search", id="history.search"),
        Binding("r", "rerun", "Re-run", id="history.rerun"),
        Binding("l", "load", "Load into Lab", id="history.load"),
        Binding("f", "favourite", "Favourite", id="history.favourite"),
        Binding("n", "note", "Note", id="history.note"),
        Binding("e", "export", "Export", id="history.export"),
        Binding("delete", "delete", "Delete", id="history.delete"),
        # Named on the Run panel's border (KEYS_HINT), not in the footer, which they would push off 150 columns.
        Binding("g", "gallery", "Gallery", id="history.gallery", show=False),
        Binding("t", "trajectory", "Trajectory", id="history.trajectory", show=False),
        # c marks a run, c on another opens the two side by side (c on the marked one unmarks it).
        Binding("c", "pair", "Pair", id="history.pair", show=False),
        Binding("ctrl+l", "refresh", "Refresh", id="history.refresh", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="history")
        self._last_id: str | None = None
        self._exhausted = False
        self._runs: dict[str, Any] = {}
        self._search_timer: Timer | None = None
        self.pages_loaded = 0
        self.marked: str | None = None  # the run a pair compares against (c)

    def compose(self) -> ComposeResult:
        preset_breakpoints(self)
        yield Header()
        with Horizontal(id="history-filters"):
            yield TextInput(placeholder="search prompts  (/)", id="search", compact=True)
            yield Select(
                [("any status", "")] + [(s, s) for s in STATUSES],
                value="",
                allow_blank=False,
                id="status-filter",
                compact=True,
            )
            yield Select(
                [("any method", "")] + [(m, m) for m in GUIDANCE.names()],
                value="",
                allow_blank=False,
                id="method-filter",
                compact=True,
            )
            yield Checkbox("★ only", False, id="favourite-filter", compact=True)
        with Horizontal(id="history-body"):
            table: DataTable[Any] = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield table
            with Vertical(id="gallery-box"):
                yield Static("", id="gallery-status", markup=False)
                yield Gallery(self._gallery_page, self._thumbnail_path, id="gallery")
            with VerticalScroll(id="run-detail", classes="panel") as detail:
                detail.border_title = "Run"
                yield Picture("", id="thumb")
                yield Static("select a run", id="run-params", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        for label, key in (
            ("id", "id"),
            ("when", "when"),
            ("status", "status"),
            ("★", "fav"),
            ("method", "method"),
            ("scale", "scale"),
            ("solver", "solver"),
            ("steps", "steps"),
            ("seed", "seed"),
            ("prompt", "prompt"),
        ):
            table.add_column(label, key=key)
        self.reload()

    def on_resize(self) -> None:
        # A short terminal's panels have no bottom border (app.tcss): the hint goes into the title there.
        detail = self.query_one("#run-detail")
        if self.has_class("-short"):
            detail.border_title, detail.border_subtitle = f"Run · {KEYS_HINT_SHORT}", ""
        else:
            detail.border_title, detail.border_subtitle = "Run", KEYS_HINT

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.reload(same_page=True)

    # ---- loading pages ----

    def filters(self) -> Any:
        from tnr_tui.services.history import RunFilter

        status = self.query_one("#status-filter", Select).value
        method = self.query_one("#method-filter", Select).value
        return RunFilter(
            text=self.query_one("#search", Input).value.strip() or None,
            status=str(status) or None,
            guidance=str(method) or None,
            favourite=True if self.query_one("#favourite-filter", Checkbox).value else None,
        )

    def reload(self, same_page: bool = False) -> None:
        """Reload the list's first page, and the gallery's first page (`same_page`: the page it shows, as when
        coming back from a trajectory or when a run ended while the user browses page 7)."""
        table = self.query_one("#runs", DataTable)
        selected = self.selected_id()
        table.clear()
        self._runs.clear()
        self._last_id, self._exhausted, self.pages_loaded = None, False, 0
        self.load_page()
        if selected in self._runs:
            table.move_cursor(row=table.get_row_index(selected))
        if self.gallery_shown:
            gallery = self.query_one("#gallery", Gallery)
            if same_page:
                gallery.show_page(keep_id=getattr(gallery.selected_run(), "id", None))
            else:
                gallery.reset(keep=gallery.selected_run())
        self._show_selected()

    def load_page(self) -> int:
        """Append the next page (PAGE_SIZE runs after the last loaded id); the store never returns all rows."""
        if self._exhausted:
            return 0
        app: Any = self.app
        try:
            runs = app.store.list_runs(self.filters(), after=self._last_id, limit=PAGE_SIZE)
        except Exception as exc:  # HistoryUnavailable or a database error: say so, show what is loaded
            from tnr_tui.ui.worker import describe_error

            self._exhausted = True
            self.notify(describe_error(exc), title="History", severity="error", markup=False, timeout=10)
            return 0
        table = self.query_one("#runs", DataTable)
        for run in runs:
            self._runs[run.id] = run
            table.add_row(*self._cells(run), key=run.id)
        self.pages_loaded += 1
        if runs:
            self._last_id = runs[-1].id
        self._exhausted = len(runs) < PAGE_SIZE
        return len(runs)

    @staticmethod
    def _cells(run: Any) -> list[Any]:
        scale = "" if run.scale is None else f"{run.scale:g}"
        prompt = visible(run.prompt.replace("\n", " "))
        cells = [
            run.id[-8:],
            f"{run.created_at:%m-%d %H:%M}",
            run.status,
            "★" if run.favourite else "",
            run.guidance,
            scale,
            run.solver,
            str(run.steps),
            str(run.seed),
            prompt[:60] + ("…" if len(prompt) > 60 else ""),
        ]
        # Text objects: DataTable would read a plain str as markup; visible: an import may hold any text.
        return [Text(visible(cell)) for cell in cells]

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = self.query_one("#runs", DataTable)
        if event.cursor_row >= table.row_count - PREFETCH_ROWS:
            self.load_page()
        self._show_selected()

    @on(Input.Changed, "#search")
    def _search_changed(self) -> None:
        # Debounced: a query per keystroke would be wasted work on a large history.
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(0.2, self.reload)

    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _filter_changed(self) -> None:
        if self.is_mounted:
            self.reload()

    # ---- the gallery (g): the same filters, one page of thumbnails at a time ----

    @property
    def gallery_shown(self) -> bool:
        return self.has_class("-gallery")

    def _gallery_page(self, after: str | None, limit: int) -> list[Any]:
        app: Any = self.app
        return app.store.list_runs(self.filters(), after=after, limit=limit)

    def _thumbnail_path(self, run: Any) -> Path | None:
        app: Any = self.app
        return recorded_image(app.store, run)

    def action_gallery(self) -> None:
        """Switch between the list and the gallery; the selected run stays selected if the page shows it."""
        keep = self.selected_run()
        self.toggle_class("-gallery")
        if self.gallery_shown:
            self.call_after_refresh(self._show_gallery, keep)
        else:
            table = self.query_one("#runs", DataTable)
            if keep is not None and keep.id in table.rows:
                table.move_cursor(row=table.get_row_index(keep.id))
            table.focus()
            self._show_selected()

    def _show_gallery(self, keep: Any) -> None:
        gallery = self.query_one("#gallery", Gallery)
        gallery.fit_tiles()
        gallery.reset(keep=keep)
        gallery.focus()

    @on(Gallery.Highlighted, "#gallery")
    def _gallery_highlighted(self) -> None:
        gallery = self.query_one("#gallery", Gallery)
        first = gallery.page * gallery.page_size + 1
        if gallery.runs:
            where = f"page {gallery.page + 1} · runs {first}–{first + len(gallery.runs) - 1}"
            more = "pgdn: more" if gallery.has_next else "the last page"
            text = f"{where} · {more}" + (" · pgup: back" if gallery.page else "")
        else:
            text = "no runs match"
        self.query_one("#gallery-status", Static).update(text)
        self._show_selected()

    def selected_id(self) -> str | None:
        if self.gallery_shown:
            run = self.query_one("#gallery", Gallery).selected_run()
            return run.id if run is not None else None
        table = self.query_one("#runs", DataTable)
        if table.row_count == 0:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:  # no cursor row yet
            return None

    def selected_run(self) -> Any:
        if self.gallery_shown:
            return self.query_one("#gallery", Gallery).selected_run()
        run_id = self.selected_id()
        return self._runs.get(run_id) if run_id else None

    def _acted_on(self) -> Any:
        """The selected run for a key's action; with none (an empty list, a search that matches nothing), a
        short notice instead of silence."""
        run = self.selected_run()
        if run is None:
            self.notify("no run selected: the list is empty", severity="warning", timeout=3, markup=False)
        return run

    def _show_selected(self) -> None:
        run = self.selected_run()
        thumb = self.query_one("#thumb", Picture)
        params = self.query_one("#run-params", Static)
        if run is None:
            thumb.show(None, "")
            params.update("no runs match" if self.pages_loaded else "select a run")
            return
        app: Any = self.app
        path = recorded_image(app.store, run)
        if path is None:
            thumb.show(None, "no image")
        else:
            thumb.show(*read_image(path))  # a damaged or missing file is its caption, not a crash
        text = describe_run(run)
        if self.marked == run.id:
            text = "marked for a pair: c on another run compares the two\n" + text
        params.update(text)

    def _refresh_run(self, run_id: str) -> None:
        app: Any = self.app
        run = app.store.get_run(run_id)
        if run is None:
            return
        self._runs[run_id] = run
        table = self.query_one("#runs", DataTable)
        if run_id in table.rows:  # a run the gallery shows may be on a page the list has not loaded
            for key, cell in zip(
                ("id", "when", "status", "fav", "method", "scale", "solver", "steps", "seed", "prompt"),
                self._cells(run),
                strict=True,
            ):
                table.update_cell(run_id, key, cell)
        self.query_one("#gallery", Gallery).replace_run(run)
        self._show_selected()

    # ---- actions ----

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_refresh(self) -> None:
        self.reload()

    def _request_of(self, run: Any) -> GenerationRequest | None:
        try:
            return GenerationRequest.from_dict(run.request)
        except RequestError as exc:
            self.notify(f"run {run.id}: {exc}", severity="error", markup=False)
            return None

    def action_rerun(self) -> None:
        run = self._acted_on()
        request = run and self._request_of(run)
        if request is None:
            return
        app: Any = self.app
        if app.submit(request, owner="history", parent_id=run.id) is not None:
            self.notify(f"re-running {run.id[-8:]}", markup=False)

    def action_load(self) -> None:
        run = self._acted_on()
        request = run and self._request_of(run)
        if request is None:
            return
        app: Any = self.app
        app.switch_mode("lab")
        message = f"loaded run {run.id[-8:]} into the Lab"
        if app.lab.load_request(request):
            message += (
                "; its text has control characters, shown as escapes (\\x1b ...);"
                " it runs exactly as recorded unless you edit the field"
            )
        app.notify(message, markup=False, timeout=8)

    def _store_call(self, what: str, call: Any) -> tuple[bool, Any]:
        """(True, result) or (False, None) after an error notification: a busy, read-only or damaged history
        is a message here, never a crash of the app."""
        try:
            return True, call()
        except Exception as exc:
            from tnr_tui.ui.worker import describe_error

            self.notify(f"{what}: {describe_error(exc)}", title="History", severity="error", markup=False, timeout=10)
            return False, None

    def action_favourite(self) -> None:
        run = self._acted_on()
        if run is None:
            return
        app: Any = self.app
        ok, _ = self._store_call("cannot mark it", lambda: app.store.set_favourite(run.id, not run.favourite))
        if ok:
            self._refresh_run(run.id)

    def action_note(self) -> None:
        run = self._acted_on()
        if run is None:
            return

        def save(note: str | None) -> None:
            if note is not None:
                app: Any = self.app
                if self._store_call("cannot save the note", lambda: app.store.set_note(run.id, note))[0]:
                    self._refresh_run(run.id)

        self.app.push_screen(NoteDialog(run.notes), save)

    def action_export(self) -> None:
        run = self._acted_on()
        if run is None:
            return
        app: Any = self.app

        def export(choice: tuple[str, Path] | None) -> None:
            if choice is None:
                return
            try:
                path = export_run(app.store, run, *choice)
            except (OSError, ValueError) as exc:
                self.notify(str(exc), title="Export failed", severity="error", markup=False)
                return
            self.notify(f"exported to {path}", markup=False)

        self.app.push_screen(ExportDialog(Path.cwd(), run.id), export)

    def action_delete(self) -> None:
        run = self._acted_on()
        if run is None:
            return
        app: Any = self.app
        ok, current = self._store_call("cannot delete it", lambda: app.store.get_run(run.id))
        if not ok:
            return
        if current is not None and is_live(app.store, current):
            # Deleting it under the sampler lost the run (its image was written nowhere) while the toast
            # claimed its files: a live run is cancelled first, then deleted.
            self.notify(
                f"run {run.id[-8:]} is {current.status}: cancel it first (escape in the Lab), then delete it",
                title="Not deleted",
                severity="warning",
                markup=False,
            )
            return
        ok, files = self._store_call("cannot delete it", lambda: app.store.files_to_delete(run.id))
        if not ok:
            return

        def delete(confirmed: bool | None) -> None:
            if not confirmed:
                return
            ok, removed = self._store_call(
                f"run {run.id[-8:]}", lambda: app.store.delete_run(run.id, delete_files=True)
            )
            # A file that could not be removed fails the call after the row went: the run is gone either way.
            if ok or self._store_call("cannot re-read it", lambda: app.store.get_run(run.id)) == (True, None):
                self._runs.pop(run.id, None)
                table = self.query_one("#runs", DataTable)
                if run.id in table.rows:
                    table.remove_row(run.id)
                if self.gallery_shown:
                    self.query_one("#gallery", Gallery).show_page()  # the page closes the gap
                self._show_selected()
            if ok:
                self.notify(f"deleted run {run.id[-8:]} and {len(removed)} file(s)", markup=False)

        self.app.push_screen(ConfirmDialog(delete_question(app.store, run, files)), delete)

    def action_trajectory(self) -> None:
        from tnr_tui.ui.screens.trajectory import TrajectoryScreen

        run = self._acted_on()
        if run is not None:
            self.app.push_screen(TrajectoryScreen(run.id))

    def action_pair(self) -> None:
        run = self._acted_on()
        if run is None:
            return
        if self.marked is None or self.marked == run.id:
            self.marked = None if self.marked == run.id else run.id
            if self.marked:
                self.notify(f"run {run.id[-8:]} marked: select another run and press c", timeout=4, markup=False)
            self._show_selected()
            return
        from tnr_tui.ui.screens.pair import PairScreen

        self.app.push_screen(PairScreen(self.marked, run.id))

    def run_ended(self, message: Any, owner: str) -> None:
        """A run ended somewhere: show the newest runs (a cheap first-page query)."""
        self.reload(same_page=True)
