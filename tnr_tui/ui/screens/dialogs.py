"""Small modal dialogs: confirm, note, export. Text shown is always literal (no markup)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from tnr_tui.services.text import visible
from tnr_tui.ui.widgets.fields import TextInput

EXPORT_FORMATS: tuple[str, ...] = ("png", "json", "request")


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel", id="dialog.cancel")]

    def __init__(self, question: str, confirm_label: str = "Delete") -> None:
        super().__init__(classes="dialog-screen")
        self.question, self.confirm_label = question, confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(visible(self.question, keep_newlines=True), markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.confirm_label, variant="error", id="confirm")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


class NoteDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="dialog.cancel")]

    def __init__(self, note: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Note")
            yield TextInput(self.note, id="note-text")  # an imported note shows escaped, kept exact
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.dismiss(self.query_one("#note-text", TextInput).exact_value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.query_one("#note-text", TextInput).exact_value if event.button.id == "save" else None)


class ExportDialog(ModalScreen[tuple[str, Path] | None]):
    """Choose a format (the image, the run as JSON, the bare request) and a path."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="dialog.cancel")]

    def __init__(self, default_dir: Path, run_id: str) -> None:
        super().__init__(classes="dialog-screen")
        self.default_dir, self.run_id = default_dir, run_id
        self._overwrite: tuple[str, Path] | None = None  # the export confirmed to replace an existing file

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(escape(visible(f"Export run {self.run_id}")))
            yield Label("Format")
            yield Select([(f, f) for f in EXPORT_FORMATS], value="png", allow_blank=False, id="export-format")
            yield Label("Path")
            yield TextInput(str(self.default_dir / f"{self.run_id}.png"), id="export-path")
            yield Static("", id="export-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", variant="primary", id="export")
                yield Button("Cancel", id="cancel")

    @on(Select.Changed, "#export-format")
    def _format_changed(self, event: Select.Changed) -> None:
        path_input = self.query_one("#export-path", Input)
        suffix = ".png" if event.value == "png" else ".json"
        path_input.value = str(Path(path_input.value).with_suffix(suffix))

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._export()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self._export()
        else:
            self.dismiss(None)

    def _export(self) -> None:
        raw = self.query_one("#export-path", TextInput).exact_value.strip()
        if not raw:
            self.query_one("#export-error", Static).update("give a path")
            return
        path = Path(raw).expanduser()
        if not path.parent.is_dir():
            self.query_one("#export-error", Static).update(visible(f"no such directory: {path.parent}"))
            return
        if path.is_dir():  # said here, with the dialog still open, as a missing directory is
            self.query_one("#export-error", Static).update(visible(f"{path} is a directory: give a file name in it"))
            return
        choice = (str(self.query_one("#export-format", Select).value), path)
        if path.exists() and self._overwrite != choice:
            # The user's file is not replaced unasked (it was, silently): the same export again confirms it.
            self._overwrite = choice
            self.query_one("#export-error", Static).update(
                visible(f"{path} exists: press Export again to replace it, or change the path")
            )
            return
        self.dismiss(choice)
