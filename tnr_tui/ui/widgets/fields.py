"""Form fields that validate as you type with the request's own rules (engine.request.parse_field)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.validation import ValidationResult, Validator
from textual.widget import Widget
from textual.widgets import Input, Static

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

    def replace(self, text: str, start: int, end: int) -> None:
        """Typed or pasted text goes in escaped, so the cursor moves past what is shown: escaping only the
        whole value afterwards (validate_value) left the cursor inside a pasted escape, and the next keys or
        the rest of the paste landed in the middle of it (found pasting ESC and tab in tmux)."""
        super().replace(visible(text), start, end)

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


class SelfLabelled(Widget):
    """A widget that draws its own label, in the cells its first child's left margin leaves free, in its own
    colour (children keep theirs): a Label child would be one widget more for the Lab's first frame (about
    2 ms of CPU each on the 2-core box, measured). A click on the label focuses that first child, as an HTML
    label does."""

    def __init__(self, label: str, *children: Widget, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(*children, id=id, classes=classes)
        self._label = label

    @property
    def label(self) -> str:
        return self._label

    def render(self) -> Text:
        """The label, cut to the first child's left margin (under the children, it is covered)."""
        width = self.children[0].styles.margin.left if self.children else 0
        return Text(self._label[:width], no_wrap=True, overflow="crop", end="")

    def on_click(self, event: events.Click) -> None:
        if self.children and event.widget is self and self.children[0].focusable:
            self.children[0].focus()


class RequestField(SelfLabelled):
    """A label, an input for one GenerationRequest field, and its validation message (plain text).

    The label is drawn by the field itself (its `render`, in the cells the input's left margin leaves free),
    not by a Label child: the Lab has 16 fields, and each widget its first frame mounts costs it about 5 ms of
    CPU on the 2-core box (measured: 16 Label children were ~0.1 s of a ~0.6 s start). The label's width is
    the input's left margin (17 cells; 10 in the Lab's column, app.tcss). A click on the label focuses the
    input, as an HTML label does. The message line below is mounted with the first message."""

    DEFAULT_CSS = """
    RequestField { height: auto; layout: vertical; color: $text-muted; }
    RequestField > Input { width: 1fr; margin: 0 0 0 17; }
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
        super().__init__(label, id=id or f"field-{field_name}", classes=classes)
        self._input_id = input_id or field_name
        self.blank_is_none = blank_is_none  # an empty input means "not set" (native size, no window)
        self.field_name = field_name
        # Made here, not in compose: a field mounted just now (the N-prompt box, mounted when first shown) is
        # read before it has composed.
        self._input = TextInput(
            value,
            placeholder=placeholder,
            id=self._input_id,
            validators=[RequestFieldValidator(field_name, blank_is_none)],
            compact=True,
        )

    def compose(self) -> ComposeResult:
        yield self._input
        # The message line is mounted with the first message: the Lab's 16 fields would cost the first frame 16
        # widgets for lines that are empty.

    @property
    def input(self) -> TextInput:
        return self._input

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


class LabelledRow(SelfLabelled):
    """A one-line row of widgets (a drop-down, an input) after a label the row draws itself.

    As RequestField does, and for the same reason (a Label child is one widget more for the first frame): the
    label fills the cells that the first widget's left margin leaves free (10), in the row's colour (muted).
    A click on the label focuses the first widget; the row's tooltip is the label's."""

    DEFAULT_CSS = """
    LabelledRow { layout: horizontal; height: 1; color: $text-muted; }
    LabelledRow > .-after-label { margin: 0 0 0 10; }
    """

    def __init__(
        self,
        label: str,
        *children: Widget,
        id: str | None = None,
        classes: str | None = None,
        tooltip: str | None = None,
    ) -> None:
        super().__init__(label, *children, id=id, classes=classes)
        if children:
            children[0].add_class("-after-label")
        if tooltip is not None:
            self.tooltip = tooltip
