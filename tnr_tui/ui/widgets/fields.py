"""Form fields that validate as you type with the request's own rules (engine.request.parse_field)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.validation import ValidationResult, Validator
from textual.widget import Widget
from textual.widgets import Input, Label, Static

from engine.request import RequestError, parse_field
from tnr_tui.services.text import visible


class TextInput(Input):
    """An Input that never holds a control character: Textual writes an Input's text to the terminal as it is,
    so an ESC in a prompt from an import would retitle the window or clear the screen (tried in tmux).

    Its value is `visible(text)`: pasted control characters become their escapes (as typed text). A text given
    with control characters (a run loaded from the history) is shown escaped and kept exact: `exact_value`
    returns it while the field shows it unchanged, so a re-run samples the very prompt that was recorded.
    """

    def __init__(self, value: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._exact: str | None = None
        self.show_exact(value)

    def validate_value(self, value: str) -> str:
        return visible(value)

    def show_exact(self, text: str) -> None:
        """Show `text` (escaped if it must be) and keep it exact while it is not edited."""
        shown = visible(text)
        self._exact = text if shown != text else None
        self.value = shown

    @property
    def holds_hidden_text(self) -> bool:
        """The field shows a text with control characters that it keeps exact (not edited since)."""
        return self._exact is not None and self.value == visible(self._exact)

    @property
    def exact_value(self) -> str:
        return self._exact if self.holds_hidden_text and self._exact is not None else self.value


class RequestFieldValidator(Validator):
    """Accepts what GenerationRequest accepts for one field, with the same message."""

    def __init__(self, field_name: str, blank_is_none: bool = False) -> None:
        super().__init__()
        self.field_name = field_name
        self.blank_is_none = blank_is_none

    def validate(self, value: str) -> ValidationResult:
        if self.blank_is_none and not value.strip():
            return self.success()
        try:
            parse_field(self.field_name, value)
        except RequestError as exc:
            return self.failure(str(exc))
        return self.success()


class RequestField(Widget):
    """A label, an input for one GenerationRequest field, and its validation message (plain text).

    A two-column grid (label, input; the message below, across both) rather than a row inside a column: the
    Lab has 16 of them, and a widget fewer each is 16 fewer for its first frame to mount and style."""

    DEFAULT_CSS = """
    RequestField { height: auto; layout: grid; grid-size: 2; grid-columns: 17 1fr; grid-rows: 1 auto; }
    RequestField > Label { color: $text-muted; width: 100%; }
    RequestField > Input { width: 1fr; }
    RequestField > .field-error { color: $error; height: auto; column-span: 2; }
    RequestField > .field-error.-empty { display: none; }
    """

    def __init__(
        self,
        field_name: str,
        label: str,
        value: str = "",
        *,
        placeholder: str = "",
        id: str | None = None,
        input_id: str | None = None,
        blank_is_none: bool = False,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id or f"field-{field_name}", classes=classes)
        self._input_id = input_id or field_name
        self.blank_is_none = blank_is_none  # an empty input means "not set" (native size, no window)
        self.field_name = field_name
        self._label = label
        self._value = value
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield Label(escape(self._label))
        yield TextInput(
            self._value,
            placeholder=self._placeholder,
            id=self._input_id,
            validators=[RequestFieldValidator(self.field_name, self.blank_is_none)],
            compact=True,
        )
        # The message line is mounted with the first message: the Lab's 16 fields would cost the first frame 16
        # widgets (about 3 ms of CPU each on the 2-core box) for lines that are empty.

    @property
    def input(self) -> TextInput:
        return self.query_one(TextInput)

    @property
    def error(self) -> str:
        found = self.query(".field-error")
        return str(found.first(Static).content) if found else ""

    def value(self) -> Any:
        """The parsed value; raises RequestError with the field's message."""
        text = self.input.exact_value
        if self.blank_is_none and not text.strip():
            return None
        return parse_field(self.field_name, text)

    def on_input_changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        message = "" if result is None or result.is_valid else "; ".join(result.failure_descriptions)
        found = self.query(".field-error")
        if not found:
            if message:
                self.mount(Static(message, classes="field-error", markup=False))
            return
        error = found.first(Static)
        error.update(message)
        error.set_class(not message, "-empty")
