"""A grid of run thumbnails, one page at a time from the store (the History's gallery, g).

The page is as many tiles as the widget's size holds; it is fetched with the store's keyset query (runs
after the last id of the page before, `limit` = the page's size + 1 to know whether another follows), so a
history of 100 000 runs costs what a history of 20 does. Going back a page uses the cursors of the pages
seen (a stack); a resize starts again from the first page. Thumbnails are decoded off the UI thread through
`widgets.picture.read_image` (an unreadable file is its tile's caption) and cached by path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from textual import events
from textual.binding import Binding
from textual.containers import Grid
from textual.message import Message

from tnr_tui.services.text import visible
from tnr_tui.ui.widgets.picture import Picture, read_image

THUMB_PX = 96  # decoded thumbnails are shrunk to this (a tile shows at most 32x32 half-cell pixels)
CACHE_SIZE = 512  # thumbnails kept (about 27 KiB each)
TILE = {"normal": (18, 12), "small": (14, 9)}  # (width, height) in cells, border included

Fetch = Callable[[str | None, int], Sequence[Any]]  # (after, limit) -> runs, newest first
ThumbPath = Callable[[Any], Path | None]


def tile_caption(run: Any, small: bool = False) -> str:
    """What a tile says under its picture: the method and scale, solver, seed (and the status unless done)."""
    scale = "" if run.scale is None else f" {run.scale:g}"
    first = visible(f"{run.guidance}{scale}")
    if small:
        return first if run.status == "done" else visible(run.status)
    second = f"{run.solver} s{run.seed}" if run.status == "done" else run.status
    return f"{first}\n{visible(second)}"


class Tile(Picture):
    """One run's thumbnail and caption; a click selects it."""

    def __init__(self, slot: int) -> None:
        super().__init__("", classes="gallery-tile")
        self.slot = slot
        self._ready = False
        self._pending: tuple[Any, str | None] | None = None

    def on_mount(self) -> None:
        self._ready = True
        if self._pending is not None:
            super().show(*self._pending)
            self._pending = None

    def show(self, image: Any, caption: str | None = None) -> None:
        """As Picture.show; a tile just mounted (a new page shape) shows it once its parts exist."""
        if self._ready:
            super().show(image, caption)
        else:
            self._pending = (image, caption)

    def on_click(self, event: events.Click) -> None:
        gallery = self.parent
        if isinstance(gallery, Gallery):
            gallery.select(self.slot)


