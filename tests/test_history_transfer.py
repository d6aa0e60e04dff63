"""Export (JSONL, CSV, zip) and import: round trip, idempotence by id, and refusal of bad input, all-or-nothing."""

from __future__ import annotations

import csv
import json
import zipfile

import pytest
from PIL import Image

from tnr_tui.services.history import HistoryError, RunFilter, open_store
from tnr_tui.services.history.store import OutputFile
from tnr_tui.services.history.transfer import export_runs, import_runs


def make_history(data_dir, n=3):
    store = open_store(data_dir)
    ids = []
    for i in range(n):
        req = {"prompt": f"shape {i}", "solver": "euler", "guidance": "tnr" if i % 2 else "cfg", "steps": 4, "seed": i}
        run_id = store.create_run(req)
        image = store.new_output_path(run_id, ".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(image)
        store.finish_run(
            run_id,
            "done",
            stats={"seconds": 1.5 + i, "model_evaluations": 8, "sigmas": [14.6, 0.0]},
            metrics={"contrast": 0.1 * i},
            outputs=[OutputFile.of("image", image)],
        )
        ids.append(run_id)
    store.set_favourite(ids[0])
    store.set_note(ids[0], "the good one")
    return store, ids


def comparable(record):
    d = dict(record)
    d.pop("outputs")
    return d


def test_jsonl_round_trip_is_exact_and_import_is_idempotent(tmp_path):
    src, ids = make_history(tmp_path / "a")
    out = tmp_path / "runs.jsonl"
    assert export_runs(src, "jsonl", out) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["id"] for rec in lines] == ids[::-1]
    assert all(rec["tnr_lab_run"] == 1 and rec["request"]["prompt"].startswith("shape") for rec in lines)

    dst = open_store(tmp_path / "b")
    report = import_runs(dst, out)
    assert (report.added, report.skipped) == (3, 0)
    for run_id in ids:
        a, b = src.get_run(run_id).to_dict(), dst.get_run(run_id).to_dict()
        assert comparable(a) == comparable(b)
        # JSONL carries absolute paths; the import records its own copy of the file, in its outputs/.
        copy, original = dst.resolve(b["outputs"][0]["path"]), src.resolve(a["outputs"][0]["path"])
        assert copy.is_relative_to(dst.outputs_dir) and copy.read_bytes() == original.read_bytes()
        assert copy.name == f"{run_id}.png" and copy.parent.name == a["created_at"][:10]
    again = import_runs(dst, out)
    assert (again.added, again.skipped) == (0, 3)
    assert dst.count_runs() == 3


def test_zip_round_trip_brings_the_images(tmp_path):
    src, ids = make_history(tmp_path / "a")
    out = tmp_path / "runs.zip"
    assert export_runs(src, "zip", out, RunFilter(guidance="cfg")) == 2
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(["runs.jsonl"] + [f"files/{i}/image.png" for i in (ids[0], ids[2])])
    dst = open_store(tmp_path / "b")
    report = import_runs(dst, out)
    assert (report.added, report.skipped, report.files) == (2, 0, 2)
    run = dst.get_run(ids[0])
    image = dst.resolve(run.outputs[0].path)
    assert image.is_relative_to(dst.outputs_dir)
    assert image.read_bytes() == src.resolve(src.get_run(ids[0]).outputs[0].path).read_bytes()
    assert run.favourite and run.notes == "the good one" and run.metrics == {"contrast": 0.0}


def test_csv_has_flat_columns(tmp_path):
    src, ids = make_history(tmp_path / "a")
    out = tmp_path / "runs.csv"
    export_runs(src, "csv", out)
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ids[::-1]
    assert rows[-1]["prompt"] == "shape 0" and rows[-1]["favourite"] == "True" and rows[-1]["seconds"] == "1.5"
    assert rows[0]["image"].endswith(".png")


def test_export_refuses_an_existing_file_without_force(tmp_path):
    src, _ = make_history(tmp_path / "a", n=1)
    out = tmp_path / "runs.jsonl"
    out.write_text("precious")
    with pytest.raises(HistoryError, match="exists; pass --force"):
        export_runs(src, "jsonl", out)
    assert out.read_text() == "precious"
    export_runs(src, "jsonl", out, force=True)
    assert out.read_text().startswith("{")


def jsonl_with(tmp_path, src, extra_line):
    good = tmp_path / "good.jsonl"
    export_runs(src, "jsonl", good, force=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + extra_line + "\n")
    return bad


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"hello": "world"}', "not a tnr-lab run record"),
        ("not json at all", "not JSON"),
        ("[1, 2]", "not a tnr-lab run record"),
        ('{"tnr_lab_run": 1, "id": "../../etc", "request": {"prompt": "x"}}', "is not a tnr-lab run id"),
        (
            '{"tnr_lab_run": 1, "id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "request": {"prompt": "x", "steps": 0}}',
            "invalid request",
        ),
    ],
)
def test_a_bad_jsonl_line_imports_nothing(tmp_path, line, message):
    src, _ = make_history(tmp_path / "a", n=2)
    bad = jsonl_with(tmp_path, src, line)
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=message):
        import_runs(dst, bad)
    assert dst.count_runs() == 0


