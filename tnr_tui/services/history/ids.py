"""Run ids: ULID-like strings (26 Crockford base32 characters: 48-bit milliseconds + 80 random bits).

Why not an integer: ids must stay unique across machines so that `history import` can be idempotent by id,
and sort by creation time so that keyset pagination on the primary key lists newest first.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_run_id(now_ms: int | None = None) -> str:
    """A new id; ids made by one process are strictly increasing (random part bumped within one ms)."""
    global _last_ms, _last_rand
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_rand = ms, rand
    return _encode(ms, 10) + _encode(rand, 16)


def is_run_id(text: str) -> bool:
    return len(text) == 26 and all(c in _ALPHABET for c in text)


def id_time_ms(run_id: str) -> int:
    """The creation time (ms since the epoch) an id encodes."""
    value = 0
    for c in run_id[:10]:
        value = value * 32 + _ALPHABET.index(c)
    return value
