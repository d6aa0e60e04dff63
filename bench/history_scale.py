"""History at scale: fill N runs (bulk inserts, the search indexes kept by their triggers as they go), then time
the first page, prompt searches of every kind and a large import.

Goals (issue 16, part 4): at 1 000 000 runs, first page <= 10 ms and any prompt search <= 20 ms (median of
repeats). Before the full-text indexes, at 100 000 runs: 3.1 ms and 95 ms worst (a full LIKE scan).

    python bench/history_scale.py [--runs 1000000] [--data-dir DIR]
    python bench/history_scale.py --runs 100000 --postgres local     # a throwaway local PostgreSQL
    python bench/history_scale.py --postgres postgresql+psycopg://host/db
    python bench/history_scale.py --runs 100000 --import-runs 5000 --export

The prompts: "a <colour> <shape> <style>, take <i>" and, every 10th run, one with non-ASCII words.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from tnr_tui.services.history import RunFilter, open_store
from tnr_tui.services.history.ids import new_run_id
from tnr_tui.services.history.models import Run, utcnow
from tnr_tui.services.history.search import lock_keys, plan_keys

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
STYLES = ("on a grey background", "on black", "highly detailed", "flat colours", "soft light", "studio photo")
EXTRA = ("Éclair", "日本の庭", "straße", "(masterpiece:1.2)", "50% off", "a_b")
BATCH = 10_000


def fill(store: Any, n: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - n * 60_000
    started = time.perf_counter()
    now = utcnow()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        with store._write() as session, session.begin():
            lock_keys(session)
            keys = plan_keys([row["id"] for row in batch], set(), lambda: 0)  # one run a minute: no collisions
            for row in batch:
                row["search_key"] = keys[row["id"]]
            session.execute(insert(Run), batch)
        batch.clear()

    for i in range(n):
        prompt = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} {rng.choice(STYLES)}, take {i}"
        if i % 10 == 0:
            prompt += ", " + rng.choice(EXTRA)
        guidance = rng.choice(("cfg", "cfg++", "tnr", "tnr-cfg"))
        request = {"prompt": prompt, "guidance": guidance, "solver": "euler", "steps": 20, "seed": i, "scale": 5.0}
        created = now - timedelta(minutes=n - i)
        batch.append(
            {
                "id": new_run_id(now_ms=start_ms + i * 60_000),
                "created_at": created,
                "started_at": created,
                "finished_at": created + timedelta(seconds=3),
                "status": "done" if i % 50 else "failed",
                "request_json": json.dumps(request, sort_keys=True),
                "prompt": prompt,
                "negative_prompt": "blurry",
                "model": "embedded",
                "solver": "euler",
                "guidance": guidance,
                "scale": 5.0,
                "steps": 20,
                "seed": i,
                "width": 512,
                "height": 512,
                "schedule": "default",
                "seconds": 3.0 + rng.random(),
                "seconds_per_step": 0.15,
                "model_evaluations": 40,
                "metrics": {"contrast": rng.random(), "colourfulness": 100 * rng.random()},
                "favourite": i % 97 == 0,
                "notes": "",
                "pid": 1,
                "host": "bench",
                "origin": "sweep",
                "sweep": f"sweep-{i // 1000}",
            }
        )
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return time.perf_counter() - started


def timed(fn: Any, repeat: int) -> tuple[float, float, float, Any]:
    """Median wall time, worst wall time, median CPU time of this process (steadier on a shared host)."""
    times, cpu, result = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), max(times), statistics.median(cpu), result


SEARCHES = [
    # (label, text): common and rare, long and short, present and absent, ASCII and not.
    ("common 'red circle'", "red circle"),
    ("rare 'take 12345'", "take 12345"),
    ("absent 'zebra'", "zebra"),
    ("common 3 chars 'red'", "red"),
    ("absent 3 chars 'xyz'", "xyz"),
    ("rare, old 'take 7,'", "take 7,"),
    ("case 'RED CIRCLE'", "RED CIRCLE"),
    ("non-ASCII '日本'", "日本"),
    ("LIKE chars '50% off'", "50% off"),
    ("LIKE chars 'a_b'", "a_b"),
    ("1 char common 'e'", "e"),
    ("1 char rare 'ß'", "ß"),
    ("1 char absent '#'", "#"),
    ("2 chars common 're'", "re"),
    ("2 chars rare 'l1'", "l1"),  # never: ", take 1..." has a space before the digits
    ("2 chars absent 'zq'", "zq"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL, or 'local' for a throwaway server")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--import-runs", type=int, default=0, help="also time importing this many runs (JSONL)")
    parser.add_argument("--export", action="store_true", help="also time exporting every run (jsonl, csv)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tnr-history-bench-"))
    server = None
    url = args.postgres
    if url == "local":
        from tnr_tui.services.history.localpg import LocalPostgres

        server = LocalPostgres().start()
        url = server.url
    try:
        run(args, data_dir, url)
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace, data_dir: Path, url: str | None) -> None:
    store = open_store(data_dir, url=url)
    print(f"history {store.location} (journal {store.journal_mode}), {args.runs} runs")
    existing = store.count_runs()
    if existing:
        print(f"fill: skipped, {existing} runs already there")
    else:
        seconds = fill(store, args.runs)
        print(f"fill: {args.runs} runs in {seconds:.1f} s ({args.runs / seconds:.0f} runs/s, indexes kept by triggers)")
    if store.dialect == "postgresql":
        t = time.perf_counter()
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE runs"))  # what autovacuum does after a bulk load
        print(f"vacuum analyze: {time.perf_counter() - t:.1f} s")
        with store.engine.connect() as conn:
            size = conn.scalar(text("SELECT pg_database_size(current_database())"))
        print(f"database: {size / 1e6:.0f} MB")
    else:
        print(f"file: {store.db_path.stat().st_size / 1e6:.0f} MB")

    # A fresh open, as a CLI command does (includes the interrupted-runs check).
    t = time.perf_counter()
    store.close()
    store = open_store(data_dir, url=url)
    print(f"open_store: {1000 * (time.perf_counter() - t):.1f} ms")

    first = store.list_runs(limit=50)
    rows: list[tuple[str, Any, float | None]] = [
        ("first page (50)", lambda: store.list_runs(limit=50), 10),
        ("page 2 (keyset)", lambda: store.list_runs(after=first[-1].id, limit=50), 10),
        ("filter tnr + favourite", lambda: store.list_runs(RunFilter(guidance="tnr", favourite=True), limit=50), None),
        ("filter failed", lambda: store.list_runs(RunFilter(status="failed"), limit=50), None),
    ]
    for label, needle in SEARCHES:
        rows.append((f"search {label}", lambda n=needle: store.list_runs(RunFilter(text=n), limit=50), 20))
    rows.append(
        (
            "search 'red circle' page 2",
            lambda: store.list_runs(
                RunFilter(text="red circle"), after=store.list_runs(RunFilter(text="red circle"))[-1].id
            ),
            40,  # two searches
        )
    )
    rows.append(("search 'e' + favourite", lambda: store.list_runs(RunFilter(text="e", favourite=True)), None))
    rows.append(("count 'take 12345'", lambda: store.count_runs(RunFilter(text="take 12345")), None))
    rows.append(("count all", lambda: store.count_runs(), None))
    worst_search = worst_cpu = 0.0
    for name, fn, goal in rows:
        median, worst, cpu, result = timed(fn, args.repeat)
        size = result if isinstance(result, int) else len(result)
        verdict = "" if goal is None else ("  ok" if 1000 * median <= goal else f"  OVER goal {goal} ms")
        if name.startswith("search ") and "page 2" not in name:
            worst_search = max(worst_search, median)
            worst_cpu = max(worst_cpu, cpu)
        print(
            f"{name:34} {1000 * median:7.1f} ms (max {1000 * worst:6.1f}, cpu {1000 * cpu:6.1f})  {size:>7} rows{verdict}"
        )
    print(
        f"worst prompt search, median of {args.repeat}: {1000 * worst_search:.1f} ms wall, {1000 * worst_cpu:.1f} ms cpu"
    )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")

    if args.import_runs:
        time_import(store, args.import_runs, data_dir, url)
    if args.export:
        from tnr_tui.services.history.transfer import export_runs

        for fmt in ("jsonl", "csv"):
            out = data_dir / f"all.{fmt}"
            t = time.perf_counter()
            count = export_runs(store, fmt, out, force=True)
            print(f"export {fmt:5} {count} runs  {time.perf_counter() - t:6.1f} s  ({out.stat().st_size / 1e6:.1f} MB)")
    store.close()


def time_import(store: Any, n: int, data_dir: Path, url: str | None) -> None:
    """A JSONL of n runs imported into an empty history: the whole import and the write transaction in it
    (insert_records), which is how long other writers wait."""
    from tnr_tui.services.history.store import Store
    from tnr_tui.services.history.transfer import export_runs, import_runs

    source = data_dir / "import.jsonl"
    with source.open("w") as f:
        for i, run in enumerate(store.iter_runs()):
            if i == n:
                break
            rec = run.to_dict()
            rec["tnr_lab_run"] = 1
            f.write(json.dumps(rec) + "\n")
    del export_runs
    target_dir = data_dir / "import-target"
    target = open_store(target_dir) if url is None else open_store(target_dir)  # SQLite: the lock is the file's
    held: list[float] = []
    original = Store.insert_records

    def timed_insert(self: Store, records: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(self, records)
        finally:
            held.append(time.perf_counter() - t)

    Store.insert_records = timed_insert  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        report = import_runs(target, source)
        total = time.perf_counter() - t
    finally:
        Store.insert_records = original  # type: ignore[method-assign]
        target.close()
    print(f"import {report.added} runs: {total:.2f} s, write transaction {held[0]:.2f} s")


if __name__ == "__main__":
    main()
