"""Python's cyclic garbage collector, held off while a process starts (issues 11 and 15; docs/pitfalls.md).

Starting is making objects that live as long as the process: importing torch, diffusers and transformers
and building a model's modules, or importing Textual and building the Lab. The collector kept walking them.
`tnr-lab generate` spent ~870 ms of its 5 s in 1 083 collections (timed with `gc.callbacks`, the tiny
model): ~140 ms while torch imported, ~620 ms inside `load_bundle`. The lab spent ~68 ms of a 0.75 s start
in 190 collections before its first frame.

So the collector is off from `tnr-lab`'s first line until the start is over: the lab's first frame, or the
end of a model's load (`engine.models.load_bundle` holds it for its own work, whoever calls it). The lab's first
frame and `generate`'s load also freeze what exists then (`gc.freeze`), so that no later collection, nor the
one at the interpreter's exit, walks those objects again: `generate` on the tiny model took ~1 s less frozen
than only re-enabled (10 alternating pairs), since the first collections after a long hold walk everything
made during it. What the freeze keeps is start-up garbage that is never freed: ~7 700 objects at the lab's
first frame, ~9 600 after a model's load (imported functions, types, tuples; no tensor, checked on the tiny
model and the embedded one). Sweeps, studies and the lab's own model loads only re-enable it.

Only a collector that `hold` turned off is turned back on: a caller (a test, an embedding program) that
disabled it keeps it off.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_held = False
_freeze_at_release = False


def hold(freeze_at_release: bool = False) -> None:
    """Turn the collector off until `release`, if it is on. `freeze_at_release`: a process that does one thing
    and ends (`generate`) freezes what exists when the start is over, whoever releases it."""
    global _held, _freeze_at_release
    with _lock:
        if gc.isenabled():
            gc.disable()
            _held, _freeze_at_release = True, freeze_at_release


def release(freeze: bool = False) -> bool:
    """Turn the collector back on if `hold` turned it off; True if it did. With `freeze` (or a hold that asked
    for it), what exists now is first moved out of the collector's sight, for good: the lab's start-up objects
    at its first frame, the imported libraries and the model at the end of `generate`'s load."""
    global _held
    with _lock:
        if not _held:
            return False
        _held = False
        if freeze or _freeze_at_release:
            gc.freeze()
        gc.enable()
        return True


def is_held() -> bool:
    return _held
