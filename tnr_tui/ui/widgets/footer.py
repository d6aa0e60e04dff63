"""The key bar at the bottom of each screen: Textual's Footer drawn as one widget.

Textual's Footer is a container of one FooterKey widget per key, which it mounts only after the screen's
bindings are known, that is after the first frame: every screen's first frame had an empty footer, then a
mount of 7-8 widgets, a layout of the whole screen (~40 ms on the 2-core box) and a second frame; and every
focus change that altered the keys rebuilt them all. This one draws the same keys (the screen's active
bindings that show, one per action, the command palette's on the right) as one line of text in its own
`render`, so they are in the first frame, and a change of keys is a repaint of one line, never a layout.

Like Textual's: a click on a key presses it (`App.simulate_key`), a disabled key rings the bell, the key under
the mouse is highlighted and its tooltip (or description) shows, and keys use the app's key display (its
keymap). Not kept: binding groups (the lab has none) and the compact style.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget


@dataclass(frozen=True)
class FooterItem:
    key: str  # what simulate_key presses
    display: str  # as the app shows it (keymap included)
    description: str
    enabled: bool
    tooltip: str
    palette: bool = False  # the command palette's key, drawn on the right


class Footer(Widget, can_focus=False):
    """The screen's keys on one line; see the module docstring."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"footer-key--key", "footer-key--description", "footer-key--hover", "footer-key--separator"}
    DEFAULT_CSS = """
    Footer {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        text-wrap: nowrap;
        text-overflow: clip;
    }
    Footer > .footer-key--key {
        color: $footer-key-foreground;
        background: $footer-key-background;
        text-style: bold;
    }
    Footer > .footer-key--description {
        color: $footer-description-foreground;
        background: $footer-description-background;
    }
    Footer > .footer-key--hover { color: $footer-key-foreground; background: $block-hover-background; }
    Footer > .footer-key--separator { color: $foreground 20%; }
    """

    def __init__(self, *, show_command_palette: bool = True, id: str | None = None) -> None:
        super().__init__(id=id)
        self.show_command_palette = show_command_palette
        self._items: tuple[FooterItem, ...] | None = None  # as drawn last
        self._spans: list[tuple[int, int, FooterItem]] = []  # cells [start, end) of each drawn key
        self._hover: FooterItem | None = None
        self._mouse_x: int | None = None  # where the mouse is over the footer, None when it is elsewhere
        self.repaints = 0  # tests and benches read it: a change of keys repaints, it never mounts

    # ---- what it shows ----

    def items(self, screen: Screen | None = None) -> tuple[FooterItem, ...]:
        """The keys to show now, in the screen's order: one per action, the palette's last."""
        screen = screen or self.screen
        app = self.app

        def item(binding: Binding, enabled: bool, tooltip: str, palette: bool = False) -> FooterItem:
            display = app.get_key_display(binding)
            return FooterItem(binding.key, display, binding.description, enabled, tooltip, palette)

        seen: set[str] = set()
        found: list[FooterItem] = []
        bindings = screen.active_bindings
        for _node, binding, enabled, tooltip in bindings.values():
            if binding.show and binding.action not in seen:
                seen.add(binding.action)
                found.append(item(binding, enabled, tooltip))
        entry = bindings.get(app.COMMAND_PALETTE_BINDING)
        if self.show_command_palette and app.ENABLE_COMMAND_PALETTE and entry is not None:
            _node, binding, enabled, _tooltip = entry
            found.append(item(binding, enabled, binding.tooltip or binding.description, palette=True))
        return tuple(found)

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen and self.items(screen) != self._items:
            self.refresh()

    # ---- drawing ----

    def render(self) -> Text:
        self._items = items = self.items()
        self.repaints += 1
        key_style = self.get_component_rich_style("footer-key--key")
        description_style = self.get_component_rich_style("footer-key--description")
        separator_style = self.get_component_rich_style("footer-key--separator")
        # Its background only: in Textual's the key's and description's colours override the hover's.
        hover_style = Style(bgcolor=self.get_component_rich_style("footer-key--hover").bgcolor)
        width = self.size.width
        text = Text(no_wrap=True, overflow="crop", end="")
        spans: list[tuple[int, int, FooterItem]] = []

        def key_text(item: FooterItem) -> Text:
            # As Textual draws them: " key description ", and the palette's "key description" after its bar.
            key = item.display if item.palette else f" {item.display} "
            description = f" {item.description}" if item.palette else f"{item.description} "
            part = Text.assemble((key, key_style), (description, description_style))
            if not item.enabled:
                part.stylize("dim")
            if item == self._hover:
                part.stylize(hover_style)
            return part

        palette = next((item for item in items if item.palette), None)
        palette_part = None if palette is None else key_text(palette)
        # As Textual's: the palette's key keeps its place on the right (its bar before it, a cell of padding
        # after). Unlike Textual's, a key that does not fit whole is left out, not cut mid-word ("f4 Co",
        # "s Sw" at 60-80 columns told nothing and still took a click).
        room = width if palette_part is None else max(0, width - palette_part.cell_len - 2)
        for item in items:
            start = text.cell_len
            if item.palette:
                continue
            part = key_text(item)
            if start + part.cell_len > room:
                break
            spans.append((start, start + part.cell_len, item))
            text.append_text(part)
        text.truncate(room)
        if palette is not None and palette_part is not None:
            text.append(" " * (room - text.cell_len))
            text.append("▏", separator_style)
            # Its bar and its padding are a part of it, as in Textual's (its border and padding).
            spans.append((room, room + 2 + palette_part.cell_len, palette))
            text.append_text(palette_part)
            text.append(" ")
        self._spans = spans
        if self._mouse_x is not None and self._item_at(self._mouse_x) != self._hover:
            # The keys changed under a resting mouse: hover the one now under it, as Textual's Footer does.
            self.call_later(self._hover_at_mouse)
        return text

    # ---- the mouse ----

    def _item_at(self, x: int) -> FooterItem | None:
        return next((item for start, end, item in self._spans if start <= x < end), None)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self._mouse_x = event.x
        self._set_hover(self._item_at(event.x))

    def on_leave(self, event: events.Leave) -> None:
        self._mouse_x = None
        self._set_hover(None)

    def _hover_at_mouse(self) -> None:
        if self._mouse_x is not None:
            self._set_hover(self._item_at(self._mouse_x))

    def _set_hover(self, item: FooterItem | None) -> None:
        if item == self._hover:
            return
        self._hover = item
        self.tooltip = (item.tooltip or item.description) if item is not None else None
        self.refresh()

    def on_mouse_down(self, event: events.MouseDown) -> None:
        item = self._item_at(event.x)
        if item is None:
            return
        if item.enabled:
            self.app.simulate_key(item.key)
        else:
            self.app.bell()

    def keys(self) -> list[str]:
        """The descriptions shown, in order (tests read it)."""
        return [item.description for item in self._items or ()]
