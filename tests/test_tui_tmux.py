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

from tnr_tui.services.history import open_store

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def alive(session: str) -> bool:
    return subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0


def start(session: str, command: str, width: int, height: int) -> None:
    """A detached session of that size running `command`. The size is fixed before the command starts
    (without a client some tmux versions fall back to 80x24), and COLUMNS/LINES, which a tmux server
    started from pytest hands its panes as 80 and 24, are unset: the app would believe them."""
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height)], check=True)
    subprocess.run(["tmux", "set-option", "-t", session, "window-size", "manual"], capture_output=True)
    subprocess.run(["tmux", "resize-window", "-t", session, "-x", str(width), "-y", str(height)], capture_output=True)
    subprocess.run(["tmux", "respawn-pane", "-k", "-t", session, f"env -u COLUMNS -u LINES {command}"], check=True)


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
    start(session, command, 160, 50)
    try:
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


def test_hostile_history_content_in_a_real_terminal(tmp_path: Path) -> None:
    """A prompt that would retitle the window and clear the screen, and a stored image that is not one: in a
    real terminal the History and the Lab show the escapes, the title stays, and the app keeps running."""
    from PIL import Image

    from engine.request import GenerationRequest
    from tnr_tui.services.history import OutputFile

    home = tmp_path / "home"
    store = open_store(home)
    run_id = store.create_run(GenerationRequest(prompt="\x1b]0;PWNED\x07red\x1b[2J circle\rX", steps=2))
    image = store.new_output_path(run_id, ".png")
    image.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(image)
    store.finish_run(run_id, "done", stats={"seconds": 0.1}, outputs=[OutputFile.of("image", image)])
    store.close()
    image.write_bytes(b"not a png any more")
    session = f"tnrlab-test-{time.monotonic_ns()}"
    command = f"env TNR_LAB_HOME={home} TERM=xterm-256color {sys.executable} -m tnr_tui --image-protocol auto"
    start(session, command, 230, 50)

    def title() -> str:
        display = ["tmux", "display-message", "-p", "-t", session, "#{pane_title}"]
        return subprocess.run(display, capture_output=True, text=True).stdout

    try:
        wait_screen(session, "Prompt", 30)
        subprocess.run(["tmux", "send-keys", "-t", session, "F3"], check=True)
        screen = wait_screen(session, "\\x1b]0;PWNED\\x07red\\x1b[2J circle\\rX", 15)
        assert "image unreadable: not an image file" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "l"], check=True)
        wait_screen(session, "loaded run", 15)
        wait_screen(session, "Preview", 15)  # the Lab, not a cleared screen (one capture may catch a repaint)
        wait_screen(session, "\\x1b]0;PWNED", 15)  # the loaded prompt, escaped in its field
        assert "PWNED" not in title()
        assert "Gi=31" not in title()  # the lab's own kitty probe is not sent where tmux would make it the title
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 5
        while alive(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(session), "the app did not quit on ctrl+q"
    finally:
        if alive(session):
            subprocess.run(["tmux", "kill-session", "-t", session])
