"""Time to first frame of the lab and the UI event-loop lag while a run is in progress.

    python bench/tui_latency.py [--model PATH] [--steps N] [--size PX] [--repeats N] [--runs N]
                                [--first-frame-only]
    python bench/tui_latency.py --gallery 100000     # the History's gallery pages over 100 000 runs

Goals (issue 15): first frame <= 0.5 s (torch and the model load after it), event-loop lag p95 <= 20 ms
during a run, with the live telemetry plot drawing beside the preview (150x46: both show).

Time to first frame is measured in a fresh interpreter, from its start to the end of the app's first
refresh (the median of --repeats interpreters: on a shared machine the best one is luck), split into the
imports (interpreter start to `tnr_tui.ui.app` imported), building the app, and Textual's start up to the
first frame; the interpreter's CPU seconds to the first frame are printed beside the wall seconds (less
sensitive to other processes' load). Compiled modules are cached (in the temporary data directory) as an
installed lab's are, unless --no-bytecode-cache. Lag is the lateness of a 20 ms timer on the UI thread while
the worker samples, pooled over --runs runs; the load average is printed with it, since on a shared 2-core machine the
other tenants decide much of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIRST_FRAME_SCRIPT = r"""
import time, sys
t0 = time.perf_counter()
try:  # as `tnr-lab` does from its first line, to its first frame (not in a tree from before it did)
    from engine import collector
    collector.hold()
except ImportError:
    pass
from tnr_tui.ui.app import TnrLabApp
import asyncio
t_imported = time.perf_counter()

HEAVY = ("torch", "sqlalchemy", "textual_image")

async def main():
    app = TnrLabApp(data_dir=sys.argv[1], image_protocol="halfcell", autoload=False)
    t_built = time.perf_counter()
    after_first_paint = app._after_first_paint
    loaded = []

    def spy():  # which heavy libraries were imported before the first frame
        loaded.extend(name for name in HEAVY if name in sys.modules)
        after_first_paint()

    app._after_first_paint = spy
    async with app.run_test(size=(150, 46)) as pilot:
        while app.first_frame_at is None:
            await pilot.pause(0.005)
        cpu = time.process_time()  # the interpreter's own CPU seconds, its start-up included
        # t0 is taken after the interpreter started (site, the venv's .pth files): add that from the clock.
        print(app.first_frame_at - t0, t_imported - t0, t_built - t_imported, app.first_frame_at - t_built, cpu,
              ",".join(loaded) or "-")
asyncio.run(main())
"""


# The peer: Textual's own floor on this host, in the same run. A bare App (one line of text) from its
# interpreter's first statement to its first refresh, timed as the lab is. What the lab takes over it is ours.
TEXTUAL_FLOOR_SCRIPT = r"""
import time
t0 = time.perf_counter()
from textual.app import App
from textual.widgets import Static
import asyncio

class Floor(App):
    def compose(self):
        yield Static("tnr-lab")

    def on_mount(self):
        self.call_after_refresh(self.painted)

    def painted(self):
        self.first_frame_at = time.perf_counter()

async def main():
    app = Floor()
    app.first_frame_at = None
    async with app.run_test(size=(150, 46)) as pilot:
        while app.first_frame_at is None:
            await pilot.pause(0.005)
        print(app.first_frame_at - t0)
asyncio.run(main())
"""


def fresh_interpreter(script: str, data_dir: str, env: dict[str, str] | None) -> list[str]:
    """What `script` prints, as words, run in a fresh interpreter from the data directory: `python -c` puts the
    working directory first on sys.path, which would shadow PYTHONPATH (--also-tree) when run from a checkout."""
    out = subprocess.run(
        [sys.executable, "-c", script, data_dir], capture_output=True, text=True, check=True, env=env, cwd=data_dir
    )
    return out.stdout.split()


def textual_floor(data_dir: str, env: dict[str, str] | None = None) -> float:
    return float(fresh_interpreter(TEXTUAL_FLOOR_SCRIPT, data_dir, env)[-1])


@dataclass
class FirstFrame:
    seconds: float  # interpreter's first statement to the first frame
    imports: float  # ... of which importing the app
    build: float  # building TnrLabApp
    start: float  # Textual's start (screens composed, styled, laid out) to the first frame
    cpu: float  # the process's CPU seconds at the first frame (interpreter start-up included)
    loaded: str  # heavy libraries imported before the first frame


def bytecode_env(cache_dir: str | None) -> dict[str, str]:
    """The interpreter's environment: with `cache_dir`, compiled modules are kept there (as an installed lab
    keeps them in __pycache__) even where PYTHONDONTWRITEBYTECODE is set, as on this machine, where every
    start would otherwise compile the lab's ~100 modules again; the work tree is not written to."""
    env = dict(os.environ)
    if cache_dir:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def first_frame(data_dir: str, env: dict[str, str] | None = None) -> FirstFrame:
    """One fresh interpreter's time to the first frame, split, and the heavy libraries imported before it."""
    *numbers, loaded = fresh_interpreter(FIRST_FRAME_SCRIPT, data_dir, env)
    return FirstFrame(*(float(n) for n in numbers), loaded)


