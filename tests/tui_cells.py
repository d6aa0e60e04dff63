"""What a Pilot test's screen shows, cell by cell, for comparing one widget's drawing with another's."""

from __future__ import annotations

from typing import Any

from textual.app import App


def screen_lines(app: App) -> list[str]:
    return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]  # noqa: SLF001


def looks(app: App, y: int, width: int | None = None) -> list[tuple[str, Any, Any, Any, Any]]:
    """Row y's cells as they look: the character and background, and (for a cell that is not blank, where they
    show) its colour, bold and reverse; up to `width` cells."""
    out: list[tuple[str, Any, Any, Any, Any]] = []
    for segment in app.screen._compositor.render_strips()[y]:  # noqa: SLF001
        style = segment.style
        for char in segment.text:
            shown = bool(char.strip()) and style is not None
            out.append(
                (
                    char,
                    style and style.bgcolor,
                    style.color if shown else None,
                    style.bold if shown else None,
                    style.reverse if shown else None,
                )
            )
    return out if width is None else out[:width]
