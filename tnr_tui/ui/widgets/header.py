"""The title bar at the top of each screen: Textual's Header drawn as one widget.

Textual's Header is four widgets (the header, its icon, its title, the clock's space), each mounted and
styled for every screen's first frame (about 3-5 ms of CPU a widget here, docs/pitfalls.md). This one draws
the same line in its own `render`: the icon in its 8 cells on the left, the title (the app's
`format_title` of the screen's or the app's title and sub-title) centred between it and the clock's 10 empty
cells on the right, cut with an ellipsis when it does not fit.

Like Textual's: a click on the icon opens the command palette (the icon is highlighted under the mouse and
says so in its tooltip), a click elsewhere toggles the tall header (3 lines, the line in the middle), and the
title follows the app's and the screen's title and sub-title. Not kept: the clock (the lab shows none).
"""

from __future__ import annotations

from textual import events
from textual.content import Content
from textual.widget import Widget

ICON_CELLS = 8  # Textual's HeaderIcon: width 8, padding 0 1
CLOCK_CELLS = 10  # Textual's HeaderClockSpace: width 10


class Header(Widget):
    """The screen's title line; see the module docstring."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"header--icon-hover"}
    DEFAULT_CSS = """
    Header {
        dock: top;
        width: 100%;
        background: $panel;
        color: $foreground;
        height: 1;
    }
    Header.-tall { height: 3; }
    Header { content-align: left middle; text-wrap: nowrap; text-overflow: clip; }
    Header > .header--icon-hover { background: $foreground 10%; }
    """

    def __init__(self, *, icon: str = "⭘", id: str | None = None) -> None:
        super().__init__(id=id)
        self.icon = icon
        self._icon_hovered = False

    def on_mount(self) -> None:
        for obj in (self.app, self.screen):
            self.watch(obj, "title", self._title_changed, init=False)
            self.watch(obj, "sub_title", self._title_changed, init=False)

    def _title_changed(self) -> None:
        self.refresh()

    def title(self) -> Content:
        """What the title shows: the screen's title (else the app's) and sub-title, as the app formats them."""
        screen, app = self.screen, self.app
        title = screen.title if screen.title is not None else app.title
        sub_title = screen.sub_title if screen.sub_title is not None else app.sub_title
        return app.format_title(title, sub_title)

    def render(self) -> Content:
        width = self.size.width
        icon = Content(f" {self.icon}".ljust(ICON_CELLS)[:ICON_CELLS])
        if self._icon_hovered:
            icon = icon.stylize(self.get_visual_style("header--icon-hover", partial=True))
        middle = max(0, width - ICON_CELLS - CLOCK_CELLS)
        title = self.title()
        if title.cell_length > middle:
            title = title.truncate(middle, ellipsis=True)
        left = (middle - title.cell_length) // 2  # centred, as Textual's HeaderTitle (content-align: center)
        right = max(0, width - ICON_CELLS - left - title.cell_length)
        return Content.assemble(icon, " " * left, title, " " * right)

    # ---- the mouse ----

    def _over_icon(self, x: int, y: int) -> bool:
        return 0 <= x < ICON_CELLS and y == (self.size.height - 1) // 2

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self._hover(self._over_icon(event.x, event.y))

    def on_leave(self, event: events.Leave) -> None:
        self._hover(False)

    def _hover(self, over_icon: bool) -> None:
        if over_icon != self._icon_hovered:
            self._icon_hovered = over_icon
            palette = over_icon and self.app.ENABLE_COMMAND_PALETTE
            self.tooltip = "Open the command palette" if palette else None
            self.refresh()

    async def on_click(self, event: events.Click) -> None:
        event.stop()
        if self._over_icon(event.x, event.y):
            if self.app.ENABLE_COMMAND_PALETTE:
                await self.run_action("app.command_palette")
        else:
            self.toggle_class("-tall")
