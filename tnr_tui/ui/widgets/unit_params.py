"""The fields of one unit's parameters (a solver's eta, a guider's thresholds), built from its declaration.

A unit declares its knobs as `engine.units.Param`s; this panel shows one input per knob (a checkbox for a
true/false one), validates as the user types with the Param's own rules and messages, and gives back only
what the user set: a blank field means the unit's default, shown as the placeholder.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.validation import ValidationResult, Validator
from textual.widgets import Checkbox, Input, Label, Static

from engine.request import RequestError
from engine.units import Param, UnitError
from tnr_tui.ui.widgets.fields import TextInput

LABEL_WIDTH = 10


def short_label(name: str, width: int = LABEL_WIDTH) -> str:
    """A label that fits the panel's label column: the name, or its most telling (last) words."""
    if len(name) <= width:
        return name
    words = name.split("_")
    label = words[-1]
    for word in reversed(words[:-1]):
        if len(word) + 1 + len(label) > width:
            break
        label = f"{word}_{label}"
    return label[:width]


class ParamValidator(Validator):
    def __init__(self, param: Param) -> None:
        super().__init__()
        self.param = param

    def validate(self, value: str) -> ValidationResult:
        if not value.strip():
            return self.success()  # blank: the unit's default
        try:
            self.param.parse(value)
        except UnitError as exc:
            return self.failure(str(exc))
        return self.success()


class ParamField(Vertical):
    """One parameter: a label (the full name and help in its tooltip), an input or checkbox, its message."""

    DEFAULT_CSS = """
    ParamField { height: auto; }
    ParamField > .field-row { height: 1; }
    ParamField > .field-row > Label { color: $text-muted; width: 10; margin: 0 1 0 0; }  /* a gap before the value */
    ParamField > .field-row > Input { width: 1fr; }
    ParamField > .field-error { color: $error; height: auto; }
    ParamField > .field-error.-empty { display: none; }
    """

    def __init__(self, param: Param, value: Any = None) -> None:
        super().__init__(classes="param-field")
        self.param = param
        self._initial = value

    def compose(self) -> ComposeResult:
        p = self.param
        tooltip = f"{p.name}: {p.describe()}"
        with Horizontal(classes="field-row"):
            if p.kind == "bool":
                checked = bool(p.default if self._initial is None else self._initial)
                yield Checkbox(escape(p.name.replace("_", " ")), checked, compact=True, tooltip=tooltip)
                return
            label = Label(escape(short_label(p.name)))
            label.tooltip = tooltip
            yield label
            default = "off" if p.default is None else str(p.default)
            yield TextInput(
                "" if self._initial is None else str(self._initial),
                placeholder=default,
                validators=[ParamValidator(p)],
                compact=True,
                tooltip=tooltip,
            )
        yield Static("", classes="field-error -empty", markup=False)

    def value(self) -> tuple[bool, Any]:
        """(set by the user, value); RequestError naming the parameter for a bad entry."""
        p = self.param
        if p.kind == "bool":
            checked = self.query_one(Checkbox).value
            return checked != bool(p.default), checked
        text = self.query_one(TextInput).exact_value
        if not text.strip():
            return False, None
        try:
            return True, p.parse(text)
        except UnitError as exc:
            raise RequestError(str(exc)) from None

    def on_input_changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        message = "" if result is None or result.is_valid else "; ".join(result.failure_descriptions)
        error = self.query_one(".field-error", Static)
        error.update(message)
        error.set_class(not message, "-empty")


class UnitParams(Vertical):
    """The parameter fields of the unit chosen in a drop-down; rebuilt when the choice changes."""

    DEFAULT_CSS = """
    UnitParams { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.unit: Any = None

    def show(self, unit: Any, values: dict[str, Any] | None = None) -> None:
        """Fields for `unit`'s parameters (its defaults, or `values` where given)."""
        if unit is self.unit and values is None:
            return
        self.unit = unit
        self.remove_children()
        values = values or {}
        fields = [ParamField(p, values.get(p.name)) for p in getattr(unit, "params", ())]
        if fields:
            self.mount_all(fields)
        self.display = bool(fields)

    def values(self) -> dict[str, Any]:
        """The parameters the user set (the rest take the unit's defaults)."""
        chosen = {}
        for field in self.query(ParamField):
            is_set, value = field.value()
            if is_set:
                chosen[field.param.name] = value
        return chosen
