"""The first frame the lab writes to a terminal is the whole Lab, not a part of it.

Textual renders the first screen while its start-up batch is open and drops that frame; the partial updates
that followed were painted on a blank terminal (the controls without their panels' borders, the prompt's text
and the keys, for two frames). TnrLabApp.on_mount marks the screen's widgets for a repaint, so the first frame
written is whole. Checked on the bytes the real terminal driver writes to a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

SYNC_END = b"\x1b[?2026l"  # the end of a frame once the terminal said it has synchronized output
APP = (
    "import sys; from tnr_tui.ui.app import TnrLabApp; "
    "TnrLabApp(data_dir=sys.argv[1], image_protocol='halfcell', autoload=False).run()"
)
# Drawn only when the screen is whole: the panels' border titles, the prompt's text, the keys.
WHOLE = [b" Prompt ", b" Solver ", b" Guidance ", b" Preview ", b"circle", b"euler", b"Run", b"palette"]


def first_frame(data_dir: Path, columns: int = 150, lines: int = 46) -> bytes:
    """What the lab wrote up to the end of its first frame with the Lab's panels in it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the lab on a pseudo-terminal of its size from the start
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        # An explicit environment: under pytest the process environment has COLUMNS=80 and LINES=24 (set with
        # putenv, not in os.environ), which Textual would take over the terminal's own size.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
        os.execve(sys.executable, [sys.executable, "-c", APP, str(data_dir)], env)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if b"\x1b[?2026$p" in chunk:  # asked whether the terminal has synchronized output: yes
                os.write(fd, b"\x1b[?2026;1$y")
            out += chunk
            end = out.find(SYNC_END)
            while end >= 0:
                if b"Prompt" in out[:end]:
                    return out[:end]
                end = out.find(SYNC_END, end + 1)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    raise AssertionError(f"no frame with the Lab in it within 60 s; the lab wrote {out[-2000:]!r}")


def test_the_first_frame_written_is_the_whole_lab(tmp_data_dir: Path) -> None:
    frame = first_frame(tmp_data_dir)
    missing = [word.decode() for word in WHOLE if word not in frame]
    assert missing == [], f"the first frame lacks {missing}"


async def test_quitting_before_the_deferred_imports_end_prints_nothing(tmp_data_dir: Path, monkeypatch) -> None:
    """The import thread hands its result back with a message: a closed app drops it. (call_from_thread made
    a coroutine first and, the loop being closed, Python printed "coroutine ... was never awaited".)"""
    import gc
    import threading
    import warnings

    import tnr_tui.ui.app as app_module

    closed = threading.Event()
    real_import = app_module.import_image_library

    def import_after_the_app_closed() -> None:  # the imports outlast the app, however fast the machine
        closed.wait(30)
        real_import()

    monkeypatch.setattr(app_module, "import_image_library", import_after_the_app_closed)
    app = app_module.TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with app.run_test(size=(150, 46)) as pilot:
            while app.first_frame_at is None:
                await pilot.pause(0.005)
        closed.set()
        # The app is closed; the import thread may still be importing: let it finish and hand back. (With
        # call_from_thread it waited for ever on a loop the app had left, or found it closed and warned.)
        threads = [thread for thread in threading.enumerate() if thread.name == "tnr-lab-imports"]
        for thread in threads:
            thread.join(timeout=30)
        gc.collect()
    assert threads and not any(thread.is_alive() for thread in threads)
    assert not app.deferred_ready  # it did end after the app: the case under test happened
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
