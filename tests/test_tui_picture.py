"""The batched terminal probe that replaces textual-image's one-query-at-a-time detection."""

from __future__ import annotations

import pytest

from tnr_tui.ui.widgets.picture import TerminalCaps, choose_protocol, parse_probe_reply


def test_kitty_reply_with_cell_size_and_device_attributes() -> None:
    reply = "\x1b_Gi=31;OK\x1b\\" + "\x1b[6;20;10t" + "\x1b[?62;22c"
    caps = parse_probe_reply(reply)
    assert caps == TerminalCaps(sixel=False, kitty=True, cell_size=(10, 20), answered=True)
    assert choose_protocol("auto", caps) == "tgp"


def test_sixel_terminal_is_preferred_over_its_kitty_claim() -> None:
    caps = parse_probe_reply("\x1b_Gi=31;OK\x1b\\\x1b[?64;4;22c")
    assert caps.sixel and caps.kitty and caps.cell_size is None
    assert choose_protocol("auto", caps) == "sixel"


def test_no_answer_falls_back_to_half_cells_and_forced_protocols_win() -> None:
    caps = parse_probe_reply("")
    assert caps == TerminalCaps() and not caps.answered
    assert choose_protocol("auto", caps) == "halfcell"
    assert choose_protocol("auto", caps, is_tty=False) == "unicode"
    assert choose_protocol("none", TerminalCaps(sixel=True)) == "none"
    with pytest.raises(ValueError, match="unknown image protocol 'kitty'"):
        choose_protocol("kitty")


def test_no_kitty_query_under_tmux_or_screen_which_would_make_it_the_window_title() -> None:
    from tnr_tui.ui.widgets.picture import probe_queries

    assert probe_queries({"TERM": "xterm-kitty"}).startswith("\x1b_Gi=31")
    for env in ({"TMUX": "/tmp/tmux-0/default,1,0", "TERM": "xterm"}, {"STY": "1.pts"}, {"TERM": "screen-256color"}):
        queries = probe_queries(env)
        assert "\x1b_" not in queries and queries.endswith("\x1b[c")  # the cell size and DA1 are still asked
