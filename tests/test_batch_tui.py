"""A batch in the Compare screen: N seeds per tile, queued as one item and sampled by the device worker as one
batch, each seed its own history run, the tile showing them side by side."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from tests.test_tui_app import make_app, set_small, wait_for
from tnr_tui.services.history import open_store
from tnr_tui.ui.screens.compare import seeds_per_tile, strip


async def test_compare_seeds_per_tile_run_as_one_batch(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await set_small(app, steps=2)
        await pilot.press("f4")
        await pilot.pause(0.1)
        screen = app.compare_screen
        screen.query_one("#compare-prompt", Input).value = "a red circle"
        screen.query_one("#compare-seed", Input).value = "5"
        screen.query_one("#compare-seeds", Input).value = "3"
        screen.query_one("#compare-methods", Input).value = "cfg:3 tnr"
        screen.query_one("#compare-solvers", Input).value = "euler"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.ended) == 6, timeout=120, what="six runs")
        await pilot.pause(0.1)
        assert [m.status for m in app.ended] == ["done"] * 6, [m.error for m in app.ended]
        assert all(m.stats["batch"]["size"] == 3 for m in app.ended)  # each tile's seeds: one batch
        captions = [str(t.query_one(".picture-caption").content) for t in screen.query(".compare-tile")]
        assert len(captions) == 2 and all("3/3 seeds · batch of 3" in c for c in captions), captions
        tile = screen.query(".compare-tile").first()
        assert tile.pil_image is not None and tile.pil_image.width > tile.pil_image.height  # side by side
    runs = open_store(tmp_data_dir).list_runs()
    assert len(runs) == 6 and {r.status for r in runs} == {"done"}
    assert sorted(r.seed for r in runs) == [5, 5, 6, 6, 7, 7]


def test_seeds_per_tile_field_and_strip() -> None:
    import pytest
    from PIL import Image

    from engine.request import RequestError

    assert seeds_per_tile("4") == 4 and seeds_per_tile("") == 1
    for bad in ("0", "x", "999"):
        with pytest.raises(RequestError):
            seeds_per_tile(bad)
    picture = strip([Image.new("RGB", (64, 64), "red"), None])
    assert picture.size == (64 + 2 + 128, 128)
