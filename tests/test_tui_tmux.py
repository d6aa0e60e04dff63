"""The real `tnr-lab` in a real terminal (tmux): type a prompt, ctrl+r, see it finish, ctrl+q.

It goes through the CLI entry point, the batched terminal probe (tmux answers device attributes), the
worker thread and the history, exactly as a user's session does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tnr_tui.history import open_store

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def alive(session: str) -> bool:
    return subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0


def wait_screen(session: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = capture(session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear within {timeout} s; the screen:\n{screen}")


def test_real_app_in_tmux_runs_a_prompt_and_quits(tmp_path: Path, tiny_sdxl_dir: Path) -> None:
    home = tmp_path / "home"
    session = f"tnrlab-test-{time.monotonic_ns()}"
    command = (
        f"env TNR_LAB_HOME={home} TERM=xterm-256color {sys.executable} -m tnr_tui "
        f"--model {tiny_sdxl_dir} --image-protocol auto"
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", command], check=True)
    try:
        # Without a client attached, some tmux versions keep 80x24 whatever -x/-y say.
        subprocess.run(["tmux", "set-option", "-t", session, "window-size", "manual"], capture_output=True)
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "160", "-y", "50"], capture_output=True)
        wait_screen(session, "Prompt", 30)
        wait_screen(session, ": loaded", 60)
        subprocess.run(["tmux", "send-keys", "-t", session, "-l", "a red [bold]circle"], check=True)
        wait_screen(session, "[bold]circle", 5)  # typed literally (the input may scroll its start away)
        subprocess.run(["tmux", "send-keys", "-t", session, "C-r"], check=True)
        screen = wait_screen(session, "done ·", 180)
        assert "colourfulness" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 5
        while alive(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(session), "the app did not quit on ctrl+q"
    finally:
        if alive(session):
            subprocess.run(["tmux", "kill-session", "-t", session])
    (run,) = open_store(home).list_runs()
    assert run.status == "done" and run.prompt == "a red [bold]circle" and run.origin == "tui"
