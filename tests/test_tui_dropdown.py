"""The Lab's drop-downs (tnr_tui/ui/widgets/dropdown.py): one widget where Textual's Select is six, drawn as a
compact Select is, cell for cell, and used as one is: the keys and clicks that open it, type-ahead, the
choice, escape, the focus leaving, and `value` (a value that is no option is refused)."""

from __future__ import annotations

from typing import Any

import pytest
from pilot_wait import settle
from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Select

from tests.tui_cells import looks, screen_lines
from tnr_tui.ui.widgets import dropdown
from tnr_tui.ui.widgets.dropdown import DropDown, DropDownList

NAMES = ("euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "lms")


class Pair(App):
    """A drop-down above a compact Select of the same options, each 20 cells wide, then an input."""

    CSS = "Vertical { height: auto; } DropDown, Select { width: 20; }"

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[Any] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield DropDown([(n, n) for n in NAMES], "heun", id="dd")
            yield Select([(n, n) for n in NAMES], value="heun", allow_blank=False, compact=True, id="select")
        yield Input(id="other")

    def on_drop_down_changed(self, event: DropDown.Changed) -> None:
        self.changes.append((event.control.id, event.value))


async def test_a_drop_down_is_drawn_as_a_compact_select_cell_for_cell() -> None:
    app = Pair()
    async with app.run_test(size=(40, 6)) as pilot:
        app.set_focus(None)
        await pilot.pause()
        assert screen_lines(app)[0].startswith("heun")
        assert looks(app, 0, 20) == looks(app, 1, 20)  # text and colours of the closed drop-down and the Select
        app.query_one(DropDown).focus()
        await pilot.pause()
        focused_dd = looks(app, 0, 20)
        app.query_one(Select).focus()
        await pilot.pause()
        assert focused_dd == looks(app, 1, 20)


async def opened(pilot: Any, app: Pair) -> DropDown:
    """The drop-down, focused and opened with enter."""
    drop_down = app.query_one(DropDown)
    drop_down.focus()
    await pilot.press("enter")
    await settle(pilot, lambda: drop_down.expanded, "the list to open")
    return drop_down


@pytest.mark.parametrize("key", ["enter", "space", "down", "up"])
async def test_the_keys_that_open_a_select_open_it_on_the_current_option(key: str) -> None:
    app = Pair()
    async with app.run_test(size=(40, 16)) as pilot:
        drop_down = app.query_one(DropDown)
        drop_down.focus()
        await pilot.press(key)
        await settle(pilot, lambda: drop_down.expanded, "the list to open")
        listing = drop_down.query_one(DropDownList)
        assert app.focused is listing and listing.highlighted == NAMES.index("heun")
        assert listing.region.y == drop_down.region.y + 1  # below the drop-down, over what is there
        assert "▲" in screen_lines(app)[0] and "heun" in screen_lines(app)[0]
        await pilot.press("escape")
        await settle(pilot, lambda: not drop_down.expanded, "escape to close it")
        assert app.focused is drop_down and drop_down.value == "heun" and app.changes == []
        assert "▼" in screen_lines(app)[0]


async def test_typing_jumps_to_an_option_and_enter_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropdown, "TYPE_AHEAD_SECONDS", 60.0)  # one word however slow the host
    app = Pair()
    async with app.run_test(size=(40, 16)) as pilot:
        drop_down = await opened(pilot, app)
        await pilot.press("d", "p", "m", "p", "p", "_", "2", "m", "_")  # one word: the first "dpmpp_2m_" name
        listing = drop_down.query_one(DropDownList)
        assert listing.highlighted == NAMES.index("dpmpp_2m_sde")
        await pilot.press("up", "enter")
        await settle(pilot, lambda: app.changes, "the change")
        assert drop_down.value == "dpmpp_2m" and app.changes == [("dd", "dpmpp_2m")]
        assert not drop_down.expanded and app.focused is drop_down
        assert screen_lines(app)[0].startswith("dpmpp_2m ")


async def test_a_click_opens_it_a_click_on_an_option_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropdown, "CLICK_SECONDS", 60.0)  # a press and its click together however slow the host
    app = Pair()
    async with app.run_test(size=(40, 16)) as pilot:
        drop_down = app.query_one(DropDown)
        await pilot.click(DropDown)
        await settle(pilot, lambda: drop_down.expanded, "the list to open")
        listing = drop_down.query_one(DropDownList)
        # The list's first option is on its second row (a tall border above it): click "euler_ancestral".
        await pilot.click(DropDownList, offset=(3, 2))
        await settle(pilot, lambda: app.changes, "the change")
        assert drop_down.value == "euler_ancestral" and not drop_down.expanded and listing.display is False
        await pilot.click(DropDown)
        await settle(pilot, lambda: drop_down.expanded, "the list to open again")
        await pilot.click(DropDown)  # a second click on the drop-down closes it
        await settle(pilot, lambda: not drop_down.expanded, "the list to close")
        assert app.changes == [("dd", "euler_ancestral")]


async def test_the_focus_leaving_the_list_closes_it_unchanged() -> None:
    app = Pair()
    async with app.run_test(size=(40, 16)) as pilot:
        drop_down = await opened(pilot, app)
        await pilot.press("down")
        app.query_one("#other", Input).focus()
        await settle(pilot, lambda: not drop_down.expanded, "the list to close")
        assert drop_down.value == "heun" and app.changes == [] and app.focused is app.query_one("#other")


async def test_value_is_set_as_a_selects_and_a_non_option_is_refused() -> None:
    app = Pair()
    async with app.run_test(size=(40, 6)) as pilot:
        drop_down = app.query_one(DropDown)
        drop_down.value = "lms"
        drop_down.value = "lms"  # unchanged: no second message
        await settle(pilot, lambda: app.changes, "the change")
        await pilot.pause()
        assert app.changes == [("dd", "lms")] and screen_lines(app)[0].startswith("lms ")
        with pytest.raises(ValueError, match="'nope' is not one of the options"):
            drop_down.value = "nope"
        assert drop_down.value == "lms" and drop_down.label == "lms"
    with pytest.raises(ValueError, match="at least one option"):
        DropDown([], None)
    with pytest.raises(ValueError, match="not one of the options"):
        DropDown([("a", 1)], 2)


async def test_a_long_option_is_cut_with_an_ellipsis_and_the_arrow_stays() -> None:
    class Narrow(App):
        CSS = "DropDown { width: 8; }"

        def compose(self) -> ComposeResult:
            yield DropDown([("dpmpp_2s_ancestral", 1)], 1)

    app = Narrow()
    async with app.run_test(size=(20, 3)) as pilot:
        await pilot.pause()
        assert screen_lines(app)[0][:8] == "dpmp… ▼ "
