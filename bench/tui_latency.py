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
    out = subprocess.run(
        [sys.executable, "-c", FIRST_FRAME_SCRIPT, data_dir], capture_output=True, text=True, check=True, env=env
    )
    *numbers, loaded = out.stdout.split()
    return FirstFrame(*(float(n) for n in numbers), loaded)


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
        help="compile every module at every start, as PYTHONDONTWRITEBYTECODE=1 makes Python do",
    )
    parser.add_argument("--gallery", type=int, default=0, metavar="RUNS", help="time gallery pages over RUNS runs")
    args = parser.parse_args()
    if args.gallery:
        with tempfile.TemporaryDirectory() as data_dir:
            times = asyncio.run(gallery_pages(args.gallery, data_dir))
        parts = [f"{kind} {1000 * statistics.median(ts):.1f} ms" for kind, ts in times.items()]
        print(f"gallery page over {args.gallery} runs (UI thread, median): {', '.join(parts)}  goal <= 20 ms")
        return 0
    with tempfile.TemporaryDirectory() as data_dir:
        env = bytecode_env(None if args.no_bytecode_cache else os.path.join(data_dir, "pycache"))
        if not args.no_bytecode_cache:
            first_frame(data_dir, env)  # fills the bytecode cache (not counted)
        load = os.getloadavg()[0]
        frames = [first_frame(data_dir, env) for _ in range(args.repeats)]
        med = {
            k: statistics.median(getattr(f, k) for f in frames) for k in ("seconds", "imports", "build", "start", "cpu")
        }
        seconds = sorted(f.seconds for f in frames)
        loaded = sorted({name for f in frames for name in f.loaded.split(",") if name != "-"})
        print(
            f"time to first frame: median {med['seconds']:.3f} s (imports {med['imports']:.3f}, app "
            f"{med['build']:.3f}, Textual's start {med['start']:.3f}), best {seconds[0]:.3f} s, "
            f"CPU {med['cpu']:.3f} s; {args.repeats} runs: {[round(s, 3) for s in seconds]}; "
            f"imported before it: {', '.join(loaded) or 'none of torch, sqlalchemy, textual_image'}; "
            f"{'modules compiled every start' if args.no_bytecode_cache else 'bytecode cached'}; "
            f"load average {load:.1f}  goal <= 0.5 s"
        )
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
