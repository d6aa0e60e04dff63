"""Imports are bounded (issue 10, defect 7): a zip member is read up to its recorded size, a line up to 16 MiB,
the whole import up to a limit of bytes and runs; past a bound the import is one refusal and leaves nothing.

The crafted inputs run in a child process whose file size and address space are capped (RLIMIT_FSIZE,
RLIMIT_AS) and whose peak memory is measured (Linux: /proc/self/status), so an import that streamed past a bound would fail the test
rather than fill the disk.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tnr_tui.cli import main
from tnr_tui.services.history import HistoryError, open_store
from tnr_tui.services.history.store import OutputFile
from tnr_tui.services.history.transfer import ImportLimits, MiB, export_runs, import_runs

REPO = Path(__file__).resolve().parents[1]
FILE_CAP = 8 * MiB  # no file the child writes may grow past this (the bombs below are 25x larger)

CHILD = r"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from tnr_tui.services.history import HistoryError, open_store
from tnr_tui.services.history.transfer import import_runs
store = open_store(sys.argv[1])
try:
    report = import_runs(store, sys.argv[2], warn=None)
    result = {"added": report.added}
except HistoryError as e:
    result = {"error": str(e)}
# VmHWM: this process image's peak resident memory (ru_maxrss would carry the forking parent's peak).
with open("/proc/self/status") as f:
    result["max_rss_mib"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
print(json.dumps(result))
"""


def import_in_capped_child(data_dir, path):
    if not Path("/proc/self/status").is_file():
        pytest.skip("measures peak memory through Linux's /proc/self/status")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir), str(path), str(FILE_CAP)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def baseline_rss_mib(tmp_path):
    """The child's peak memory for a trivial import: the bound below is relative to it."""
    good = tmp_path / "baseline.jsonl"
    good.write_text("")
    return import_in_capped_child(tmp_path / "baseline-home", good)["max_rss_mib"]


def assert_nothing_left(data_dir):
    store = open_store(data_dir)
    assert store.count_runs() == 0
    assert list(store.outputs_dir.rglob("*")) == []  # no file, no temporary, no folder


def one_run_zip(tmp_path):
    """A real export of one run with an image: (zip path, its run record, the image member name)."""
    src = open_store(tmp_path / "src")
    run_id = src.create_run({"prompt": "a bomb", "steps": 4})
    image = src.new_output_path(run_id, ".png")
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(image)
    src.finish_run(run_id, "done", outputs=[OutputFile.of("image", image)])
    good = tmp_path / "good.zip"
    export_runs(src, "zip", good)
    with zipfile.ZipFile(good) as zf:
        record = json.loads(zf.read("runs.jsonl"))
    return good, record, record["outputs"][0]["path"]


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def test_a_zip_bomb_member_is_refused_before_a_byte_is_written(tmp_path):
    """The image member inflates to 200 MiB; its record says 69 bytes: refused from the zip's directory."""
    _, record, member = one_run_zip(tmp_path)
    bomb = write_zip(tmp_path / "bomb.zip", [("runs.jsonl", json.dumps(record) + "\n"), (member, bytes(200 * MiB))])
    assert bomb.stat().st_size < 1 * MiB
    result = import_in_capped_child(tmp_path / "home", bomb)
    assert (
        f"{member} is {200 * MiB} bytes uncompressed, its record says {record['outputs'][0]['size']}"
        in (result["error"])
    )
    assert "nothing was imported" in result["error"]
    assert_nothing_left(tmp_path / "home")


