"""User text made safe to show on a terminal. Pure, no dependencies (the CLI and the TUI both use it).

Prompts, notes, tags, model names and paths arrive from imports and from PNGs found online; printed raw, an
ESC starts an escape sequence (retitle the window, clear the screen, fake a line), a bare CR overwrites the
line, a BEL rings. `visible` writes each such character as its Python escape instead, so it shows and acts on
nothing.

What is escaped, decided once here:
- every C0 control (U+0000-U+001F), DEL and every C1 control (U+0080-U+009F: U+009B is a one-byte CSI for
  some terminals), tab and newline included: one value stays on one line, in one column;
  `keep_newlines=True` keeps newline for a multi-line field printed on its own lines (prompts in full);
- lone surrogates (they cannot be encoded and would crash the print), U+2028/U+2029 (line and paragraph
  separators) and the bidirectional embedding, override and isolate controls (U+202A-U+202E,
  U+2066-U+2069), which make the text shown read differently from the text stored.
Everything else is ordinary text and kept as is: letters of every script, emoji with their zero-width
joiners, combining marks, the bidi marks U+200E/U+200F. A backslash is kept too (A1111 prompts write
`\\(` for a literal parenthesis), so `\\x1b` typed by a user and an escaped ESC look alike; neither is a
control character on the terminal.
"""

from __future__ import annotations

import re

_BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI_CONTROLS}\ud800-\udfff]")
_UNSAFE_KEEP_NEWLINES = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029{_BIDI_CONTROLS}\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object, *, keep_newlines: bool = False) -> str:
    """`text` (anything: it goes through `str`) with each control character written as its escape."""
    text = text if isinstance(text, str) else str(text)
    pattern = _UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, text)


__all__ = ["visible"]
