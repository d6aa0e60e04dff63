"""Python's cyclic garbage collector, held off while the lab starts (issue 15; docs/pitfalls.md).

Importing Textual and building the Lab makes ~120 000 objects that live as long as the lab does, and the
collector kept walking them: 190 collections, ~68 ms of a 0.75 s start before the first frame (timed with
`gc.callbacks`). They found ~7 700 objects to free. So `tnr-lab` turns the collector off from its first line,
and the app turns it back on at its first frame. It freezes what exists then (`gc.freeze`), so that later
collections, during runs too, do not walk the lab's own widgets and modules again. The start-up's garbage
stays unfreed: a fixed ~7 700 objects, once, and not growing.

Only a collector that `hold` turned off is turned back on: a caller (a test, an embedding program) that
disabled it keeps it off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_held = False


def hold() -> None:
    """Turn the collector off until `release`, if it is on."""
    global _held
    with _lock:
        if gc.isenabled():
            gc.disable()
            _held = True


def release(freeze: bool = False) -> bool:
    """Turn the collector back on if `hold` turned it off; True if it did. With `freeze`, what exists now is
    moved out of the collector's sight first (the lab's start-up objects, at its first frame)."""
    global _held
    with _lock:
        if not _held:
            return False
        _held = False
        if freeze:
            gc.freeze()
        gc.enable()
        return True


def is_held() -> bool:
    return _held


@contextmanager
def held() -> Iterator[None]:
    """The collector held off inside; turned back on at the end if the app did not do it first (it failed
    before its first frame, or never drew one)."""
    hold()
    try:
        yield
    finally:
        release()
