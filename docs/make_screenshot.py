"""Regenerate the README's screenshots with the lab's own screenshot action (f12), at 120x40, after a finished
run on the embedded model (and .png beside each .svg when rsvg-convert is installed):

- docs/screenshot.svg: the Lab after the run;
- docs/screenshot-plot.svg: the Lab with the run's telemetry plot beside the preview (--plot-series);
- docs/screenshot-trajectory.svg: History, t: the run's trajectory scrubbed back to --step.

    python docs/make_screenshot.py [--prompt TEXT] [--guidance tnr-cfg] [--only lab|plot|trajectory]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from textual.widgets import Input

from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.dropdown import DropDown

DOCS = Path(__file__).resolve().parent
SHOTS = ("lab", "plot", "trajectory")


async def shoot(app: TnrLabApp, pilot: Any, data_dir: Path, name: str) -> Path:
    app.clear_notifications()
    await pilot.pause(0.3)
    before = set(data_dir.glob("*.svg"))
    await pilot.press("f12")
    await pilot.pause(0.3)
    (shot,) = set(data_dir.glob("*.svg")) - before
    target = DOCS / f"{name}.svg"
    shutil.copyfile(shot, target)
    return target


async def capture(args: argparse.Namespace, data_dir: Path) -> list[Path]:
    # Half cells: the picture is coloured cells, which an SVG keeps (kitty and sixel would not be in it).
    app = TnrLabApp(data_dir=data_dir, image_protocol="halfcell")
    shots: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 300
        while ": loaded" not in str(app.lab.query_one("#model-state").content):  # not "not loaded"
            if time.monotonic() > deadline or "failed" in str(app.lab.query_one("#model-state").content):
                raise SystemExit("the embedded model did not load")
            await pilot.pause(0.1)
        app.lab.query_one("#prompt", Input).value = args.prompt
        app.lab.query_one("#guidance", DropDown).value = args.guidance
        app.lab.query_one("#steps", Input).value = str(args.steps)
        await pilot.press("ctrl+r")
        while not app.ended:
            await pilot.pause(0.1)
        await pilot.pause(0.5)
        if args.only in (None, "lab"):
            shots.append(await shoot(app, pilot, data_dir, "screenshot"))
        if args.only in (None, "plot"):
            app.lab.query_one("#plot-series").value = args.plot_series
            shots.append(await shoot(app, pilot, data_dir, "screenshot-plot"))
        if args.only in (None, "trajectory"):
            from tnr_tui.ui.screens.trajectory import TrajectoryScreen

            await pilot.press("f3")
            await pilot.pause(0.5)
            await pilot.press("t")
            deadline = time.monotonic() + 60
            while not (isinstance(app.screen, TrajectoryScreen) and app.screen.trajectory is not None):
                if time.monotonic() > deadline:
                    raise SystemExit("the trajectory did not load")
                await pilot.pause(0.1)
            app.screen.query_one("#traj-series").value = args.trajectory_series
            app.screen.action_go(args.step - 1)
            shots.append(await shoot(app, pilot, data_dir, "screenshot-trajectory"))
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red circle on a blue background")
    parser.add_argument("--guidance", default="tnr-cfg")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--plot-series", default="x0_change", help="the Lab plot's series (widgets/telemetry)")
    parser.add_argument("--trajectory-series", default="norms", help="the trajectory plot's series")
    parser.add_argument("--step", type=int, default=6, help="the trajectory view's step (1-based)")
    parser.add_argument("--only", choices=SHOTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shots = asyncio.run(capture(args, Path(tmp)))
    for shot in shots:
        print(f"wrote {shot}")
        if shutil.which("rsvg-convert"):
            png = shot.with_suffix(".png")
            subprocess.run(["rsvg-convert", "-w", "1600", str(shot), "-o", str(png)], check=True)
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