SYNC_END = b"\x1b[?2026l"  # the end of a frame (synchronized output), once the terminal says it has the mode
LAB_SCRIPT = "import sys; from tnr_tui.cli import main; sys.argv[0] = 'tnr-lab'; sys.exit(main())"


@dataclass
class TerminalFrames:
    first: float  # spawn to the end of the first frame written
    complete: float  # spawn to the end of the first frame by which everything in WHOLE_SCREEN had been drawn
    frames: int  # frames written from the first to the complete one


# What the Lab's screen shows once it is drawn: the panels' titles, the prompt's text, the choices, the keys.
WHOLE_SCREEN = ("Prompt", "Solver", "Guidance", "Seed", "Model", "Preview", "circle", "euler", "cfg", "Run", "palette")


def lab_command() -> list[str]:
    script = Path(sys.executable).with_name("tnr-lab")
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-c", LAB_SCRIPT]


def terminal_frames(data_dir: str, env: dict[str, str], size: tuple[int, int] = (150, 46)) -> TerminalFrames:
    """The real `tnr-lab` in a pseudo-terminal of `size`: from the spawn (interpreter start, the CLI, the real
    terminal driver included) to the end of its first frame, and of the first frame by which all of the Lab
    (WHOLE_SCREEN) had been drawn: a first frame can be partial (Textual paints what is ready). The reader
    answers Textual's query for synchronized output as tmux, kitty or WezTerm do, so each frame ends with
    SYNC_END."""
    import fcntl
    import pty
    import select
    import signal
    import struct
    import termios

    columns, lines = size
    command = [*lab_command(), "--data-dir", data_dir, "--image-protocol", "halfcell"]
    # Not COLUMNS or LINES: Textual would take them over the terminal's own size.
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the lab, on a pseudo-terminal of its size from the start (as a terminal's is)
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        os.chdir(data_dir)  # as first_frame, for PYTHONPATH
        os.execve(command[0], command, env)
    out, ends, complete = b"", [], None
    wanted = [word.encode() for word in WHOLE_SCREEN]
    try:
        while complete is None and time.perf_counter() - started < 30:
            if not select.select([fd], [], [], 0.02)[0]:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            now = time.perf_counter()
            if b"\x1b[?2026$p" in chunk:
                os.write(fd, b"\x1b[?2026;1$y")
            searched_from = max(0, len(out) - len(SYNC_END))
            out += chunk
            position = out.find(SYNC_END, searched_from)
            while position >= 0 and complete is None:
                ends.append(now)
                if all(word in out[:position] for word in wanted):
                    complete = now
                position = out.find(SYNC_END, position + 1)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
    if complete is None:
        raise SystemExit(f"the lab did not draw all of {WHOLE_SCREEN} within 30 s")
    return TerminalFrames(ends[0] - started, complete - started, len(ends))


async def loop_lag(model: str, steps: int, size: int, data_dir: str) -> tuple[list[float], float, float]:
    """(lag samples, run seconds, the UI thread's CPU seconds during the run)."""
    from textual.widgets import Input

    from tnr_tui.ui.app import TnrLabApp

    app = TnrLabApp(data_dir=Path(data_dir), model=model, image_protocol="halfcell")
    lags: list[float] = []
    async with app.run_test(size=(150, 46)) as pilot:
        while ": loaded" not in str(app.lab.query_one("#model-state").content):  # not "not loaded"
            if ": failed" in str(app.lab.query_one("#model-state").content):
                raise SystemExit(f"the model {model!r} did not load")
            await pilot.pause(0.05)
        lab = app.lab
        lab.query_one("#prompt", Input).value = "a red circle on a blue background"
        lab.query_one("#steps", Input).value = str(steps)
        lab.query_one("#width", Input).value = str(size)
        lab.query_one("#height", Input).value = str(size)
        lab.query_one("#decode_every", Input).value = "5"
        await pilot.pause()  # the fields' own updates (as typed before a run), not counted as the run's lag
        started, cpu = time.perf_counter(), time.thread_time()
        # What ctrl+r does; pilot.press would wait for the screen to go idle, which it does only after the run.
        lab.action_run()
        period = 0.02
        while not app.ended:
            t = time.perf_counter()
            await asyncio.sleep(period)
            lags.append(time.perf_counter() - t - period)
        run_seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
        if app.ended[0].status != "done" or not lags:
            raise SystemExit(f"the run ended {app.ended[0].status}: {app.ended[0].error}")
    return lags, run_seconds, cpu


async def gallery_pages(runs: int, data_dir: str, pages: int = 20) -> dict[str, list[float]]:
    """Seconds the UI thread spends on a gallery page over a history of `runs` runs (filled in bulk by
    bench/history_scale.py's fill): the first page, the next `pages`, the way back, and a prompt search."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from history_scale import fill

    from tnr_tui.services.history import open_store
    from tnr_tui.ui.app import TnrLabApp
    from tnr_tui.ui.widgets.gallery import Gallery

    store = open_store(Path(data_dir))
    if store.count_runs() < runs:
        fill(store, runs - store.count_runs())
    store.close()
    app = TnrLabApp(data_dir=Path(data_dir), image_protocol="halfcell", autoload=False)
    times: dict[str, list[float]] = {"first": [], "next": [], "back": [], "search": []}
    async with app.run_test(size=(150, 46)) as pilot:
        await pilot.press("f3")
        await pilot.pause(0.2)
        history = app.history_screen
        gallery = history.query_one("#gallery", Gallery)
        history.action_gallery()
        await pilot.pause(0.3)

        def timed(kind: str, call: Any) -> None:
            t = time.perf_counter()
            call()
            times[kind].append(time.perf_counter() - t)

        for _ in range(3):
            timed("first", gallery.reset)
            await pilot.pause(0.02)
        for _ in range(pages):
            timed("next", lambda: gallery.action_page(1))
            await pilot.pause(0.02)
        for _ in range(pages):
            timed("back", lambda: gallery.action_page(-1))
            await pilot.pause(0.02)
        history.query_one("#search").value = "purple star"
        await pilot.pause(0.5)  # the debounced reload
        for _ in range(3):
            timed("search", gallery.reset)
            await pilot.pause(0.02)
        for _ in range(5):
            timed("search", lambda: gallery.action_page(1))
            await pilot.pause(0.02)
    return times


def report_pairs(
    ours: list[FirstFrame],
    our_terminal: list[TerminalFrames],
    theirs: list[FirstFrame],
    their_terminal: list[TerminalFrames],
) -> None:
    """This tree against the other, repeat by repeat (each repeat ran both sides back to back): on a host whose
    speed changes from one minute to the next, the median of the differences says more than two medians."""

    def paired(mine: list[float], other: list[float]) -> str:
        differences = sorted(a - b for a, b in zip(mine, other, strict=True))
        faster = sum(d < 0 for d in differences)
        return f"{1000 * statistics.median(differences):+.0f} ms (this tree faster in {faster} of {len(differences)})"

    print(
        f"-- paired, this tree minus the other, median of {len(ours)} repeats: headless "
        f"{paired([f.seconds for f in ours], [f.seconds for f in theirs])}, its CPU "
        f"{paired([f.cpu for f in ours], [f.cpu for f in theirs])}; from the command "
        f"{paired([f.complete for f in our_terminal], [f.complete for f in their_terminal])}"
    )


def report_first_frames(
    frames: list[FirstFrame],
    terminal: list[TerminalFrames],
    no_bytecode_cache: bool,
    load: float,
    floor: list[float],
) -> None:
    repeats = len(frames)
    med = {k: statistics.median(getattr(f, k) for f in frames) for k in ("seconds", "imports", "build", "start", "cpu")}
    seconds = sorted(f.seconds for f in frames)
    loaded = sorted({name for f in frames for name in f.loaded.split(",") if name != "-"})
    print(
        f"time to first frame (App.run_test): median {med['seconds']:.3f} s (imports {med['imports']:.3f}, app "
        f"{med['build']:.3f}, Textual's start {med['start']:.3f}), best {seconds[0]:.3f} s, "
        f"CPU {med['cpu']:.3f} s; {repeats} runs: {[round(s, 3) for s in seconds]}; "
        f"imported before it: {', '.join(loaded) or 'none of torch, sqlalchemy, textual_image'}; "
        f"{'bytecode from the tree only' if no_bytecode_cache else 'bytecode cached'}; "
        f"load average {load:.1f}  goal <= 0.5 s"
    )
    floor_median = statistics.median(floor)
    print(
        f"Textual's floor (a bare App, one Static, timed the same way, alternating with the lab): median "
        f"{floor_median:.3f} s; the lab takes {med['seconds'] / floor_median:.2f}x it, "
        f"{med['seconds'] - floor_median:.3f} s more"
    )
    firsts, completes = sorted(f.first for f in terminal), sorted(f.complete for f in terminal)
    print(
        f"in a terminal (the `tnr-lab` command in a 150x46 pseudo-terminal, from its spawn): first frame median "
        f"{statistics.median(firsts):.3f} s, the whole Lab drawn median {statistics.median(completes):.3f} s "
        f"(best {completes[0]:.3f}, frames to it {statistics.median(f.frames for f in terminal):.0f}); "
        f"{repeats} runs: {[round(t, 3) for t in completes]}  goal <= 0.5 s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="fresh interpreters for the first frame")
    parser.add_argument("--runs", type=int, default=3, help="runs whose lag samples are pooled")
    parser.add_argument("--first-frame-only", action="store_true", help="skip the run (no model needed)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="no bytecode cache of the bench's own: the interpreter reads what the tree's __pycache__ holds (what "
        "scripts/install.sh compiled) and compiles the rest at every start, as PYTHONDONTWRITEBYTECODE=1 makes it",
    )
    parser.add_argument("--gallery", type=int, default=0, metavar="RUNS", help="time gallery pages over RUNS runs")
    parser.add_argument(
        "--also-tree",
        type=Path,
        help="also time the first frame of the lab in this checkout (PYTHONPATH=DIR), alternating with this one",
    )
    args = parser.parse_args()
    if args.gallery:
        with tempfile.TemporaryDirectory() as data_dir:
            times = asyncio.run(gallery_pages(args.gallery, data_dir))
        parts = [f"{kind} {1000 * statistics.median(ts):.1f} ms" for kind, ts in times.items()]
        print(f"gallery page over {args.gallery} runs (UI thread, median): {', '.join(parts)}  goal <= 20 ms")
        return 0
    with tempfile.TemporaryDirectory() as data_dir:
        env = bytecode_env(None if args.no_bytecode_cache else os.path.join(data_dir, "pycache"))
        sides = {"this tree": env}
        if args.also_tree is not None:
            cache = None if args.no_bytecode_cache else os.path.join(data_dir, "pycache-tree")
            sides[f"tree {args.also_tree}"] = dict(bytecode_env(cache), PYTHONPATH=str(args.also_tree.resolve()))
        if not args.no_bytecode_cache:
            for side_env in sides.values():
                first_frame(data_dir, side_env)  # fills the bytecode cache (not counted)
        load = os.getloadavg()[0]
        measured: dict[str, tuple[list[FirstFrame], list[TerminalFrames]]] = {name: ([], []) for name in sides}
        floor: list[float] = []
        textual_floor(data_dir, env)  # its bytecode is site-packages'; this warms the disk cache (not counted)
        for repeat in range(args.repeats):  # the sides alternate, their order swapped every repeat
            floor.append(textual_floor(data_dir, env))
            for name in list(sides)[:: 1 if repeat % 2 == 0 else -1]:
                measured[name][0].append(first_frame(data_dir, sides[name]))
                measured[name][1].append(terminal_frames(data_dir, sides[name]))
        for name, (frames, terminal) in measured.items():
            if len(sides) > 1:
                print(f"-- {name}")
            report_first_frames(frames, terminal, args.no_bytecode_cache, load, floor)
        if len(sides) > 1:
            (ours, our_terminal), (theirs, their_terminal) = measured.values()
            report_pairs(ours, our_terminal, theirs, their_terminal)
        if args.first_frame_only:
            return 0
        lags: list[float] = []
        run_seconds, ui_cpu = [], []
        load = os.getloadavg()[0]
        for _ in range(args.runs):
            run_lags, run_s, cpu = asyncio.run(loop_lag(args.model, args.steps, args.size, data_dir))
            lags += run_lags
            run_seconds.append(run_s)
            ui_cpu.append(cpu)
    lags_ms = sorted(1000 * x for x in lags)
    p95 = lags_ms[int(0.95 * (len(lags_ms) - 1))]
    print(
        f"event-loop lag during {args.runs} {args.steps}-step {args.size}px runs "
        f"({statistics.median(run_seconds):.1f} s each, {len(lags_ms)} samples, live plot on): "
        f"median {statistics.median(lags_ms):.1f} ms, p95 {p95:.1f} ms, max {lags_ms[-1]:.1f} ms; "
        f"UI thread CPU {1000 * statistics.median(ui_cpu) / args.steps:.1f} ms a step; "
        f"load average {load:.1f}  goal p95 <= 20 ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
