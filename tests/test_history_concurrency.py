"""Issue 10 with the real lab: the TUI (App.run_test, its real device worker, the embedded model) records
runs while other processes use the same data directory: `tnr-lab generate` or `tnr-lab sweep`, and
`tnr-lab history list` in a loop. Every run of every process must be recorded `done` exactly once, as a
third process reads the file, and the database must pass `PRAGMA integrity_check`.

On the code before 74c5fd4 the lab opened the history twice (app and worker); the second open read the
file's header with open()/close(), which dropped the process's SQLite locks, so the next `history list`
to close believed it was the last user and deleted the WAL under the lab: the lab's later runs stayed
`queued`/`running` for every other process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pilot_wait import waiter
from textual.widgets import Input

from tnr_tui.services.history.paths import DB_NAME
from tnr_tui.ui.app import TnrLabApp

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tnr_tui"]
TUI_RUNS_AT_LEAST = 3  # the first run opens the store; the bug showed from the second on


def cli_env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "TNR_LAB_HOME": str(data_dir), "TNR_LAB_THREADS": "1"}


class Loop(threading.Thread):
    """Runs one command after another until stopped (or `times` runs); keeps every result."""

    def __init__(self, commands: list[list[str]] | list[str], env: dict[str, str], times: int | None = None) -> None:
        super().__init__(daemon=True)
        self.command, self.env, self.times = commands, env, times
        self.results: list[subprocess.CompletedProcess[str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and (self.times is None or len(self.results) < self.times):
            done = subprocess.run(self.command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=300)
            self.results.append(done)

    def failures(self) -> list[str]:
        return [f"rc {r.returncode}: {r.stderr.strip()[-500:]}" for r in self.results if r.returncode != 0]


def seen_by_another_process(data_dir: Path) -> dict[str, Any]:
    """The runs (id -> status, origin, sweep tag, image outputs) and the integrity check, read by a fresh
    interpreter: what this process holds in its own connections does not count."""
    code = r"""
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = c.execute(
    "select r.id, r.status, r.origin, r.sweep, (select count(*) from outputs o where o.run_id = r.id "
    "and o.kind = 'image') from runs r"
).fetchall()
print(json.dumps({"rows": rows, "integrity": c.execute("PRAGMA integrity_check").fetchone()[0]}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir / DB_NAME)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


wait_for = waiter()


async def run_the_lab_beside(data_dir: Path, writer: Loop) -> tuple[list[Any], Loop, dict[str, Any]]:
    """The lab runs small requests one after another, each after another `history list` has opened and
    closed the history, until `writer` is done; returns the lab's outcomes, the lister and what a third
    process sees while the lab still has its store open."""
    lister = Loop([*CLI, "history", "list"], cli_env(data_dir))
    app = TnrLabApp(data_dir=data_dir, image_protocol="none", threads=1)  # the embedded model
    async with app.run_test(size=(120, 40)) as pilot:
        lab = app.lab
        lab.query_one("#prompt", Input).value = "a red circle on a blue background"
        for name, value in (("steps", "2"), ("decode_every", "2")):
            lab.query_one(f"#{name}", Input).value = value
        writer.start()  # its interpreter starts while the lab loads its model
        lister.start()
        try:
            state = lab.query_one("#model-state")
            await wait_for(pilot, lambda: ": loaded" in str(state.content), 120, "the embedded model")
            while writer.is_alive() or len(app.ended) < TUI_RUNS_AT_LEAST:
                listed = len(lister.results)
                # Another process opened and closed the history since the lab's last write.
                await wait_for(pilot, lambda n=listed: len(lister.results) > n, 60, "a history list")
                ended = len(app.ended)
                await pilot.press("ctrl+r")
                await wait_for(pilot, lambda n=ended: len(app.ended) > n, 60, "the lab's run")
        finally:
            lister.stop.set()
            writer.stop.set()
            lister.join(60)
            writer.join(300)
        seen = seen_by_another_process(data_dir)
        ended_runs = list(app.ended)
    return ended_runs, lister, seen


def check_lab_runs(ended: list[Any], lister: Loop, seen: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    assert seen["integrity"] == "ok"
    rows = {row[0]: tuple(row[1:]) for row in seen["rows"]}
    assert len(rows) == len(seen["rows"])
    assert not lister.failures(), lister.failures()
    assert len(ended) >= TUI_RUNS_AT_LEAST
    assert [m.status for m in ended] == ["done"] * len(ended), [m.error for m in ended]
    lab_ids = [m.run_id for m in ended]
    assert len(set(lab_ids)) == len(lab_ids)
    lost = {run_id: rows.get(run_id) for run_id in lab_ids if rows.get(run_id) != ("done", "tui", None, 1)}
    assert not lost, f"{len(lost)} of the lab's {len(lab_ids)} runs, as another process sees them: {lost}"
    return rows


async def test_the_lab_beside_generate_and_history_list_loses_no_run(tmp_data_dir: Path) -> None:
    generate = [*CLI, "generate", "--prompt", "a green square", "--steps", "2", "--json", "--out"]
    writer = Loop(generate + [str(tmp_data_dir.parent / "generated.png")], cli_env(tmp_data_dir), times=2)
    ended, lister, seen = await run_the_lab_beside(tmp_data_dir, writer)
    rows = check_lab_runs(ended, lister, seen)
    assert not writer.failures(), writer.failures()
    generated = [json.loads(r.stdout) for r in writer.results]
    assert len(generated) == 2 and {g["status"] for g in generated} == {"done"}
    for g in generated:
        assert rows.get(g["run_id"]) == ("done", "cli", None, 1), g["run_id"]
    assert len(rows) == len(ended) + len(generated)  # each run exactly once, nothing else


async def test_the_lab_beside_a_sweep_and_history_list_loses_no_run(tmp_data_dir: Path) -> None:
    out = tmp_data_dir.parent / "sweep"
    sweep = [*CLI, "sweep", "--prompt", "a green square", "--guidance", "none,cfg", "--steps", "3"]
    writer = Loop([*sweep, "--seeds", "1-8", "--out", str(out)], cli_env(tmp_data_dir), times=1)
    ended, lister, seen = await run_the_lab_beside(tmp_data_dir, writer)
    rows = check_lab_runs(ended, lister, seen)
    assert not writer.failures(), writer.failures()
    with open(out / "sweep.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert len(cells) == 16
    sweep_id = cells[0]["sweep"]
    for cell in cells:
        assert rows.get(cell["run_id"]) == ("done", "sweep", sweep_id, 1), cell["run_id"]
    assert len(rows) == len(ended) + len(cells)


HOLD_THE_LOCK = r"""
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")  # the write lock, as a long import or a stuck process holds it
print("held", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


async def test_a_history_held_by_another_process_is_a_waiting_notice_then_the_run(
    tmp_data_dir: Path, monkeypatch
) -> None:
    from tnr_tui.services.history import store as store_module

    monkeypatch.setattr(store_module, "BUSY_SLICE_S", 0.2)  # SQLite's wait per attempt: the notice comes after it
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="none", threads=1)
    sent: list[tuple[str, str]] = []
    notify = app.notify

    def spy(message: str, **kwargs: Any) -> None:
        sent.append((message, kwargs.get("severity", "information")))
        notify(message, **kwargs)

    app.notify = spy  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        app.lab.query_one("#steps", Input).value = "2"
        assert app.store.count_runs() == 0  # the lab has its history open before the other process locks it
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_data_dir / DB_NAME), "1.5"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            await pilot.press("ctrl+r")  # its `queued` row waits for the lock
            await wait_for(pilot, lambda: app.ended, 60, "the run")
        finally:
            assert holder.wait(30) == 0
        assert app.ended[0].status == "done", app.ended[0].error
        waiting = [m for m, severity in sent if m.startswith("waiting for the history (held by another process)")]
        assert waiting and all(severity != "error" for _, severity in sent)
    assert seen_by_another_process(tmp_data_dir)["rows"] == [[app.ended[0].run_id, "done", "tui", None, 1]]
