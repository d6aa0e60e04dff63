"""Regenerate docs/screenshot.svg (and .png when rsvg-convert is installed) with the lab's own screenshot
action (f12), at 120x40, after a finished run on the embedded model.

    python docs/make_screenshot.py [--prompt TEXT] [--guidance tnr]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from textual.widgets import Input, Select

from tnr_tui.ui.app import TnrLabApp

DOCS = Path(__file__).resolve().parent


async def capture(prompt: str, guidance: str, data_dir: Path) -> Path:
    # Half cells: the picture is coloured cells, which an SVG keeps (kitty and sixel would not be in it).
    app = TnrLabApp(data_dir=data_dir, image_protocol="halfcell")
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 300
        while ": loaded" not in str(app.lab.query_one("#model-state").content):  # not "not loaded"
            if time.monotonic() > deadline or "failed" in str(app.lab.query_one("#model-state").content):
                raise SystemExit("the embedded model did not load")
            await pilot.pause(0.1)
        app.lab.query_one("#prompt", Input).value = prompt
        app.lab.query_one("#guidance", Select).value = guidance
        await pilot.press("ctrl+r")
        while not app.ended:
            await pilot.pause(0.1)
        await pilot.pause(0.5)
        app.clear_notifications()
        await pilot.press("f12")
        await pilot.pause(0.3)
    shots = sorted(data_dir.glob("*.svg"))
    if len(shots) != 1:
        raise SystemExit(f"expected one screenshot in {data_dir}, found {len(shots)}")
    return shots[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a red circle on a blue background")
    parser.add_argument("--guidance", default="tnr")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shot = asyncio.run(capture(args.prompt, args.guidance, Path(tmp)))
        shutil.copyfile(shot, DOCS / "screenshot.svg")
    print(f"wrote {DOCS / 'screenshot.svg'}")
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "-w", "1600", str(DOCS / "screenshot.svg"), "-o", str(DOCS / "screenshot.png")])
        print(f"wrote {DOCS / 'screenshot.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
