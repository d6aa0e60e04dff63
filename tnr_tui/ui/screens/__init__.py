"""The lab's screens: Lab (panels and preview), History (the run store), Compare (a grid of runs)."""

from __future__ import annotations

from textual.screen import Screen


def preset_breakpoints(screen: Screen) -> None:
    """Give the screen its breakpoint classes (-narrow/-wide, -short/-tall) before its widgets exist.

    Textual sets them on the first resize, after compose; a class change then restyles every widget of
    the screen (about 2500 style applications for the Lab, roughly doubling the time to the first frame
    on a loaded machine). Call it first thing in compose.
    """
    app = screen.app
    width, height = app.size
    classes: dict[str, bool] = {}
    for breakpoints, value in ((app.HORIZONTAL_BREAKPOINTS, width), (app.VERTICAL_BREAKPOINTS, height)):
        reached = [name for threshold, name in sorted(breakpoints or []) if value >= threshold]
        for _, name in breakpoints or []:
            classes[name] = bool(reached) and name == reached[-1]
    screen.update_classes(classes)
