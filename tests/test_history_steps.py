"""A run's per-step rows and frames in the history: recorded with the run, `history steps ID [--json|--csv]`,
carried through JSONL and zip exports and imports, removed with the run; old runs have none and say so."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.request import GenerationRequest
from engine.telemetry import COLUMNS, StepTable
from tnr_tui.cli import main
from tnr_tui.services.history import HistoryError, open_store
from tnr_tui.services.history.frames import FramesError, read_frames, write_frames
from tnr_tui.services.history.migrations import MIGRATIONS, migrate
from tnr_tui.services.history.paths import DB_NAME
from tnr_tui.services.history.transfer import export_runs, import_runs
from tnr_tui.services.runs import execute

LEGACY = Path(__file__).parent / "data" / "history-0.1"
STEPS_VERSION = next(v for v, (what, _) in MIGRATIONS.items() if "telemetry" in what)


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    from engine.models import load_bundle

    return load_bundle(str(tiny_sdxl_dir), device="cpu")


def request_of(tiny_sdxl_dir, **kw) -> GenerationRequest:
    values = dict(prompt="a red circle", model=str(tiny_sdxl_dir), steps=4, seed=5, guidance="apg", scale=4.0)
    values.update(kw)
    return GenerationRequest(**values)


def cli(home, *args):
    return main(["--data-dir", str(home), "history", *args])


def test_a_run_keeps_exactly_the_rows_it_sampled(tmp_path, bundle, tiny_sdxl_dir):
    with open_store(tmp_path / "home") as store:
        outcome = execute(request_of(tiny_sdxl_dir, solver="euler_ancestral"), store, bundle=bundle)
        stored = store.run_steps(outcome.run_id)
        assert stored == outcome.result.steps  # float64 in the blob: bit for bit
        assert stored.columns[: len(COLUMNS)] == COLUMNS
        assert {"apg_parallel", "apg_orthogonal", "noise_injected"} <= set(stored.columns)
        assert len(stored) == 4 and stored.column("index") == [0, 1, 2, 3]
        assert store.steps_of([outcome.run_id, "01NOSUCHRUN000000000000000"]) == {outcome.run_id: stored}
        off = execute(request_of(tiny_sdxl_dir, telemetry=False), store, bundle=bundle)
        assert store.run_steps(off.run_id) is None
        assert not store.run_frames(off.run_id)


def test_history_steps_prints_a_table_json_and_csv(tmp_path, bundle, tiny_sdxl_dir, capsys):
    home = tmp_path / "home"
    with open_store(home) as store:
        run_id = execute(request_of(tiny_sdxl_dir), store, bundle=bundle).run_id
        table = store.run_steps(run_id)
    assert cli(home, "steps", run_id[:12], "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_id"] == run_id and StepTable.from_dict(data) == table
    assert cli(home, "steps", run_id, "--csv") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert tuple(rows[0]) == table.columns and len(rows) == 1 + len(table)
    assert float(rows[2][table.columns.index("norm_diff")]) == table.row(1)["norm_diff"]  # repr: exact
    assert rows[1][table.columns.index("x0_change")] == ""  # step 0 has none
    assert cli(home, "steps", run_id) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(table.columns) and len(lines) == 1 + len(table)
    assert cli(home, "show", run_id) == 0
    assert f"steps     4 rows of {len(table.columns)} columns" in capsys.readouterr().out


def test_export_and_import_carry_the_rows_and_the_frames(tmp_path, bundle, tiny_sdxl_dir, capsys):
    home, other = tmp_path / "home", tmp_path / "other"
    with open_store(home) as store:
        kept = execute(request_of(tiny_sdxl_dir, keep_frames=True, decode_every=2), store, bundle=bundle).run_id
        plain = execute(request_of(tiny_sdxl_dir, seed=6), store, bundle=bundle).run_id
        tables = {run_id: store.run_steps(run_id) for run_id in (kept, plain)}
        frames = store.run_frames(kept)
        previews = frames.load("frames")
    for fmt in ("jsonl", "zip"):
        target = other / fmt
        assert cli(home, "export", "--format", fmt, "--out", str(tmp_path / f"runs.{fmt}")) == 0
        with open_store(target) as store:
            report = import_runs(store, tmp_path / f"runs.{fmt}")
            assert (report.added, report.missing) == (2, 0)
            for run_id, table in tables.items():
                assert store.run_steps(run_id) == table, fmt
            copied = store.run_frames(kept)
            assert copied.steps == frames.steps == {"frames": [0, 1, 2, 3], "decoded_frames": [1, 3]}
            assert all(path.parent.parent == store.outputs_dir for path in copied.paths.values())
            assert copied.paths["frames"].name == f"{kept}.frames.png"
            for a, b in zip(copied.load("frames"), previews, strict=True):
                assert np.array_equal(np.asarray(a), np.asarray(b))
        capsys.readouterr()
        assert cli(target, "steps", kept, "--json") == 0
        assert StepTable.from_dict(json.loads(capsys.readouterr().out)) == tables[kept]
        # Importing again adds nothing and keeps one copy of the rows.
        with open_store(target) as store:
            assert import_runs(store, tmp_path / f"runs.{fmt}").skipped == 2
            assert store.run_steps(kept) == tables[kept]


def test_frames_are_the_steps_previews_and_go_with_the_run(tmp_path, bundle, tiny_sdxl_dir):
    events = []
    with open_store(tmp_path / "home") as store:
        outcome = execute(
            request_of(tiny_sdxl_dir, keep_frames=True, decode_every=3, preview_every=0),
            store,
            bundle=bundle,
            on_step=events.append,
        )
        frames = store.run_frames(outcome.run_id)
        assert frames.steps == {"frames": [0, 1, 2, 3], "decoded_frames": [2, 3]}
        assert len(events) == 4  # the caller's on_step still sees every step
        previews = frames.load("frames")
        for event, frame in zip(events, previews, strict=True):
            expected = bundle.preview(event.denoised)
            assert np.array_equal(np.asarray(frame), np.asarray(expected))
        decoded = frames.load("decoded_frames")
        assert decoded[-1].size == outcome.image.size
        assert np.array_equal(np.asarray(decoded[-1]), np.asarray(outcome.image))  # the last frame is the image
        assert frames.frame_at(1, "decoded_frames") is None and frames.frame_at(2, "decoded_frames") == 0
        files = store.files_to_delete(outcome.run_id)
        assert set(frames.paths.values()) <= set(files)
        removed = store.delete_run(outcome.run_id, delete_files=True)
        assert all(not p.exists() for p in frames.paths.values()) and set(frames.paths.values()) <= set(removed)
        assert store.run_steps(outcome.run_id) is None
        with sqlite3.connect(store.db_path) as conn:
            assert conn.execute("SELECT count(*) FROM run_steps").fetchone() == (0,)


def test_identical_frames_stay_one_frame_each(tmp_path):
    from PIL import Image

    grey, white = Image.new("RGB", (8, 8), (90, 90, 90)), Image.new("RGB", (8, 8), (255, 255, 255))
    path = write_frames([grey, grey, white, white, white], [0, 1, 2, 3, 4], tmp_path / "f.png")
    steps, images = read_frames(path)
    assert steps == [0, 1, 2, 3, 4] and [im.getpixel((0, 0)) for im in images] == [(90,) * 3] * 2 + [(255,) * 3] * 3
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(FramesError):
        read_frames(path)


def test_a_damaged_steps_record_is_refused_naming_the_line(tmp_path, bundle, tiny_sdxl_dir):
    with open_store(tmp_path / "home") as store:
        execute(request_of(tiny_sdxl_dir), store, bundle=bundle)
        export_runs(store, "jsonl", tmp_path / "runs.jsonl")
    record = json.loads((tmp_path / "runs.jsonl").read_text())
    record["telemetry"]["rows"][1] = [1.0]
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    with open_store(tmp_path / "other") as store:
        with pytest.raises(HistoryError, match=r"line 1: run \w+: step table row 1 has 1 values"):
            import_runs(store, tmp_path / "bad.jsonl")
        assert store.count_runs() == 0


def test_legacy_runs_have_no_rows_and_say_so_in_one_line(tmp_path, capsys):
    home = tmp_path / "legacy"
    shutil.copytree(LEGACY, home)
    with open_store(home) as store:  # migrated here, with a backup
        runs = list(store.iter_runs())
        assert all(store.run_steps(r.id) is None for r in runs) and store.steps_of(r.id for r in runs) == {}
    capsys.readouterr()
    assert cli(home, "steps", runs[0].id) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"run {runs[0].id} has no per-step rows: it was recorded before tnr-lab kept them")
    assert cli(home, "steps", runs[0].id, "--json") == 1  # no JSON that looks like an empty run
    assert cli(home, "export", "--format", "jsonl", "--out", str(tmp_path / "old.jsonl")) == 0
    assert all("telemetry" not in json.loads(line) for line in (tmp_path / "old.jsonl").read_text().splitlines())


def test_the_migration_adds_the_table_and_keeps_old_runs(tmp_path):
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=STEPS_VERSION - 1)
    conn.close()
    with open_store(tmp_path) as store:
        run_id = store.create_run({"prompt": "p", "solver": "euler", "guidance": "cfg", "steps": 2, "seed": 0})
        store.finish_run(run_id, "done", steps=StepTable(("index",), ((0,), (1,))))
        assert store.run_steps(run_id).column("index") == [0, 1]
    assert list(tmp_path.glob(f"{DB_NAME}.v{STEPS_VERSION - 1}-*.bak"))  # backed up first


def test_every_sweep_cell_keeps_its_rows(tmp_path, bundle, tiny_sdxl_dir):
    from tnr_tui.services.history import RunFilter
    from tnr_tui.services.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        prompts=("a red circle",),
        methods=("cfg", "tnr"),
        scales={"cfg": (3.0,)},
        steps=3,
        seeds=(1, 2),
        model=str(tiny_sdxl_dir),
        width=64,
        height=64,
    )
    with open_store(tmp_path / "home") as store:
        report = run_sweep(spec, tmp_path / "sweep", store, bundle=bundle, log=lambda _: None)
        runs = list(store.iter_runs(RunFilter(sweep=report.sweep_id)))
        assert len(runs) == report.total == 4
        tables = store.steps_of(r.id for r in runs)
        assert set(tables) == {r.id for r in runs} and all(len(t) == 3 for t in tables.values())
        tnr = [tables[r.id] for r in runs if r.guidance == "tnr"]
        assert all(v is not None for t in tnr for v in t.column("tnr_factor"))


def test_rows_round_trip_on_postgresql(tmp_path, pg_url):
    url = pg_url  # a new database of the session's server (tests/conftest.py)
    table = StepTable(("index", "sigma", "norm_diff"), ((0, 14.6146, None), (1, 2.5, 0.125)))
    with open_store(tmp_path, url=url) as store:
        run_id = store.create_run({"prompt": "p", "solver": "euler", "guidance": "cfg", "steps": 2, "seed": 0})
        store.finish_run(run_id, "done", steps=table)
        assert store.run_steps(run_id) == table and store.steps_of([run_id]) == {run_id: table}
        store.delete_run(run_id)
        assert store.run_steps(run_id) is None  # the foreign key took the rows with the run