def test_an_error_inside_the_import_transaction_rolls_back_everything(tmp_path):
    src, _ = make_history(tmp_path / "a", n=2)
    good = tmp_path / "good.jsonl"
    export_runs(src, "jsonl", good)
    # Valid in shape, refused by the store only after the two good runs were added in the same transaction.
    broken = {**json.loads(good.read_text().splitlines()[0]), "id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "status": "exploded"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + json.dumps(broken) + "\n")
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match="unknown status 'exploded'"):
        import_runs(dst, bad)
    assert dst.count_runs() == 0


@pytest.mark.parametrize("member", ["/etc/evil.png", "files/../../evil.png", "..\\evil.png", "C:/evil.png"])
def test_zip_with_escaping_paths_is_refused_before_anything_is_written(tmp_path, member):
    src, _ = make_history(tmp_path / "a", n=1)
    good = tmp_path / "good.zip"
    export_runs(src, "zip", good)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item))
        zout.writestr(member, b"gotcha")
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match="refused, the zip holds a path outside its folder"):
        import_runs(dst, evil)
    assert dst.count_runs() == 0
    assert list(dst.outputs_dir.rglob("*")) == []
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize(
    "tamper,message",
    [
        (lambda data: data + b"x", "bytes uncompressed, its record says"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "does not match its recorded sha256"),
    ],
)
def test_zip_with_a_tampered_image_leaves_no_files_and_no_rows(tmp_path, tamper, message):
    src, ids = make_history(tmp_path / "a", n=2)
    good = tmp_path / "good.zip"
    export_runs(src, "zip", good)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, tamper(data) if item.filename == f"files/{ids[0]}/image.png" else data)
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=message):
        import_runs(dst, tampered)
    assert dst.count_runs() == 0
    assert [p for p in dst.outputs_dir.rglob("*") if p.is_file()] == []


def test_import_of_a_missing_or_binary_file_says_so(tmp_path):
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match="no such file"):
        import_runs(dst, tmp_path / "nope.jsonl")
    blob = tmp_path / "blob.jsonl"
    blob.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HistoryError, match="neither a zip nor a UTF-8 JSONL file"):
        import_runs(dst, blob)


RECORD_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"request": {"prompt": "x", "steps": 10**20}}, "line 3: run 01HZ.* invalid request: steps must be"),
        ({"created_at": "garbage"}, "line 3: run 01HZ.*: created_at 'garbage' is not an ISO time"),
        ({"finished_at": 17}, "line 3: run 01HZ.*: finished_at 17 is not an ISO time"),
        ({"pid": 10**30}, "line 3: run 01HZ.*: pid must be a whole number"),
        ({"model_evaluations": 1.5}, "line 3: run 01HZ.*: model_evaluations must be a whole number"),
        ({"seconds": 10**400}, "line 3: run 01HZ.*: seconds must be a finite number"),
        ({"notes": {"a": 1}}, "line 3: run 01HZ.*: notes must be text"),
        ({"metrics": {"contrast": "high"}}, "line 3: run 01HZ.*: metric 'contrast' must be a finite number"),
        ({"request": {"prompt": "x", "tags": 5}}, "line 3: run 01HZ.* invalid request"),
    ],
)
def test_values_the_store_cannot_hold_are_a_message_naming_the_line(tmp_path, change, message):
    src, _ = make_history(tmp_path / "a", n=2)
    good = tmp_path / "good.jsonl"
    export_runs(src, "jsonl", good)
    record = {**json.loads(good.read_text().splitlines()[0]), "id": RECORD_ID, "outputs": [], **change}
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=message):
        import_runs(dst, jsonl_with(tmp_path, src, json.dumps(record)))
    assert dst.count_runs() == 0


@pytest.mark.parametrize(
    "output,message",
    [
        ({"size": 10**30}, "size must be a whole number"),
        ({"kind": "movie"}, "unknown kind 'movie'"),
        ({"sha256": "abc"}, "malformed sha256"),
    ],
)
def test_bad_output_entries_are_a_message(tmp_path, output, message):
    src, _ = make_history(tmp_path / "a", n=1)
    good = tmp_path / "good.jsonl"
    export_runs(src, "jsonl", good)
    record = json.loads(good.read_text())
    record["outputs"][0].update(output)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=message):
        import_runs(dst, bad)
    assert dst.count_runs() == 0


def rewrite_zip(good, bad, damage):
    """Copy a zip byte for byte, then let `damage(data, offset_of_member)` change the raw bytes."""
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        infos = {i.filename: i for i in zf.infolist()}
    damage(data, infos)
    bad.write_bytes(bytes(data))


def member_data_offset(data, info):
    # Local header: 30 bytes, then the name and the extra field, then the member's (compressed) data.
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


