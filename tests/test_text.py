"""`tnr_tui.services.text.visible`: control characters of user text are shown as escapes; ordinary text is kept."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from tnr_tui.services.text import visible

HOSTILE = "\x1b]0;TITLE\x07 then \x1b[2J and a bare \r here"


def test_escape_sequences_bel_and_cr_become_their_escapes():
    shown = visible(HOSTILE)
    assert shown == "\\x1b]0;TITLE\\x07 then \\x1b[2J and a bare \\r here"
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in shown)


@pytest.mark.parametrize(
    "char,shown",
    [
        ("\x00", "\\x00"),
        ("\t", "\\t"),
        ("\n", "\\n"),
        ("\x7f", "\\x7f"),
        ("\x9b", "\\x9b"),  # C1 CSI: one byte starts an escape sequence on some terminals
        ("\u202e", "\\u202e"),  # right-to-left override: the text shown would read differently
        ("\u2066", "\\u2066"),
        ("\u2028", "\\u2028"),
        ("\ud800", "\\ud800"),  # a lone surrogate cannot even be encoded for the terminal
    ],
)
def test_each_unsafe_character_is_escaped(char, shown):
    assert visible(f"a{char}b") == f"a{shown}b"


def test_ordinary_unicode_and_backslashes_are_kept():
    text = "Ünïcödé 猫 🐈‍⬛ café (a\\(b\\)) \u200f\u05e9\u05dc\u05d5\u05dd"
    assert visible(text) == text


def test_keep_newlines_keeps_only_the_newline():
    assert visible("a\nb\r\n\x1b", keep_newlines=True) == "a\nb\\r\n\\x1b"


def test_anything_goes_through_str():
    from pathlib import Path

    assert visible(Path("/tmp/x\x1b.png")) == "/tmp/x\\x1b.png"
    assert visible(ValueError("bad \x07")) == "bad \\x07"


def test_what_is_escaped_is_exactly_the_documented_set_by_unicode_category():
    """The regex ranges checked against unicodedata over the whole code space: controls (Cc), surrogates (Cs),
    line/paragraph separators (Zl, Zp) and the bidi embedding/override/isolate controls; nothing else."""
    bidi = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
    for code in range(0x110000):
        char = chr(code)
        expected = unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in bidi
        shown = visible(char)
        assert (shown != char) == expected, hex(code)
        if expected:
            assert shown.startswith("\\") and shown.isascii() and shown.isprintable(), repr(shown)


def test_text_module_is_pure():
    code = "import sys, tnr_tui.services.text; print(sorted(m for m in ('torch', 'textual', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
