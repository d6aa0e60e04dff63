"""Issue 16, part 3, done when: the same sweep written into a local PostgreSQL history by two processes at once
(two "hosts": each its own data directory, no shared output directory, so the images travel in the database),
then `tnr-lab history list` from a third and the TUI's History screen from a fourth read every run and show
its image. The embedded model; real processes; a real server (skipped with the reason where none can start).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pilot_wait import waiter
from textual.widgets import DataTable

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tnr_tui"]

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'tnr-lab[postgres]')")


@pytest.fixture
def url(pg_url) -> str:
    return pg_url  # a new database of the session's server (tests/conftest.py)


wait_for = waiter()


@pytest.mark.slow
async def test_one_sweep_from_two_hosts_lands_in_one_postgresql_history(url: str, tmp_path: Path) -> None:
    from tnr_tui.services.history import open_store
    from tnr_tui.ui.app import TnrLabApp

    env = {**os.environ, "TNR_LAB_THREADS": "1", "TNR_LAB_HISTORY_URL": url}
    env.pop("TNR_LAB_OUTPUTS", None)
    sweep = ["sweep", "--prompt", "a green square", "--guidance", "none,cfg", "--steps", "2", "--seeds", "1-2"]
    procs = [
        subprocess.Popen(
            [*CLI, "--data-dir", str(tmp_path / f"host{i}"), *sweep, "--out", str(tmp_path / f"out{i}")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    cells: dict[str, dict[str, str]] = {}
    ran = 0
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        summary = re.search(r"sweep (\S+): (\d+) run, (\d+) already done, 0 failed of 4", out)
        assert summary, out[-2000:]
        ran += int(summary.group(2))
        with open(tmp_path / f"out{i}" / "sweep.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 4
        cells.update({row["run_id"]: row for row in rows})
    # Each host ran what it did not find done in the shared history when it started (a host that starts
    # later takes the other's runs): every cell done, every run that ran recorded, none twice.
    assert 4 <= ran <= 8
    assert len({row["key"] for row in cells.values()}) == 4
    sweep_id = next(iter(cells.values()))["sweep"]
    assert {row["sweep"] for row in cells.values()} == {sweep_id}  # the same sweep

    # A third host lists it (read-only open; the images come back from the database into its data dir).
    listed = subprocess.run(
        [*CLI, "--data-dir", str(tmp_path / "lister"), "history", "list", "--sweep", sweep_id, "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    runs = {r["id"]: r for r in json.loads(listed.stdout)}
    assert len(runs) == ran and set(cells) <= set(runs)
    for run_id, run in runs.items():
        assert run["status"] == "done" and run["sweep"] == sweep_id
        image = Path(run["image"])
        assert image.is_relative_to(tmp_path / "lister"), image
        if run_id in cells:
            original = Path(cells[run_id]["image"])
            assert image.read_bytes() == original.read_bytes()

    # A fourth host opens the lab on it: the History screen lists every run and shows a thumbnail.
    host = tmp_path / "lab-host"
    app = TnrLabApp(data_dir=host, image_protocol="halfcell", autoload=False, store_fn=lambda d: open_store(d, url=url))
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("f3")
        history = app.history_screen
        table = history.query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count >= ran, 30, "the runs in the History table")
        assert table.row_count == ran
        some = sorted(cells)[3]
        table.move_cursor(row=table.get_row_index(some))
        thumb = history.query_one("#thumb")
        await wait_for(pilot, lambda: history.selected_id() == some and thumb.pil_image is not None, 30, "a thumbnail")
        assert thumb.pil_image.size == (64, 64) or min(thumb.pil_image.size) > 0
        assert "a green square" in str(history.query_one("#run-params").content)
    assert app.return_code in (0, None)
