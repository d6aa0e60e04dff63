"""The History as a gallery (g): pages of thumbnails from the store, the same filters, the same actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pilot_wait import waiter
from textual.widgets import DataTable, Select
from tui_runs import record_run, step_colour

from tnr_tui.services.history import open_store
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.gallery import Gallery

METHODS = ("cfg", "tnr-cfg", "apg")


wait_for = waiter(timeout=20.0, poll=0.02)


def many_runs(data_dir: Path, n: int) -> list[str]:
    """n finished runs with images, methods in turn, seed = their number; ids newest first."""
    store = open_store(data_dir)
    ids = [
        record_run(store, steps=2, guidance=METHODS[k % 3], seed=k, hue=k % 256, frames=False, telemetry=False)
        for k in range(n)
    ]
    store.close()
    return ids[::-1]


class Spy:
    """Records the store's list_runs calls (after, limit) made by the History screen."""

    def __init__(self, store: Any) -> None:
        self.calls: list[tuple[Any, int]] = []
        original = store.list_runs

        def list_runs(filters: Any = None, after: Any = None, limit: int = 50) -> Any:
            self.calls.append((after, limit))
            return original(filters, after=after, limit=limit)

        store.list_runs = list_runs


async def open_gallery(pilot: Any) -> Gallery:
    app = pilot.app
    await pilot.press("f3")
    await wait_for(pilot, lambda: app.history_screen.query_one("#runs", DataTable).row_count > 0, what="the list")
    await pilot.press("g")
    gallery = app.history_screen.query_one("#gallery", Gallery)
    await wait_for(pilot, lambda: gallery.loaded and gallery.runs, what="the first page")
    await pilot.pause(0.05)
    return gallery


async def test_the_gallery_pages_through_many_runs_a_page_at_a_time(tmp_data_dir: Path) -> None:
    ids = many_runs(tmp_data_dir, 130)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        spy = Spy(app.store)
        gallery = await open_gallery(pilot)
        size = gallery.page_size
        assert gallery.shape == (5, 3) and size == 15  # 150x46: five tiles across, three down
        seen = list(gallery.runs)
        assert [r.id for r in seen] == ids[:size]
        pages = 1
        while gallery.has_next:
            await pilot.press("pagedown")
            await pilot.pause(0.02)
            seen += gallery.runs
            pages += 1
        assert pages == 9 and [r.id for r in seen] == ids  # every run once, newest first, no gap
        assert len(gallery.runs) == 130 - 8 * size
        # Every query was one page (+1 to know whether another follows), from the cursor of the page.
        assert spy.calls and all(limit == size + 1 for _, limit in spy.calls if limit != 60)
        assert max(limit for _, limit in spy.calls) <= 60  # the list's page (PAGE_SIZE) is the largest
        status = str(app.history_screen.query_one("#gallery-status").content)
        assert status == f"page 9 · runs {8 * size + 1}–130 · the last page · pgup: back"
        await pilot.press("pagedown")  # nothing after the last page
        await pilot.pause(0.02)
        assert gallery.page == 8
        await pilot.press("pageup", "pageup")
        await pilot.pause(0.02)
        assert gallery.page == 6 and [r.id for r in gallery.runs] == ids[6 * size : 7 * size]
        # Arrows move the selection, and past the page's edge, the page.
        assert gallery.cursor == 0
        await pilot.press("right", "down")
        await pilot.pause(0.02)
        assert gallery.cursor == 6 and app.history_screen.selected_id() == ids[6 * size + 6]
        assert "seed: " + str(130 - 1 - (6 * size + 6)) in str(app.history_screen.query_one("#run-params").content)
        await pilot.press("left", "up", "left")  # from the first tile: to the previous page's last tile
        await pilot.pause(0.02)
        assert gallery.page == 5 and gallery.cursor == size - 1
        await pilot.press("home")
        await pilot.pause(0.02)
        assert gallery.page == 0 and gallery.runs[0].id == ids[0]


async def test_thumbnails_come_from_the_stored_images_and_bad_ones_say_why(tmp_data_dir: Path) -> None:
    ids = many_runs(tmp_data_dir, 6)
    store = open_store(tmp_data_dir)
    bad = store.get_run(ids[2])
    bad_path = store.resolve(bad.output("image").path)
    store.close()
    bad_path.write_bytes(b"not a picture" * 20)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        gallery = await open_gallery(pilot)
        await wait_for(pilot, lambda: gallery.thumbnails_painted, what="the thumbnails")
        tiles = gallery._tiles()
        good = tiles[0].pil_image
        assert good is not None and good.getpixel((0, 0)) == step_colour(2, 5)  # the newest run: k = 5
        assert tiles[2].pil_image is None
        caption = str(tiles[2].query_one(".picture-caption").content)
        assert "cfg" in caption and "not an image file" in caption
        assert not tiles[6].display  # six runs: the rest of the page's tiles are hidden


async def test_the_gallery_uses_the_same_filters_and_actions(tmp_data_dir: Path) -> None:
    ids = many_runs(tmp_data_dir, 30)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        history = app.history_screen
        await pilot.press("f3")
        table = history.query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 30, what="the list")
        table.move_cursor(row=3)
        await pilot.pause(0.05)
        await pilot.press("g")  # the run selected in the list stays selected
        gallery = history.query_one("#gallery", Gallery)
        await wait_for(pilot, lambda: gallery.loaded, what="the gallery")
        await pilot.pause(0.05)
        assert gallery.selected_run().id == ids[3] and history.selected_run().id == ids[3]
        await pilot.press("f")  # favourite: the gallery's selection
        await pilot.pause(0.05)
        assert open_store(tmp_data_dir).get_run(ids[3]).favourite
        history.query_one("#method-filter", Select).value = "tnr-cfg"
        await wait_for(pilot, lambda: all(r.guidance == "tnr-cfg" for r in gallery.runs), what="the filter")
        assert len(gallery.runs) == 10 and not gallery.has_next
        await pilot.press("g")  # back to the list, on the run the gallery had selected
        await pilot.pause(0.05)
        assert table.display and history.selected_id() == gallery.selected_run().id


async def test_a_small_terminal_gets_small_tiles(tmp_data_dir: Path) -> None:
    many_runs(tmp_data_dir, 8)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(80, 24)) as pilot:
        gallery = await open_gallery(pilot)
        assert gallery.has_class("-small") and gallery.shape == (3, 2) and len(gallery.runs) == 6
        assert gallery.has_next
        assert "g grid" in app.history_screen.query_one("#run-detail").border_title


async def test_thumbnails_are_decoded_once_through_read_image(tmp_data_dir: Path, monkeypatch: Any) -> None:
    import tnr_tui.ui.widgets.gallery as gallery_module
    from tnr_tui.ui.widgets.picture import read_image

    decoded: list[Path] = []

    def counting(path: Path, max_px: int = 256) -> Any:
        decoded.append(path)
        return read_image(path, max_px)

    monkeypatch.setattr(gallery_module, "read_image", counting)
    many_runs(tmp_data_dir, 40)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        gallery = await open_gallery(pilot)
        await wait_for(pilot, lambda: len(decoded) == 15 and gallery.thumbnails_painted, what="page 1")
        await pilot.press("pagedown")
        await wait_for(pilot, lambda: len(decoded) == 30, what="page 2")
        await pilot.press("pageup")  # cached: nothing decoded again
        await pilot.pause(0.3)
        assert len(decoded) == 30 and len(set(decoded)) == 30
        assert all(
            t.pil_image is not None and max(t.pil_image.size) <= gallery_module.THUMB_PX for t in gallery._tiles()
        )
