"""The Lab's fields draw their own labels (tnr_tui/ui/widgets/fields.py): what a Label child showed, where it
showed it, in the same colour, with one widget fewer per field; a click on a label focuses its input."""

from __future__ import annotations

from pathlib import Path

from pilot_wait import settle
from textual.app import App, ComposeResult
from textual.widgets import Input, Label, Select

from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.dropdown import DropDown
from tnr_tui.ui.widgets.fields import LabelledRow, RequestField, TextInput


def screen_text(app: App) -> list[str]:
    return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]  # noqa: SLF001


def cell_style(app: App, x: int, y: int) -> str:
    strip = app.screen._compositor.render_strips()[y]  # noqa: SLF001
    at = 0
    for segment in strip:
        if at <= x < at + len(segment.text):
            return str(segment.style)
        at += len(segment.text)
    raise IndexError(x)


class Fields(App):
    """A field and a row beside what the lab drew before: a Label child in a 17-cell grid column."""

    CSS = """
    .old { height: auto; layout: grid; grid-size: 2; grid-columns: 17 1fr; }
    .old > Label { color: $text-muted; width: 100%; }
    .old-row { height: 1; }
    .old-row > Label { width: 10; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        from textual.containers import Horizontal

        yield RequestField("steps", "Steps", "20")
        with Horizontal(classes="old"):
            yield Label("Steps")
            yield Input("20", compact=True, id="old-input")
        yield LabelledRow("Solver", Select([("euler", "euler"), ("heun", "heun")], value="euler", compact=True))
        with Horizontal(classes="old-row"):
            yield Label("Solver")
            yield Select([("euler", "euler"), ("heun", "heun")], value="euler", compact=True, id="old-select")


async def test_a_field_draws_its_label_where_and_as_a_label_child_did() -> None:
    app = Fields()
    async with app.run_test(size=(60, 8)) as pilot:
        for field in app.query(Input):
            field.cursor_blink = False
        app.set_focus(None)
        await pilot.pause()
        field = app.query_one(RequestField)
        assert not field.children  # one widget: the label and the text are the field's own
        text = screen_text(app)
        assert text[0].startswith("Steps") and text[0] == text[1]  # the new field's line, the old one's
        assert text[2].startswith("Solver") and text[2] == text[3]
        for x in range(5):
            assert cell_style(app, x, 0) == cell_style(app, x, 1)  # the same muted colour, cell by cell
            assert cell_style(app, x, 2) == cell_style(app, x, 3)
        for x in range(17, 30):
            assert cell_style(app, x, 0) == cell_style(app, x, 1)  # and the text as the Input child drew it
        assert field.content_region.x == 17 and app.query_one("#old-input").region.x == 17


async def test_a_click_on_a_label_focuses_its_input_and_a_message_goes_below() -> None:
    app = Fields()
    async with app.run_test(size=(60, 8)) as pilot:
        app.set_focus(None)
        await pilot.click(RequestField, offset=(2, 0))
        assert app.focused is app.query_one(RequestField)
        await pilot.click(LabelledRow, offset=(2, 0))
        assert app.focused is app.query_one(LabelledRow).query_one(Select)
        field = app.query_one(RequestField)
        field.value = "x"
        await settle(pilot, lambda: field.error, "the field's message")
        assert field.error == "steps must be a whole number, got 'x'"
        await pilot.pause()
        assert screen_text(app)[1].startswith("steps must be a whole number")  # under the field, from column 0
        assert field.size.height == 2 and screen_text(app)[2].startswith("Steps")  # the next line moved down
        field.value = "12"
        await settle(pilot, lambda: not field.error, "the message gone")
        await pilot.pause()
        assert field.size.height == 1 and screen_text(app)[1].startswith("Steps")  # valid: one row again


async def test_a_long_message_wraps_to_the_fields_width_and_follows_a_resize() -> None:
    app = Fields()
    async with app.run_test(size=(40, 10)) as pilot:
        field = app.query_one(RequestField)
        field.value = "not a number at all, not even close"
        await settle(pilot, lambda: field.error, "the field's message")
        await pilot.pause()
        rows = field.size.height - 1
        assert rows >= 2  # "steps must be a whole number, got '...'" is longer than 40 cells
        shown = " ".join(line.rstrip() for line in screen_text(app)[1 : 1 + rows])
        assert shown == field.error
        await pilot.resize_terminal(90, 10)
        await pilot.pause(0.1)
        assert field.size.height == 2  # one row of message at 90 cells


async def test_the_lab_has_no_label_widgets_for_its_fields_and_rows(tmp_data_dir: Path) -> None:
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        await pilot.pause()
        lab = app.lab
        assert not [w for w in lab.query(Label) if type(w) is Label]  # every field and row draws its own label
        rows = {row.label for row in lab.query(LabelledRow)}
        assert rows == {"Solver", "Schedule", "Method", "LoRAs"}
        assert {f.label for f in lab.query(RequestField)} >= {"Prompt", "Negative", "Steps", "Seed", "Model"}
        assert lab.query_one("#lora-row", LabelledRow).query_one(TextInput).id == "loras"
        lines = "\n".join(screen_text(app))
        for label in ("Prompt", "Steps", "Solver", "Method", "LoRAs", "σ from"):
            assert label in lines


class OneInput(App):
    def compose(self) -> ComposeResult:
        yield TextInput("", id="t")


async def test_pasted_control_characters_go_in_escaped_and_the_cursor_after_them() -> None:
    from textual import events

    from tnr_tui.services.text import visible

    app = OneInput()
    async with app.run_test(size=(60, 4)) as pilot:
        field = app.query_one(TextInput)
        field.focus()
        field.post_message(events.Paste("A\x1b[0mB\tC"))
        await pilot.pause()
        assert field.value == visible("A\x1b[0mB\tC") and field.cursor_position == len(field.value)
        await pilot.press("Z")
        assert field.value == visible("A\x1b[0mB\tC") + "Z"  # typed after the paste, not inside its escapes
        field.value, field.cursor_position = "ab", 1
        field.post_message(events.Paste("\x07"))
        await pilot.pause()
        assert field.value == "a" + visible("\x07") + "b" and field.cursor_position == 1 + len(visible("\x07"))


async def test_a_units_parameter_label_does_not_run_into_its_value(tmp_data_dir: Path) -> None:
    from tnr_tui.ui.widgets.unit_params import ParamField

    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        app.lab.query_one("#guidance", DropDown).value = "seg"

        def fields() -> list[ParamField]:
            return [f for f in app.lab.query(ParamField) if f.param.name == "seg_blur_sigma"]

        # Mounted, then laid out: on a loaded host a fixed pause read the regions before the layout (all 0).
        await settle(pilot, lambda: fields() and fields()[0].query_one(TextInput).region.width > 0, "seg's fields")
        label = fields()[0].query_one(Label)
        value = fields()[0].query_one(TextInput)
        assert value.region.x >= label.region.right + 1  # one cell between "blur_sigma" and "9999999.0"


async def test_a_units_drop_down_list_is_as_wide_as_its_longest_name(tmp_data_dir: Path) -> None:
    from engine import units
    from tnr_tui.ui.widgets.dropdown import DropDownList

    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(80, 24)) as pilot:
        for select_id, registry in (("#solver", units.SOLVERS), ("#schedule", units.SCHEDULES)):
            select = app.lab.query_one(select_id, DropDown)
            select.focus()
            await pilot.press("enter")
            await pilot.pause(0.1)
            overlay = select.query_one(DropDownList)
            longest = max(len(name) for name in registry.names())
            assert overlay.region.width >= longest + 2 > select.region.width  # the names fit, unwrapped
            await pilot.press("escape")
            await pilot.pause()
