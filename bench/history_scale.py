"""History at scale: fill 100 000 runs (bulk insert), then time the first page, prompt searches and an export.

Goals (issue 4): first page <= 50 ms, search <= 200 ms.

    python bench/history_scale.py [--runs 100000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from tnr_tui.services.history import RunFilter, open_store
from tnr_tui.services.history.ids import new_run_id
from tnr_tui.services.history.models import Run, utcnow
from tnr_tui.services.history.transfer import export_runs

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
STYLES = ("on a grey background", "on black", "highly detailed", "flat colours", "soft light", "studio photo")


def fill(store, n: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - n * 60_000
    started = time.perf_counter()
    batch = []
    for i in range(n):
        prompt = f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} {rng.choice(STYLES)}, take {i}"
        guidance = rng.choice(("cfg", "cfg++", "tnr", "tnr-cfg"))
        request = {"prompt": prompt, "guidance": guidance, "solver": "euler", "steps": 20, "seed": i, "scale": 5.0}
        created = utcnow() - timedelta(minutes=n - i)
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
        if len(batch) == 10_000:
            with store._write() as session, session.begin():
                session.execute(insert(Run), batch)
            batch = []
    if batch:
        with store._write() as session, session.begin():
            session.execute(insert(Run), batch)
    return time.perf_counter() - started


def timed(fn, repeat: int = 7) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tnr-history-bench-"))
    store = open_store(data_dir)
    print(f"data dir {data_dir} (journal {store.journal_mode})")
    print(f"fill: {args.runs} runs in {fill(store, args.runs):.1f} s")
    print(f"file: {store.db_path.stat().st_size / 1e6:.1f} MB")

    # A fresh open, as a CLI command does (includes the interrupted-runs check).
    t = time.perf_counter()
    store.close()
    store = open_store(data_dir)
    print(f"open_store: {1000 * (time.perf_counter() - t):.1f} ms")

    rows = [
        ("first page (50)", lambda: store.list_runs(limit=50), 50),
        ("page 2 (keyset)", lambda: store.list_runs(after=store.list_runs(limit=50)[-1].id, limit=50), 50),
        ("search common 'red circle'", lambda: store.list_runs(RunFilter(text="red circle"), limit=50), 200),
        ("search rare 'take 12345'", lambda: store.list_runs(RunFilter(text="take 12345"), limit=50), 200),
        ("search absent 'zebra'", lambda: store.list_runs(RunFilter(text="zebra"), limit=50), 200),
        ("filter tnr + favourite", lambda: store.list_runs(RunFilter(guidance="tnr", favourite=True), limit=50), 200),
        ("filter failed", lambda: store.list_runs(RunFilter(status="failed"), limit=50), 200),
        ("count all", lambda: store.count_runs(), None),
    ]
    for name, fn, goal in rows:
        seconds, result = timed(fn)
        size = result if isinstance(result, int) else len(result)
        verdict = "" if goal is None else ("  ok" if 1000 * seconds <= goal else f"  OVER goal {goal} ms")
        print(f"{name:28} {1000 * seconds:8.1f} ms  ({size} rows){verdict}")

    for fmt in ("jsonl", "csv"):
        out = data_dir / f"all.{fmt}"
        t = time.perf_counter()
        count = export_runs(store, fmt, out, force=True)
        print(f"export {fmt:5} {count} runs     {time.perf_counter() - t:6.1f} s  ({out.stat().st_size / 1e6:.1f} MB)")
    store.close()


if __name__ == "__main__":
    main()
