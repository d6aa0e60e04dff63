"""Waiting in Pilot tests for a condition the app reaches on its own (a worker's message, a thread's result):
polled at the pilot's pace, an AssertionError naming what never came after `timeout` seconds."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any


def waiter(timeout: float = 60.0, poll: float = 0.05) -> Callable[..., Awaitable[None]]:
    """`wait_for(pilot, condition, timeout=..., what=...)` with this module's defaults for one test file."""

    async def wait_for(pilot: Any, condition: Any, timeout: float = timeout, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await pilot.pause(poll)

    return wait_for


async def settle(pilot: Any, condition: Any, what: str, timeout: float = 4.0) -> None:
    """Wait (polling every 20 ms) for a condition the app reaches within a few frames: a widget's own change."""
    await waiter(timeout, 0.02)(pilot, condition, what=what)


async def open_history(pilot: Any, timeout: float = 20.0) -> Any:
    """Press f3 and wait until the History screen is the one shown and has loaded its first page (its rows, or
    none): a fixed pause after f3 raced the screen's first compose on a loaded host. Returns the screen."""
    app = pilot.app
    await pilot.press("f3")

    def loaded() -> bool:
        screen = app.screen
        return type(screen).__name__ == "HistoryScreen" and screen.is_mounted and screen.pages_loaded >= 1

    await waiter(timeout, 0.02)(pilot, loaded, what="the History screen's first page")
    await pilot.pause()
    return app.screen