class Gallery(Grid, can_focus=True):
    """The thumbnails of one page of runs; arrows move the selection, and past the page's edge, the page."""

    BINDINGS = [
        Binding("left", "move(-1, 0)", "", show=False),
        Binding("right", "move(1, 0)", "", show=False),
        Binding("up", "move(0, -1)", "", show=False),
        Binding("down", "move(0, 1)", "", show=False),
        Binding("pagedown", "page(1)", "Next page", show=False),
        Binding("pageup", "page(-1)", "Previous page", show=False),
        Binding("home", "first_page", "First page", show=False),
    ]
    DEFAULT_CSS = """
    Gallery { grid-gutter: 0 0; height: 1fr; width: 1fr; grid-columns: 18; grid-rows: 12; }
    Gallery.-small { grid-columns: 14; grid-rows: 9; }
    Gallery > .gallery-tile { width: 18; height: 12; border: round $panel; padding: 0; }
    Gallery > .gallery-tile.-selected { border: round $accent; }
    Gallery:focus > .gallery-tile.-selected { border: heavy $accent; }
    Gallery > .gallery-tile .picture-image { width: 16; height: 8; }
    Gallery.-small > .gallery-tile { width: 14; height: 9; }
    Gallery.-small > .gallery-tile .picture-image { width: 12; height: 6; }
    Gallery > .gallery-tile .picture-caption { height: auto; max-height: 2; }
    """

    class Highlighted(Message):
        """The selected tile changed (run is None on an empty page)."""

        def __init__(self, gallery: Gallery, run: Any) -> None:
            super().__init__()
            self.gallery, self.run = gallery, run

        @property
        def control(self) -> Gallery:
            return self.gallery

    def __init__(self, fetch: Fetch, thumb_path: ThumbPath, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.fetch, self.thumb_path = fetch, thumb_path
        self.runs: list[Any] = []
        self.cursor = 0
        self.page = 0  # 0-based page number
        self.has_next = False
        self.starts: list[str | None] = [None]  # the `after` cursor of each page seen (starts[k]: page k)
        self.shape = (0, 0)  # (columns, rows) of the tiles mounted
        self.loaded = False
        self._token = 0  # thumbnails of an older page arrive late: ignored
        self._cache: OrderedDict[Path, tuple[Any, str]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.errors: list[str] = []
        self.thumbnails_painted = 0  # the token of the last page whose thumbnails were painted (tests read it)
        self._tile_list: list[Tile] = []

    # ---- size and tiles ----

    @property
    def page_size(self) -> int:
        return max(self.shape[0] * self.shape[1], 1)

    def _fit(self) -> tuple[int, int]:
        # Small tiles on a small terminal (the screen's breakpoint classes): 80x24 holds 3 x 2 of them.
        small = self.screen.has_class("-short") or self.screen.has_class("-narrow")
        self.set_class(small, "-small")
        width, height = TILE["small" if small else "normal"]
        return max(self.size.width // width, 1), max(self.size.height // height, 1)

    def on_resize(self) -> None:
        if self.size.width and self.size.height and self.fit_tiles():  # 0 x 0 while the list is shown
            self.reset(keep=self.selected_run())

    def fit_tiles(self) -> bool:
        """Mount as many tiles as the size holds; True when the shape changed (the page must be fetched)."""
        shape = self._fit()
        if shape == self.shape:
            return False
        self.shape = shape
        self.styles.grid_size_columns = shape[0]
        self.remove_children()
        self._tile_list = [Tile(k) for k in range(shape[0] * shape[1])]
        self.mount_all(self._tile_list)
        return True

    # ---- pages ----

    def reset(self, keep: Any = None) -> None:
        """Back to the first page (filters changed, a resize, a run added); keeps the selected run if shown."""
        self.starts, self.page = [None], 0
        self.show_page(keep_id=getattr(keep, "id", None))

    def show_page(self, keep_id: str | None = None, at_end: bool = False) -> bool:
        """Fetch page `self.page` from its cursor; False (and nothing changes) when the store fails."""
        if not self.shape[0]:
            self.fit_tiles()
        try:
            runs = list(self.fetch(self.starts[self.page], self.page_size + 1))
        except Exception as exc:  # HistoryUnavailable, a database error: the caller's notification
            from tnr_tui.ui.worker import describe_error

            self.errors.append(describe_error(exc))
            self.app.notify(describe_error(exc), title="History", severity="error", markup=False, timeout=10)
            return False
        self.has_next = len(runs) > self.page_size
        self.runs = runs[: self.page_size]
        if len(self.starts) == self.page + 1 and self.has_next:
            self.starts.append(self.runs[-1].id)
        ids = [run.id for run in self.runs]
        self.cursor = ids.index(keep_id) if keep_id in ids else (len(self.runs) - 1 if at_end else 0)
        self.cursor = max(min(self.cursor, len(self.runs) - 1), 0)
        self.loaded = True
        self._paint()
        self._load_thumbnails()
        self.post_message(self.Highlighted(self, self.selected_run()))
        return True

    def action_page(self, delta: int, at_end: bool = False) -> None:
        target = self.page + delta
        if target < 0 or (delta > 0 and not self.has_next):
            return
        previous = self.page
        self.page = target
        if not self.show_page(at_end=at_end):
            self.page = previous

    def action_first_page(self) -> None:
        self.reset()

    def action_move(self, dx: int, dy: int) -> None:
        if not self.runs:
            return
        columns = self.shape[0]
        target = self.cursor + dx + dy * columns
        if target < 0:
            if self.page > 0:
                self.action_page(-1, at_end=dx < 0)
            return
        if target >= len(self.runs):
            if self.has_next:
                self.action_page(1)
            return
        self.select(target)

    def select(self, slot: int) -> None:
        if 0 <= slot < len(self.runs) and slot != self.cursor:
            self.cursor = slot
            self._mark()
            self.post_message(self.Highlighted(self, self.selected_run()))

    def selected_run(self) -> Any:
        return self.runs[self.cursor] if 0 <= self.cursor < len(self.runs) else None

    def replace_run(self, run: Any) -> None:
        """A run of the page changed (favourite, note): its tile's caption follows."""
        for k, shown in enumerate(self.runs):
            if shown.id == run.id:
                self.runs[k] = run
                self._paint_tile(k)

    # ---- painting ----

    def _tiles(self) -> list[Tile]:
        return self._tile_list

    def _paint(self) -> None:
        for k in range(len(self._tiles())):
            self._paint_tile(k)
        self._mark()

    def _paint_tile(self, k: int) -> None:
        tiles = self._tiles()
        if k >= len(tiles):
            return
        tile = tiles[k]
        if k >= len(self.runs):
            tile.display = False
            return
        tile.display = True
        run = self.runs[k]
        cached = self._cached(self.thumb_path(run))
        image, why = cached if cached is not None else (None, "…")
        caption = tile_caption(run, self.has_class("-small"))
        tile.show(image, caption if image is not None or why == "…" else f"{caption}\n{why}")

    def _mark(self) -> None:
        for k, tile in enumerate(self._tiles()):
            tile.set_class(k == self.cursor, "-selected")

    # ---- thumbnails ----

    def _cached(self, path: Path | None) -> tuple[Any, str] | None:
        if path is None:
            return None, "no image"
        with self._cache_lock:
            found = self._cache.get(path)
            if found is not None:
                self._cache.move_to_end(path)
            return found

    def _load_thumbnails(self) -> None:
        """Decode the page's missing thumbnails on a thread; they are painted as they come, in one batch."""
        self._token += 1
        token = self._token
        wanted = [(k, self.thumb_path(run)) for k, run in enumerate(self.runs)]
        missing = [(k, path) for k, path in wanted if path is not None and self._cached(path) is None]
        if not missing:
            return

        def work() -> None:
            for _, path in missing:
                if token != self._token:
                    return  # another page was asked for meanwhile
                shown = read_image(path, max_px=THUMB_PX)
                with self._cache_lock:
                    self._cache[path] = shown
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
            try:
                self.app.call_from_thread(self._thumbnails_ready, token)
            except RuntimeError:  # the app closed meanwhile
                pass

        self.run_worker(work, thread=True, exit_on_error=False, group="thumbnails", name="thumbnails")

    def _thumbnails_ready(self, token: int) -> None:
        if token == self._token:
            self._paint()
            self.thumbnails_painted = token
