"""Textual's Footer, recomposed only when the bindings it shows change.

Textual's footer rebuilds all its keys whenever the screen's bindings may have changed (every focus change,
every mount): three identical rebuilds before the Lab's first frame, eight widgets each (measured with a
counter on `recompose`). This one compares what it would show with what it shows and skips the rebuild
when they are the same. It relies on Footer.bindings_changed and `_bindings_ready` of Textual 8.2.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer as TextualFooter


class Footer(TextualFooter):
    """A drop-in Footer that skips rebuilds which would show the same keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple[Any, ...] | None = None
        self.rebuilds = 0  # tests and benches read it

    def _wanted(self, screen: Screen) -> tuple[Any, ...]:
        return tuple(
            (binding.key, binding.description, binding.action, enabled, tooltip)
            for (_, binding, enabled, tooltip) in screen.active_bindings.values()
            if binding.show
        ) + (self.show_command_palette, self.compact)

    def bindings_changed(self, screen: Screen) -> None:
        if not (screen.app.app_focus and self.is_attached and screen is self.screen):
            super().bindings_changed(screen)
            return
        wanted = self._wanted(screen)
        if wanted == self._shown:
            return
        self._shown = wanted
        self.rebuilds += 1
        super().bindings_changed(screen)
