"""Form fields that validate as you type with the request's own rules (engine.request.parse_field)."""

from __future__ import annotations

from typing import Any

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Region
from textual.strip import Strip
from textual.validation import ValidationResult, Validator
from textual.widget import Widget
from textual.widgets import Input

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


class RequestField(TextInput):
    """An input for one GenerationRequest field that draws its own label and its validation message.

    One widget, not a container of a label, an input and a message line: each widget the Lab's first frame
    mounts costs it about 3 ms on the 2-core box (the 14 fields' containers were 45 ms of a 0.5 s start,
    measured in pairs). The label is drawn in the cells of the field's left padding (17; 10 in the Lab's
    column, app.tcss), in the muted colour over what is behind the field, as a Label beside the input drew it;
    a click there focuses the field. While the text is not valid the field grows by the rows its message
    needs (plain text, wrapped to the field's width, in the error colour) and draws it there, as the message
    line below the input did.

    `value` is the text, as an Input's; `parsed()` is the request's value of it (RequestError with the
    field's message); `error` is the message shown ("" while valid)."""

    COMPONENT_CLASSES = TextInput.COMPONENT_CLASSES | {"request-field--label", "request-field--error"}
    DEFAULT_CSS = """
    RequestField { width: 1fr; }
    RequestField.-textual-compact { padding: 0 0 0 17; }
    RequestField > .request-field--label { color: $text-muted; }
    RequestField > .request-field--error { color: $error; }
    """

    def __init__(
        self,
        field_name: str,
        label: str,
        value: str = "",
        *,
        placeholder: str = "",
        id: str | None = None,
        blank_is_none: bool = False,
        classes: str | None = None,
    ) -> None:
        super().__init__(
            value,
            placeholder=placeholder,
            id=id or field_name,
            classes=classes,
            validators=[RequestFieldValidator(field_name, blank_is_none)],
            compact=True,
        )
        self._label = label
        self._message = ""
        self.blank_is_none = blank_is_none  # an empty input means "not set" (native size, no window)
        self.field_name = field_name

    @property
    def label(self) -> str:
        return self._label

    @property
    def error(self) -> str:
        return self._message

    def parsed(self) -> Any:
        """The parsed value; raises RequestError with the field's message."""
        text = self.exact_value
        if self.blank_is_none and not text.strip():
            return None
        return parse_field(self.field_name, text)

    # ---- the message ----

    def on_input_changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        self._show_message("" if result is None or result.is_valid else "; ".join(result.failure_descriptions))

    def _show_message(self, message: str) -> None:
        if message == self._message:
            return
        self._message = message
        self._fit_message()
        self.refresh()

    def _message_lines(self, width: int) -> list[str]:
        if not self._message or width <= 0:
            return []
        return [line.plain for line in Text(self._message).wrap(self.app.console, width)]

    def _fit_message(self) -> None:
        rows = len(self._message_lines(self.outer_size.width or 1))
        self.styles.height = 1 + rows if rows else None  # back to the CSS's one row when valid

    def on_resize(self) -> None:
        if self._message:
            self._fit_message()  # the message wraps to the new width

    # ---- drawing the label and the message ----

    def _cell_style(self, component: str) -> Style:
        behind = self.background_colors[0]
        colour = self.get_component_styles(component).color
        return Style(color=(behind + colour).rich_color, bgcolor=behind.rich_color)

    def render_lines(self, crop: Region) -> list[Strip]:
        strips = super().render_lines(crop)
        width = self.outer_size.width  # the label and the message are drawn over the padding too
        left = self.styles.padding.left
        over: dict[int, Strip] = {}
        if left:
            over[0] = Strip([Segment(self._label[:left].ljust(left), self._cell_style("request-field--label"))])
        if self._message:
            style = self._cell_style("request-field--error")
            for row, line in enumerate(self._message_lines(width), 1):
                over[row] = Strip([Segment(line.ljust(width)[:width], style)])
        if not over:
            return strips
        x1 = crop.x
        return [
            paste(strip, x1, over[y]) if y in over else strip for y, strip in zip(crop.line_range, strips, strict=False)
        ]


def paste(strip: Strip, x1: int, over: Strip) -> Strip:
    """`strip` (cells from column x1 on) with `over` (cells from column 0 on) drawn over it."""
    width = strip.cell_length
    end = min(over.cell_length, x1 + width)
    if end <= x1:
        return strip
    return Strip.join([over.crop(x1, end), strip.crop(end - x1, width)])


class LabelledRow(Widget):
    """A one-line row of widgets (a drop-down, an input) after a label the row draws itself.

    As RequestField does, and for the same reason (a Label child is one widget more for the Lab's first
    frame, about 2 ms of CPU each on the 2-core box, measured): the label fills the cells that the first
    widget's left margin leaves free (10), in the row's colour (muted; the children keep theirs). A click on
    the label focuses the first widget, as an HTML label does; the row's tooltip is the label's."""

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
        super().__init__(*children, id=id, classes=classes)
        self._label = label
        if children:
            children[0].add_class("-after-label")
        if tooltip is not None:
            self.tooltip = tooltip

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