def central_entry(data, name):
    """The offset of `name`'s central directory entry (signature PK 1 2; its name starts at offset 46)."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + length] == name.encode():
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name} not in the central directory")


def test_a_header_that_lies_about_the_size_stops_the_member_at_its_recorded_size(tmp_path):
    """The zip's directory is patched to say the member is as small as its record; the deflate stream holds
    200 MiB. Reading stops at the recorded size (and the CRC then refuses it): the child never writes more."""
    _, record, member = one_run_zip(tmp_path)
    recorded = record["outputs"][0]["size"]
    liar = write_zip(tmp_path / "liar.zip", [("runs.jsonl", json.dumps(record) + "\n"), (member, bytes(200 * MiB))])
    data = bytearray(liar.read_bytes())
    with zipfile.ZipFile(liar) as zf:
        info = zf.getinfo(member)
    true_size = info.file_size.to_bytes(4, "little")
    # Uncompressed size: offset 22 of the local header, offset 24 of the central directory entry.
    local = info.header_offset
    assert data[local + 22 : local + 26] == true_size
    data[local + 22 : local + 26] = recorded.to_bytes(4, "little")
    central = central_entry(data, member)
    assert data[central + 24 : central + 28] == true_size
    data[central + 24 : central + 28] = recorded.to_bytes(4, "little")
    liar.write_bytes(bytes(data))
    with zipfile.ZipFile(liar) as zf:
        assert zf.getinfo(member).file_size == recorded  # zipfile believes the lie

    result = import_in_capped_child(tmp_path / "home", liar)
    assert "the zip is damaged" in result["error"] and "nothing was imported" in result["error"]
    assert_nothing_left(tmp_path / "home")


def test_a_runs_jsonl_bomb_without_line_breaks_is_refused_at_the_line_bound(tmp_path):
    bomb = write_zip(tmp_path / "lines.zip", [("runs.jsonl", b"x" * (200 * MiB))])
    base = baseline_rss_mib(tmp_path)
    result = import_in_capped_child(tmp_path / "home", bomb)
    assert "runs.jsonl line 1 is longer than 16 MiB" in result["error"]
    # One bounded line (16 MiB, read in pieces) above the child's own footprint, never the 200 MiB.
    assert result["max_rss_mib"] - base < 80, (base, result)
    assert_nothing_left(tmp_path / "home")


def test_a_huge_jsonl_file_is_read_one_bounded_line_at_a_time(tmp_path):
    """2 GiB without a newline (a sparse file: no disk used): the old code read it whole (2 GB of memory)."""
    blob = tmp_path / "huge.jsonl"
    with open(blob, "wb") as f:
        f.truncate(2 << 30)
    base = baseline_rss_mib(tmp_path)
    result = import_in_capped_child(tmp_path / "home", blob)
    assert f"{blob} line 1 is longer than 16 MiB" in result["error"]
    assert result["max_rss_mib"] - base < 80, (base, result)
    assert_nothing_left(tmp_path / "home")


def test_a_file_past_the_size_limit_is_refused_unread(tmp_path):
    blob = tmp_path / "larger.jsonl"
    with open(blob, "wb") as f:
        f.truncate(9 << 30)  # sparse, past the default 8 GiB
    dst = open_store(tmp_path / "home")
    with pytest.raises(HistoryError, match=r"refused, the import is larger \(9 GiB\) than the limit of 8 GiB"):
        import_runs(dst, blob)
    assert_nothing_left(tmp_path / "home")


def honest_zip(tmp_path, payload_size):
    """A zip whose record truthfully describes a large image (a bomb that tells the truth)."""
    _, record, member = one_run_zip(tmp_path)
    payload = bytes(payload_size)
    record["outputs"][0].update(size=payload_size, sha256=hashlib.sha256(payload).hexdigest())
    return write_zip(tmp_path / "honest.zip", [("runs.jsonl", json.dumps(record) + "\n"), (member, payload)])


def test_the_whole_import_is_bounded_by_max_bytes_before_anything_is_written(tmp_path, capsys):
    honest = honest_zip(tmp_path, 20 * MiB)
    dst = open_store(tmp_path / "home")
    with pytest.raises(HistoryError, match=r"larger \(20 MiB\) than the limit of 16 MiB .*--max-size raises it"):
        import_runs(dst, honest, limits=ImportLimits(max_bytes=16 * MiB))
    assert_nothing_left(tmp_path / "home")
    # The CLI: the same refusal on one line; --max-size lets the user take it.
    assert main(["--data-dir", str(tmp_path / "home"), "history", "import", str(honest), "--max-size", "16M"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "than the limit of 16 MiB" in err
    assert main(["--data-dir", str(tmp_path / "home"), "history", "import", str(honest), "--max-size", "32M"]) == 0
    assert "imported 1 run(s)" in capsys.readouterr().out


def test_an_import_larger_than_the_free_space_is_refused_first(tmp_path, monkeypatch):
    import shutil

    honest = honest_zip(tmp_path, 2 * MiB)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=65 * MiB))
    dst = open_store(tmp_path / "home")
    with pytest.raises(HistoryError, match=r"its files need 2 MiB in .* and 65 MiB is free"):
        import_runs(dst, honest)
    assert_nothing_left(tmp_path / "home")


def export_of(tmp_path, n):
    src = open_store(tmp_path / "many")
    for i in range(n):
        src.finish_run(src.create_run({"prompt": f"p{i}", "steps": 4}), "done")
    out = tmp_path / "many.jsonl"
    export_runs(src, "jsonl", out, force=True)
    return out


def test_the_number_of_runs_is_bounded(tmp_path, capsys):
    many = export_of(tmp_path, 5)
    dst = open_store(tmp_path / "home")
    with pytest.raises(HistoryError, match="refused, it holds more than 3 runs .*--max-runs raises it"):
        import_runs(dst, many, limits=ImportLimits(max_runs=3))
    assert dst.count_runs() == 0
    assert main(["--data-dir", str(tmp_path / "home"), "history", "import", str(many), "--max-runs", "4"]) == 2
    assert "more than 4 runs" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "home"), "history", "import", str(many), "--max-runs", "5"]) == 0
    assert dst.count_runs() == 5


def test_a_zip_with_more_members_than_runs_could_have_is_refused_before_reading_its_directory(tmp_path):
    crowd = write_zip(tmp_path / "crowd.zip", [("runs.jsonl", "")] + [(f"f/{i}", b"") for i in range(40)])
    dst = open_store(tmp_path / "home")
    with pytest.raises(HistoryError, match="the zip holds 41 members, more than an export of 2 runs"):
        import_runs(dst, crowd, limits=ImportLimits(max_runs=2))


def test_an_over_long_line_is_refused_naming_it(tmp_path):
    many = export_of(tmp_path, 2)
    lines = many.read_text().splitlines()
    record = json.loads(lines[0])
    record["request"]["prompt"] = "x" * (2 * MiB)
    many.write_text(lines[1] + "\n" + json.dumps(record) + "\n")
    dst = open_store(tmp_path / "home")
    with pytest.raises(HistoryError, match=r"many\.jsonl line 2 is longer than 1 MiB"):
        import_runs(dst, many, limits=ImportLimits(max_line=1 * MiB))
    assert dst.count_runs() == 0
    assert import_runs(dst, many).added == 2  # the default bound (16 MiB) takes a 2 MiB prompt


@pytest.mark.parametrize("text", ["lots", "-1", "0", "1.5X"])
def test_bad_limit_flags_are_one_line(tmp_path, capsys, text):
    many = export_of(tmp_path, 1)
    assert main(["--data-dir", str(tmp_path / "home"), "history", "import", str(many), "--max-size", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tnr-lab: error: --max-size ") and err.count("\n") == 1


def test_size_flag_units():
    from tnr_tui.cli.history import parse_size

    assert parse_size("f", "8G") == 8 << 30 and parse_size("f", "512m") == 512 << 20
    assert parse_size("f", "1.5GiB") == 3 << 29 and parse_size("f", "100000") == 100000


def test_a_file_changed_between_the_check_and_the_insert_is_refused(tmp_path, monkeypatch):
    from tnr_tui.services.history.store import Store

    many = export_of(tmp_path, 3)
    dst = open_store(tmp_path / "home")
    real = Store.existing_ids

    def meddle(self, ids):
        found = real(self, ids)
        data = bytearray(many.read_bytes())  # same length, one prompt changed after pass 1 checked it
        at = data.index(b'"prompt": "p1"')
        data[at + 12] = ord("q")
        with open(many, "r+b") as f:
            f.write(bytes(data))
        return found

    monkeypatch.setattr(Store, "existing_ids", meddle)
    with pytest.raises(HistoryError, match="changed while it was being imported; nothing was imported"):
        import_runs(dst, many)
    assert dst.count_runs() == 0
