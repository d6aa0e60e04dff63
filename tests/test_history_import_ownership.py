"""The history owns every file it records (issue 10, defect 1): imports copy files into outputs/, never record
the user's path, and a file that is absent or not the recorded bytes is left out and said so."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tnr_tui.cli import main
from tnr_tui.services.history import HistoryError, open_store
from tnr_tui.services.history.png import PngMetadataError
from tnr_tui.services.history.store import OutputFile, Store
from tnr_tui.services.history.transfer import export_runs, import_png, import_runs


def history_with_images(data_dir, n=2):
    store = open_store(data_dir)
    ids = []
    for i in range(n):
        run_id = store.create_run({"prompt": f"square {i}", "steps": 4, "seed": i})
        image = store.new_output_path(run_id, ".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (60 * i, 10, 0)).save(image)
        store.finish_run(run_id, "done", outputs=[OutputFile.of("image", image)])
        ids.append(run_id)
    return store, ids


def recorded_files(store):
    """Every recorded output path of every run, resolved."""
    return [store.resolve(out.path) for run in store.iter_runs() for out in run.outputs]


def assert_owned(store):
    for path in recorded_files(store):
        assert path.resolve().is_relative_to(store.outputs_dir.resolve()), path
        assert path.is_file()


def test_jsonl_import_records_copies_and_a_delete_never_touches_the_source(tmp_path):
    src, ids = history_with_images(tmp_path / "a")
    export = tmp_path / "runs.jsonl"
    export_runs(src, "jsonl", export)
    originals = {i: src.resolve(src.get_run(i).output("image").path) for i in ids}
    before = {i: p.read_bytes() for i, p in originals.items()}

    dst = open_store(tmp_path / "b")
    report = import_runs(dst, export, warn=None)
    assert (report.added, report.files, report.missing) == (2, 2, 0)
    assert_owned(dst)
    for run_id in ids:
        stored = dst.get_run(run_id).output("image")
        assert not os.path.isabs(stored.path)  # recorded relative to the data dir
        assert dst.resolve(stored.path).read_bytes() == before[run_id]
        dst.delete_run(run_id, delete_files=True)
        assert originals[run_id].read_bytes() == before[run_id]  # the other history's file is untouched
    assert recorded_files(dst) == []


def rewrite_outputs(export, change):
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    for rec in lines:
        for out in rec["outputs"]:
            change(rec, out)
    export.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return lines


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda path: path.unlink(), "is missing"),
        (lambda path: path.write_bytes(path.read_bytes()[:-1] + b"\x00"), "does not match its recorded sha256"),
        (lambda path: path.write_bytes(path.read_bytes() + b"more"), "bytes, not its recorded"),
        (lambda path: (path.unlink(), os.mkfifo(path)), "is not a regular file"),  # never blocks on a FIFO
    ],
)
def test_a_file_absent_or_not_the_recorded_bytes_is_left_out_and_said_so(tmp_path, damage, reason):
    src, ids = history_with_images(tmp_path / "a")
    export = tmp_path / "runs.jsonl"
    export_runs(src, "jsonl", export)
    bad = src.resolve(src.get_run(ids[0]).output("image").path)
    damage(bad)

    dst = open_store(tmp_path / "b")
    warnings = []
    report = import_runs(dst, export, warn=warnings.append)
    assert (report.added, report.files, report.missing) == (2, 1, 1)
    (warning,) = warnings
    assert warning.startswith(f"run {ids[0]}: its image file {bad} ") and reason in warning
    assert warning.endswith("; imported without it")
    run = dst.get_run(ids[0])
    assert run.outputs == []  # nothing recorded that the history does not hold
    assert f"imported without its image file: {bad} " in run.notes and reason in run.notes
    assert len(dst.get_run(ids[1]).outputs) == 1
    assert_owned(dst)


def test_an_absolute_path_is_never_recorded_as_is(tmp_path):
    src, ids = history_with_images(tmp_path / "a", n=1)
    export = tmp_path / "runs.jsonl"
    export_runs(src, "jsonl", export)
    secret = tmp_path / "not-yours.txt"
    secret.write_bytes(b"private")
    # A record naming someone's file with the wrong checksum (the file exists): left out, never recorded.
    rewrite_outputs(export, lambda rec, out: out.update(path=str(secret), size=secret.stat().st_size))
    dst = open_store(tmp_path / "b")
    report = import_runs(dst, export, warn=None)
    assert report.missing == 1 and dst.get_run(ids[0]).outputs == []
    assert list(p for p in dst.outputs_dir.rglob("*") if p.is_file()) == []
    assert secret.read_bytes() == b"private"


def test_relative_paths_are_read_from_the_jsonl_folder(tmp_path, monkeypatch):
    """An unpacked zip export: runs.jsonl beside files/<id>/image.png."""
    src, ids = history_with_images(tmp_path / "a")
    export_runs(src, "zip", tmp_path / "runs.zip")
    unpacked = tmp_path / "unpacked"
    shutil.unpack_archive(tmp_path / "runs.zip", unpacked)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not relative to the working directory
    dst = open_store(tmp_path / "b")
    report = import_runs(dst, unpacked / "runs.jsonl", warn=None)
    assert (report.added, report.files, report.missing) == (2, 2, 0)
    assert_owned(dst)


def test_zip_import_extracts_into_the_outputs_folder(tmp_path):
    src, ids = history_with_images(tmp_path / "a")
    export_runs(src, "zip", tmp_path / "runs.zip")
    dst = open_store(tmp_path / "b")
    assert import_runs(dst, tmp_path / "runs.zip").files == 2
    assert_owned(dst)
    for run_id in ids:
        path = dst.resolve(dst.get_run(run_id).output("image").path)
        assert path.name == f"{run_id}.png" and path.parent.parent == dst.outputs_dir


def test_a_failed_import_removes_every_file_and_folder_it_made(tmp_path, monkeypatch):
    src, _ = history_with_images(tmp_path / "a")
    export_runs(src, "jsonl", tmp_path / "runs.jsonl")
    export_runs(src, "zip", tmp_path / "runs.zip")
    dst = open_store(tmp_path / "b")

    def refuse(self, records):
        list(records)  # pass 2 runs (the files are in place by now), then the insert fails
        raise HistoryError("cannot store the import (simulated); nothing was imported")

    monkeypatch.setattr(Store, "insert_records", refuse)
    for export in ("runs.jsonl", "runs.zip"):
        with pytest.raises(HistoryError, match="simulated"):
            import_runs(dst, tmp_path / export, warn=None)
        assert list(dst.outputs_dir.iterdir()) == []


def test_import_reuses_a_file_already_there_and_never_replaces_another(tmp_path):
    src, ids = history_with_images(tmp_path / "a", n=1)
    export_runs(src, "jsonl", tmp_path / "runs.jsonl")
    dst = open_store(tmp_path / "b")
    day = src.get_run(ids[0]).to_dict()["created_at"][:10]
    squatter = dst.outputs_dir / day / f"{ids[0]}.png"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's bytes")
    import_runs(dst, tmp_path / "runs.jsonl", warn=None)
    assert squatter.read_bytes() == b"someone else's bytes"
    stored = dst.resolve(dst.get_run(ids[0]).output("image").path)
    assert (
        stored.name == f"{ids[0]}-1.png"
        and stored.read_bytes() == src.resolve(src.get_run(ids[0]).output("image").path).read_bytes()
    )


def a1111_png(path, colour="white"):
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 12, Sampler: Euler, CFG scale: 6, Seed: 9, Size: 64x64")
    Image.new("RGB", (8, 8), colour).save(path, pnginfo=info)
    return path


def test_import_png_copies_the_image_into_outputs(tmp_path):
    store = open_store(tmp_path / "home")
    png = a1111_png(tmp_path / "download.PNG")
    first = import_png(store, png)
    assert first.new and first.source == "a1111"
    run = store.get_run(first.run_id)
    copy = store.resolve(run.output("image").path)
    assert copy == store.new_output_path(run.id, ".png") and copy.read_bytes() == png.read_bytes()
    assert (run.status, run.origin, run.prompt) == ("done", "import-png", "a cat")
    png.unlink()  # the user tidies their downloads: the history keeps its image
    assert copy.is_file()
    again = import_png(store, a1111_png(tmp_path / "again.png"))
    assert (again.run_id, again.new) == (first.run_id, False)
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no second copy, no temporary file


def test_import_png_refuses_a_fifo_without_blocking(tmp_path):
    store = open_store(tmp_path / "home")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_refusal(store, fifo)), daemon=True)
    worker.start()
    worker.join(10)
    assert outcome == ["not a regular file"]
    assert store.count_runs() == 0


def _refusal(store, path):
    try:
        import_png(store, path)
    except PngMetadataError as e:
        return str(e).split(": ", 1)[1]
    return "imported"


def test_cli_import_names_each_file_left_out(tmp_path, capsys):
    src, ids = history_with_images(tmp_path / "a")
    export = tmp_path / "runs.jsonl"
    export_runs(src, "jsonl", export)
    src.resolve(src.get_run(ids[1]).output("image").path).unlink()
    assert main(["--data-dir", str(tmp_path / "b"), "history", "import", str(export)]) == 0
    captured = capsys.readouterr()
    assert (
        captured.out == "imported 2 run(s), 0 already present, 1 file(s), 1 file(s) missing (imported without them)\n"
    )
    (line,) = captured.err.splitlines()
    assert line.startswith(f"tnr-lab: warning: run {ids[1]}: its image file ") and "is missing" in line
    assert main(["--data-dir", str(tmp_path / "b"), "history", "show", ids[1]]) == 0
    shown = capsys.readouterr().out
    assert "imported without its image file" in shown and "  image " not in shown


def test_import_png_refuses_a_lone_surrogate_in_one_line(tmp_path):
    info = PngInfo()
    info.add_text("tnr-lab", json.dumps({"request": {"prompt": "\ud800", "steps": 4}}))
    path = tmp_path / "s.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    store = open_store(tmp_path / "home")
    with pytest.raises(PngMetadataError, match=r"not Unicode \(a lone surrogate \\ud800\)"):
        import_png(store, path)
    assert store.count_runs() == 0 and list(store.outputs_dir.rglob("*")) == []