@pytest.mark.parametrize("target", ["runs.jsonl", "image"])
def test_a_damaged_zip_is_one_message_and_imports_nothing(tmp_path, target):
    src, ids = make_history(tmp_path / "a", n=2)
    good = tmp_path / "good.zip"
    export_runs(src, "zip", good)
    name = "runs.jsonl" if target == "runs.jsonl" else f"files/{ids[0]}/image.png"

    def damage(data, infos):
        info = infos[name]
        start = member_data_offset(data, info)
        for i in range(start + info.compress_size // 3, start + info.compress_size // 3 + 8):
            data[i] ^= 0xFF

    bad = tmp_path / "bad.zip"
    rewrite_zip(good, bad, damage)
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=r"bad\.zip: the zip is damaged \(.+\); nothing was imported"):
        import_runs(dst, bad)
    assert dst.count_runs() == 0
    assert list(dst.outputs_dir.rglob("*")) == []  # no file, no temporary file, no folder left


def test_zip_export_leaves_out_files_changed_or_missing_since_the_run(tmp_path):
    src, ids = make_history(tmp_path / "a", n=3)
    changed = src.resolve(src.get_run(ids[0]).output("image").path)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(changed)  # edited after the run
    missing = src.resolve(src.get_run(ids[1]).output("image").path)
    missing.unlink()
    warnings = []
    out = tmp_path / "runs.zip"
    assert export_runs(src, "zip", out, warn=warnings.append) == 3
    assert len(warnings) == 2
    assert any(ids[0] in w and str(changed) in w and "sha256 differs" in w for w in warnings)
    assert any(ids[1] in w and "is missing" in w for w in warnings)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(["runs.jsonl", f"files/{ids[2]}/image.png"])
    dst = open_store(tmp_path / "b")
    report = import_runs(dst, out)  # importable: nothing in it fails the sha256 check
    assert (report.added, report.files) == (3, 1)
    assert dst.get_run(ids[0]).outputs == [] and len(dst.get_run(ids[2]).outputs) == 1


def test_exports_of_a_relative_data_dir_find_the_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src, ids = make_history("a", n=1)  # a relative data directory, as `--data-dir a` gives
    warnings = []
    assert export_runs(src, "zip", tmp_path / "runs.zip", warn=warnings.append) == 1
    assert warnings == []
    with zipfile.ZipFile(tmp_path / "runs.zip") as zf:
        assert f"files/{ids[0]}/image.png" in zf.namelist()
    export_runs(src, "jsonl", tmp_path / "runs.jsonl")
    (path,) = [out["path"] for out in json.loads((tmp_path / "runs.jsonl").read_text())["outputs"]]
    assert path == str(tmp_path / "a" / src.get_run(ids[0]).output("image").path)  # absolute


@pytest.mark.parametrize("fmt", ["jsonl", "zip"])
def test_a_duplicated_id_is_refused_naming_the_id_and_both_lines(tmp_path, fmt):
    src, ids = make_history(tmp_path / "a", n=2)
    good = tmp_path / "good.jsonl"
    export_runs(src, "jsonl", good)
    first, second = good.read_text().splitlines()
    records = first + "\n\n" + second + "\n" + first + "\n"  # line 4 repeats line 1 (line 2 is blank)
    bad = tmp_path / f"bad.{fmt}"
    if fmt == "jsonl":
        bad.write_text(records)
    else:
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("runs.jsonl", records.replace(str(tmp_path / "a"), "gone"))  # no files needed
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=rf"line 4: run {ids[1]} appears twice \(first on line 1\)"):
        import_runs(dst, bad)
    assert dst.count_runs() == 0


def test_export_never_replaces_a_device_or_pipe_even_with_force(tmp_path):
    import os
    import stat

    src, _ = make_history(tmp_path / "a", n=1)
    fifo = tmp_path / "runs.jsonl"
    os.mkfifo(fifo)
    for force in (False, True):
        with pytest.raises(HistoryError, match="is not a regular file"):
            export_runs(src, "jsonl", fifo, force=force)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["a", "runs.jsonl"]


@pytest.mark.parametrize(
    "line,message",
    [
        ("[" * 100_000 + "]" * 100_000, "line 3: JSON nested too deeply to be a run record"),
        (None, r"line 3: run 01HZ.* holds text that is not Unicode \(a lone surrogate \\ud800\)"),
    ],
)
def test_json_python_reads_but_sqlite_cannot_hold_is_a_message(tmp_path, line, message):
    src, _ = make_history(tmp_path / "a", n=2)
    good = tmp_path / "good.jsonl"
    export_runs(src, "jsonl", good)
    if line is None:  # "\ud800" is valid JSON, and a str no UTF-8 file (or SQLite) can hold
        record = {**json.loads(good.read_text().splitlines()[0]), "id": RECORD_ID, "outputs": []}
        record["request"]["prompt"] = "\ud800"
        line = json.dumps(record)
    dst = open_store(tmp_path / "b")
    with pytest.raises(HistoryError, match=message):
        import_runs(dst, jsonl_with(tmp_path, src, line))
    assert dst.count_runs() == 0
