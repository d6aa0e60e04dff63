"""Form fields that validate as you type with the request's own rules (engine.request.parse_field)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Static

from engine.request import RequestError, parse_field


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


class RequestField(Vertical):
    """A label, an input for one GenerationRequest field, and its validation message (plain text)."""

    DEFAULT_CSS = """
    RequestField { height: auto; }
    RequestField > .field-row { height: 1; }
    RequestField > .field-row > Label { color: $text-muted; width: 17; }
    RequestField > .field-row > Input { width: 1fr; }
    RequestField > .field-error { color: $error; height: auto; }
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
        with Horizontal(classes="field-row"):
            yield Label(escape(self._label))
            yield Input(
                self._value,
                placeholder=self._placeholder,
                id=self._input_id,
                validators=[RequestFieldValidator(self.field_name, self.blank_is_none)],
                compact=True,
            )
        yield Static("", classes="field-error -empty", markup=False)

    @property
    def input(self) -> Input:
        return self.query_one(Input)

    @property
    def error(self) -> str:
        return str(self.query_one(".field-error", Static).content)

    def value(self) -> Any:
        """The parsed value; raises RequestError with the field's message."""
        if self.blank_is_none and not self.input.value.strip():
            return None
        return parse_field(self.field_name, self.input.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        message = "" if result is None or result.is_valid else "; ".join(result.failure_descriptions)
        error = self.query_one(".field-error", Static)
        error.update(message)
        error.set_class(not message, "-empty")
