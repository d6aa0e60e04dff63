"""The one-widget footer (tnr_tui.ui.widgets.footer): the screen's keys in the first frame, clicks press them,
a change of keys repaints one line and mounts nothing."""

from __future__ import annotations

from pathlib import Path

from pilot_wait import waiter
from textual.binding import Binding
from textual.screen import Screen

from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.footer import Footer

wait_for = waiter(timeout=30.0)


def make_app(data_dir: Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", autoload=False)


def shown(screen: Screen) -> list[str]:
    """What Textual's own Footer would show: the active bindings that show, one per action."""
    seen: list[str] = []
    actions: set[str] = set()
    for _node, binding, _enabled, _tooltip in screen.active_bindings.values():
        if binding.show and binding.action not in actions:
            actions.add(binding.action)
            seen.append(binding.description)
    return seen


async def test_the_first_frame_has_the_keys_and_the_footer_is_one_widget(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    drawn_at_first_frame: list[list[str]] = []
    after_first_paint = app._after_first_paint

    def spy() -> None:
        drawn_at_first_frame.append(app.lab.query_one(Footer).keys())
        after_first_paint()

    app._after_first_paint = spy  # type: ignore[method-assign]
    async with app.run_test(size=(150, 46)) as pilot:
        await wait_for(pilot, lambda: drawn_at_first_frame, what="the first frame")
        footer = app.lab.query_one(Footer)
        assert drawn_at_first_frame[0][:3] == ["Run", "Cancel", "Quit"]
        assert drawn_at_first_frame[0][-1] == "palette"
        assert drawn_at_first_frame[0][:-1] == shown(app.lab)
        assert list(footer.children) == []
        line = footer.render().plain
        assert line.startswith(" ^r Run  esc Cancel ")
        assert line.rstrip().endswith("▏^p palette") and len(line) == 150


async def test_a_click_on_a_key_presses_it(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        footer = app.lab.query_one(Footer)
        await pilot.pause()
        start = next(start for start, _end, item in footer._spans if item.description == "History")
        await pilot.click(Footer, offset=(start + 2, 0))
        await wait_for(pilot, lambda: app.screen.id == "history", what="the History screen")
        history_footer = app.screen.query_one(Footer)
        await wait_for(pilot, lambda: "Re-run" in history_footer.keys(), what="the History's keys")
        assert history_footer.keys()[:-1] == shown(app.screen)


async def test_hover_shows_the_key_and_a_disabled_key_rings(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        footer = app.lab.query_one(Footer)
        await pilot.pause()
        start, end, item = next(span for span in footer._spans if span[2].description == "Run")
        await pilot.hover(Footer, offset=(start + 1, 0))
        assert footer._hover == item and footer.tooltip == (item.tooltip or "Run")
        rings: list[int] = []
        app.bell = lambda: rings.append(1)  # type: ignore[method-assign]
        pressed: list[str] = []
        app.simulate_key = pressed.append  # type: ignore[method-assign]
        footer._spans = [(start, end, type(item)(item.key, item.display, item.description, False, ""))]
        await pilot.click(Footer, offset=(start + 1, 0))
        assert rings == [1] and pressed == []
        await pilot.click(Footer, offset=(end + 5, 0))  # between keys: nothing
        assert rings == [1] and pressed == []


async def test_new_keys_repaint_the_line_without_mounting(tmp_data_dir: Path) -> None:
    class Extra(Screen):
        BINDINGS = [Binding("x", "noop", "Extra key")]

        def compose(self):  # noqa: ANN202
            yield Footer()

    app = make_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        await app.push_screen(Extra())
        await pilot.pause()
        footer = app.screen.query_one(Footer)
        assert footer.keys()[0] == "Extra key"
        before = footer.repaints
        app.screen.refresh_bindings()  # the same keys: no repaint
        await pilot.pause()
        assert footer.repaints == before
        app.set_keymap({"app.history": "f9"})  # the app's keymap shows in the keys
        await pilot.pause()
        app.pop_screen()
        await pilot.pause()
        lab_footer = app.lab.query_one(Footer)
        await wait_for(pilot, lambda: "f9 History" in lab_footer.render().plain, what="the keymap's key")
        assert list(lab_footer.children) == []


def bottom_line(app: TnrLabApp) -> str:
    """The screen's last line as the compositor draws it."""
    return "".join(strip.text for strip in app.screen._compositor.render_full_update().strips[-1])


async def test_keys_wider_than_the_terminal_keep_the_palette_key_on_the_right(tmp_data_dir: Path) -> None:
    # As Textual's Footer: the palette's key keeps its place and the keys that fit whole come before its bar; the History's
    # keys are wider than 80 columns (the usual SSH terminal), which lost the palette's key, at 60 the Lab's too.
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3")
        await wait_for(pilot, lambda: "Re-run" in app.screen.query_one(Footer).keys(), what="the History's keys")
        await pilot.pause()
        line = bottom_line(app)
        assert line == " / Search  r Re-run  l Load into Lab  f Favourite  n Note  e Export ▏^p palette "
        footer = app.screen.query_one(Footer)
        assert max(end for _start, end, _item in footer._spans) <= 80  # nothing clickable past the edge
        export = next(span for span in footer._spans if span[2].description == "Export")
        assert export[1] <= line.index("▏")  # a click on the bar is not a click on the key before it
        await pilot.press("f4")
        await pilot.resize_terminal(60, 24)
        await pilot.pause()
        line = bottom_line(app)  # a key that does not fit whole is left out, not cut to "f4 Co"
        assert line == " ^r Run grid  ^q Quit  f2 Lab  f3 History       ▏^p palette "


async def test_keys_that_change_under_a_resting_mouse_are_hovered_afresh(tmp_data_dir: Path) -> None:
    # "/" focuses the History's search: its keys change under the mouse, which still rested on "r Re-run";
    # the tooltip said "Re-run" over "^q Quit". As Textual's Footer: the key now under the mouse is hovered.
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        await pilot.press("f3")
        footer = app.history_screen.query_one(Footer)
        await wait_for(pilot, lambda: "Re-run" in footer.keys(), what="the History's keys")
        await pilot.pause()
        start = next(start for start, _end, item in footer._spans if item.description == "Re-run")
        await pilot.hover(Footer, offset=(start + 1, 0))
        assert footer.tooltip == "Re-run"
        await pilot.press("slash")
        await wait_for(pilot, lambda: "Re-run" not in footer.keys(), what="the search's keys")
        await pilot.pause()
        assert footer._item_at(start + 1).description == "Quit"
        assert footer._hover == footer._item_at(start + 1) and footer.tooltip == "Quit"


async def test_the_palette_keys_bar_and_padding_are_part_of_its_key(tmp_data_dir: Path) -> None:
    # In Textual's Footer the bar is the palette key's border and the last cell its padding: a click there
    # opens the palette; here it did nothing.
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(100, 24)) as pilot:
        await pilot.pause()
        pressed: list[str] = []
        app.simulate_key = pressed.append  # type: ignore[method-assign]
        bar = bottom_line(app).index("▏")
        await pilot.click(Footer, offset=(bar, 0))
        await pilot.click(Footer, offset=(99, 0))
        await pilot.click(Footer, offset=(bar - 1, 0))  # the gap before the bar: nothing
        assert pressed == ["ctrl+p", "ctrl+p"]


async def test_a_hovered_key_changes_its_background_only(tmp_data_dir: Path) -> None:
    # As Textual's FooterKey:hover, whose colours its key and description styles override: the description
    # kept its colour there and turned the key's colour here.
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(100, 24)) as pilot:
        await pilot.pause()
        footer = app.lab.query_one(Footer)
        start = next(start for start, _end, item in footer._spans if item.description == "History")
        await pilot.hover(Footer, offset=(start + 1, 0))
        await pilot.pause()
        segments = [seg for strip in app.screen._compositor.render_full_update().strips[-1] for seg in strip]
        description = next(seg for seg in segments if seg.text == "History ")
        hover = footer.get_component_rich_style("footer-key--hover")
        assert description.style.color == footer.get_component_rich_style("footer-key--description").color
        assert description.style.bgcolor == hover.bgcolor
