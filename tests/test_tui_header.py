"""The one-widget header (tnr_tui.ui.widgets.header): the same cells as Textual's Header, its clicks, its title."""

from __future__ import annotations

from pathlib import Path

import pytest
from pilot_wait import waiter
from textual.widgets import Header as TextualHeader

import tnr_tui.ui.screens.lab as lab_module
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.header import Header

wait_for = waiter(timeout=30.0)


def make_app(data_dir: Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", autoload=False)


def header_cells(app: TnrLabApp) -> list[tuple[str, str | None, str | None, bool]]:
    """The screen's top line as (character, colour, background, bold); a space's colour does not show."""
    line = app.screen._compositor.render_full_update().strips[0]
    cells = []
    for strip in line:
        for segment in strip:
            style = segment.style
            for char in segment.text:
                colour = str(style.color) if style and style.color and char != " " else None
                cells.append(
                    (char, colour, str(style.bgcolor) if style and style.bgcolor else None, bool(style and style.bold))
                )
    return cells


async def top_line(data_dir: Path, header: type, size: tuple[int, int], sub_title: str) -> list:
    lab_module.Header = header  # type: ignore[misc]
    app = make_app(data_dir)
    async with app.run_test(size=size) as pilot:
        app.sub_title = sub_title
        await pilot.pause(0.1)
        assert len(app.lab.query(header)) == 1
        return header_cells(app)


@pytest.mark.parametrize("size", [(150, 46), (80, 24), (40, 12)])
@pytest.mark.parametrize("sub_title", ["", "embedded: loaded", "a very long model name " * 4])
async def test_it_draws_what_textuals_header_draws(tmp_data_dir: Path, monkeypatch, size, sub_title) -> None:
    monkeypatch.setattr(lab_module, "Header", Header)
    ours = await top_line(tmp_data_dir, Header, size, sub_title)
    theirs = await top_line(tmp_data_dir, TextualHeader, size, sub_title)
    assert ours == theirs
    assert "tnr-lab" in "".join(char for char, *_ in ours)


async def test_it_is_one_widget_and_follows_the_title(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        header = app.lab.query_one(Header)
        assert list(header.children) == []
        app.sub_title = "embedded: loading"
        await pilot.pause()
        assert "tnr-lab — embedded: loading" in header.render().plain
        app.lab.title = "the lab's own"  # a screen's title wins over the app's
        await pilot.pause()
        assert "the lab's own" in header.render().plain


async def test_a_click_on_the_icon_opens_the_palette_and_elsewhere_makes_it_tall(tmp_data_dir: Path) -> None:
    from textual.command import CommandPalette

    app = make_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        header = app.lab.query_one(Header)
        await pilot.click(Header, offset=(60, 0))
        await pilot.pause()
        assert header.has_class("-tall") and header.size.height == 3
        assert "tnr-lab" not in "".join(char for char, *_ in header_cells(app))  # tall: the top line is blank
        line = app.screen._compositor.render_full_update().strips[1]
        assert "tnr-lab" in "".join(segment.text for strip in line for segment in strip)  # its middle line
        await pilot.click(Header, offset=(60, 1))
        await pilot.pause()
        assert not header.has_class("-tall")
        await pilot.hover(Header, offset=(2, 0))
        assert header.tooltip == "Open the command palette"
        await pilot.click(Header, offset=(2, 0))
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="the command palette")
