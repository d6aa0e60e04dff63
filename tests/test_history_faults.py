"""Issue 10, defects 4 and 5, on real processes, real locks and real filesystems: a lock held by another
process, a full disk, a read-only filesystem and a directory this user may not write. Each says what is
wrong in one line, loses nothing, and the read-only history can still be listed, shown and exported.

The filesystems are real: tmpfs mounts (a 1 MiB one fills up; a remount makes one read-only). They need
root with CAP_SYS_ADMIN (these tests skip without it). Root passes every permission check, so "permission
denied" runs its child in a user namespace (`unshare -U`), where the same uid is subject to the file modes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tnr_tui.cli import main
from tnr_tui.services.history import HistoryBusy, HistoryError, HistoryUnwritable, NoHistory, open_store
from tnr_tui.services.history import store as store_module
from tnr_tui.services.history.paths import DB_NAME, NO_SPACE, PERMISSION_DENIED, READ_ONLY_FS

REPO = Path(__file__).resolve().parents[1]

WAITING = "waiting for the history (held by another process)"


def request(prompt: str = "a red circle", **kw: object) -> dict:
    base = {"prompt": prompt, "solver": "euler", "guidance": "cfg", "steps": 4, "seed": 1, "scale": 5.0}
    base.update(kw)
    return base


@pytest.fixture
def short_waits(monkeypatch):
    """Seconds instead of half a minute; stores opened after this use them (busy_timeout is per connection)."""
    monkeypatch.setattr(store_module, "BUSY_SLICE_S", 0.25)
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", 1.5)
    monkeypatch.setattr(store_module, "FINISH_WAIT_S", 3.0)


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
sys.stdin.readline()                  # "go"
conn.execute("BEGIN EXCLUSIVE")       # in WAL mode: the write lock (readers go on)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
sys.stdin.readline()
"""


class LockHolder:
    """Another process that takes the history's write lock when told to, and holds it `hold_s` seconds."""

    def __init__(self, db: Path, hold_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(db), str(hold_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def lock(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "locked"

    def wait_released(self) -> None:
        assert self.proc.stdout.readline().strip() == "released"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holders():
    made: list[LockHolder] = []

    def make(db: Path, hold_s: float) -> LockHolder:
        made.append(LockHolder(db, hold_s))
        return made[-1]

    yield make
    for h in made:
        h.close()


# ---- a lock held by another process -------------------------------------------------------------------


def test_a_writer_behind_another_process_says_it_waits_once_then_writes(tmp_path, short_waits, holders):
    notices: list[str] = []
    store = open_store(tmp_path, warn=notices.append)
    try:
        first = store.create_run(request())
        holder = holders(tmp_path / DB_NAME, hold_s=1.0)  # shorter than LOCK_WAIT_S
        holder.lock()
        t0 = time.monotonic()
        assert store.count_runs() == 1  # WAL: reading does not wait for the writer
        assert time.monotonic() - t0 < 0.2
        run_id = store.create_run(request("second"))
        waited = time.monotonic() - t0
        assert 0.7 < waited < store_module.LOCK_WAIT_S
        assert notices == [f"{WAITING}: {store.db_path}"]  # once, after the first slice
        assert {r.id for r in store.list_runs()} == {first, run_id}
    finally:
        store.close()


def test_a_lock_held_past_the_wait_is_one_line_bounded_in_time_and_writes_nothing(tmp_path, short_waits, holders):
    notices: list[str] = []
    store = open_store(tmp_path, warn=notices.append)
    try:
        holder = holders(tmp_path / DB_NAME, hold_s=60)
        holder.lock()
        t0 = time.monotonic()
        with pytest.raises(HistoryBusy) as caught:
            store.create_run(request())
        waited = time.monotonic() - t0
        assert store_module.LOCK_WAIT_S <= waited < store_module.LOCK_WAIT_S + store_module.BUSY_SLICE_S + 1.0
        message = str(caught.value)
        assert message.splitlines() == [message]
        assert f"the history {store.db_path} is held by another process" in message
        assert notices == [f"{WAITING}: {store.db_path}"]
        holder.close()
        assert store.count_runs() == 0
    finally:
        store.close()


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    from engine.models import load_bundle

    return load_bundle(str(tiny_sdxl_dir), device="cpu")


def tiny_request(tiny_sdxl_dir, **kw):
    from engine.request import GenerationRequest

    base = dict(prompt="a red circle", model=str(tiny_sdxl_dir), steps=2, seed=7, width=64, height=64)
    base.update(kw)
    return GenerationRequest(**base)


def lock_before_the_final_commit(monkeypatch, holder: LockHolder) -> None:
    """The holder takes the lock right after sampling, when execute computes metrics, before its commit."""
    from tnr_tui.services import runs

    real = runs._metrics

    def metrics_then_lock(*args, **kwargs):
        values = real(*args, **kwargs)
        holder.lock()
        return values

    monkeypatch.setattr(runs, "_metrics", metrics_then_lock)


def test_the_final_commit_of_a_finished_run_waits_longer_than_other_writes(
    tmp_path, short_waits, holders, bundle, tiny_sdxl_dir, monkeypatch
):
    from tnr_tui.services.runs import execute

    notices: list[str] = []
    store = open_store(tmp_path / "home", warn=notices.append)
    try:
        # Held longer than an ordinary call waits (1.5 s), shorter than the final commit does (3 s).
        holder = holders(store.db_path, hold_s=2.2)
        lock_before_the_final_commit(monkeypatch, holder)
        outcome = execute(tiny_request(tiny_sdxl_dir), store, bundle=bundle)
        assert outcome.status == "done"
        run = store.get_run(outcome.run_id)
        assert run.status == "done" and store.resolve(run.output("image").path).is_file()
        assert notices == [f"{WAITING}: {store.db_path}"]
    finally:
        store.close()


def test_a_finished_run_the_history_cannot_record_keeps_its_image_and_says_where(
    tmp_path, short_waits, holders, bundle, tiny_sdxl_dir, monkeypatch
):
    from tnr_tui.services.runs import RunNotRecorded, execute

    store = open_store(tmp_path / "home", warn=None)
    out = tmp_path / "mine.png"
    try:
        holder = holders(store.db_path, hold_s=60)
        lock_before_the_final_commit(monkeypatch, holder)
        t0 = time.monotonic()
        with pytest.raises(RunNotRecorded) as caught:
            execute(tiny_request(tiny_sdxl_dir), store, bundle=bundle, out=out)
        assert time.monotonic() - t0 < store_module.FINISH_WAIT_S + 10
        error = caught.value
        stored = store.new_output_path(error.run_id, ".png")
        message = str(error)
        assert message.splitlines() == [message]
        assert message.startswith(f"run {error.run_id} finished, but the history could not record it: ")
        assert "held by another process" in message
        assert str(out) in message and str(stored) in message
        assert out.is_file() and stored.is_file()  # the image is kept, both copies
        holder.close()
        # Not recorded `failed`: the row is still the running one (the next open marks it interrupted).
        assert store.get_run(error.run_id).status == "running"
    finally:
        store.close()


def test_generate_behind_a_held_lock_waits_then_says_so_in_one_line(
    tmp_path, short_waits, holders, tiny_sdxl_dir, capsys
):
    home, out = tmp_path / "home", tmp_path / "o.png"
    open_store(home).close()
    holder = holders(home / DB_NAME, hold_s=60)
    holder.lock()
    rc = main(["--data-dir", str(home), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "x", "--steps", "2",
               "--width", "64", "--height", "64", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tnr-lab:")]
    assert lines[0] == f"tnr-lab: warning: {WAITING}: {home / DB_NAME}"
    assert re.fullmatch(
        rf"tnr-lab: error: the history {re.escape(str(home / DB_NAME))} is held by another process "
        r"\(waited \d+ s\); try again when it is free",
        lines[1],
    )
    assert len(lines) == 2
    assert not out.exists()
    holder.close()
    with open_store(home) as store:
        assert store.count_runs() == 0  # nothing half-recorded


def test_generate_whose_final_commit_is_refused_names_the_kept_image(
    tmp_path, short_waits, holders, tiny_sdxl_dir, capsys, monkeypatch
):
    home, out = tmp_path / "home", tmp_path / "o.png"
    open_store(home).close()
    holder = holders(home / DB_NAME, hold_s=60)
    lock_before_the_final_commit(monkeypatch, holder)
    rc = main(["--data-dir", str(home), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "x", "--steps", "2",
               "--width", "64", "--height", "64", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("tnr-lab: error:")]
    assert len(errors) == 1 and "finished, but the history could not record it" in errors[0]
    assert f"The image is kept at {out} and {home / 'outputs'}" in errors[0]
    assert out.is_file()


# ---- real filesystems: tmpfs, full and read-only ---------------------------------------------------------


def _mount(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {proc.stderr.decode().strip()}")


def _remount(target: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(target)], check=True)


@pytest.fixture
def tmpfs(tmp_path):
    mount_point = tmp_path / "fs"
    _mount(mount_point, "size=1m,mode=755")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(mount_point: Path) -> Path:
    filler = mount_point / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_line_naming_it_and_loses_nothing(tmpfs):
    home = tmpfs / "home"
    with open_store(home) as store:
        kept = store.create_run(request("before the disk filled up"))
        filler = fill(tmpfs)
        with pytest.raises(HistoryUnwritable) as caught:
            store.create_run(request("x" * 300_000))  # more than the WAL can take without growing
        assert caught.value.reason == NO_SPACE
        message = str(caught.value)
        assert message.splitlines() == [message] and "no space left on device" in message
        assert "corrupt" not in message and "damaged" not in message
        filler.unlink()
        later = store.create_run(request("after"))
        assert {r.id for r in store.list_runs()} == {kept, later}
    with sqlite3.connect(home / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_generate_on_a_full_disk_is_one_line(tmpfs, tiny_sdxl_dir, capsys):
    home = tmpfs / "home"
    open_store(home).close()
    fill(tmpfs)
    out = tmpfs / "o.png"
    rc = main(["--data-dir", str(home), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "x",
               "--steps", "1", "--width", "64", "--height", "64", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("tnr-lab: error:")]
    assert len(errors) == 1 and "no space left on device" in errors[0].lower(), err


def _history_with_runs(home: Path, n: int) -> list[str]:
    with open_store(home) as store:
        ids = []
        for i in range(n):
            run_id = store.create_run(request(f"run {i}", seed=i))
            image = store.new_output_path(run_id, ".png")
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"png %d" % i)
            store.finish_run(run_id, "done", outputs=[store_module.OutputFile.of("image", image)])
            ids.append(run_id)
    return ids


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tnr_tui", *args], capture_output=True, text=True, cwd=REPO)


def test_a_read_only_filesystem_is_named_and_list_show_export_still_work(tmpfs, tmp_path):
    home = tmpfs / "home"
    ids = _history_with_runs(home, 3)
    assert not (home / f"{DB_NAME}-wal").exists()  # closed cleanly: no WAL, so SQLite cannot make a -shm
    _remount(tmpfs, "ro")

    with pytest.raises(HistoryUnwritable) as caught:
        open_store(home)
    assert caught.value.reason == READ_ONLY_FS
    assert "read-only file system" in str(caught.value) and "corrupt" not in str(caught.value)

    with open_store(home, readonly=True) as store:
        assert [r.id for r in store.list_runs()] == ids[::-1]
        assert store.find_run(ids[0]).status == "done"
        with pytest.raises(HistoryError, match="opened read-only"):
            store.create_run(request())

    listed = _cli("--data-dir", str(home), "history", "list", "--json")
    assert listed.returncode == 0 and listed.stderr == ""
    assert [r["id"] for r in json.loads(listed.stdout)] == ids[::-1]
    shown = _cli("--data-dir", str(home), "history", "show", ids[1])
    assert shown.returncode == 0 and "run 1" in shown.stdout and "(missing)" not in shown.stdout
    exported = tmp_path / "runs.jsonl"
    export = _cli("--data-dir", str(home), "history", "export", "--format", "jsonl", "--out", str(exported))
    assert export.returncode == 0, export.stderr
    assert [json.loads(line)["id"] for line in exported.read_text().splitlines()] == ids[::-1]
    generate = _cli("--data-dir", str(home), "generate", "--prompt", "x", "--out", str(tmp_path / "g.png"))
    assert generate.returncode == 2 and "Traceback" not in generate.stderr
    assert "read-only file system" in generate.stderr and "corrupt" not in generate.stderr
    assert sorted(p.name for p in home.iterdir()) == [DB_NAME, "outputs"]  # nothing was created


CRASHING_WRITER = """
import sys
from tnr_tui.services.history import open_store
store = open_store(sys.argv[1])
for i in range(5):
    store.create_run({"prompt": f"crashed {i}", "solver": "euler", "guidance": "cfg", "steps": 4, "seed": i})
print("written", flush=True)
sys.stdin.readline()
"""


def test_a_read_only_history_with_a_wal_left_by_a_crash_is_read_whole(tmpfs):
    home = tmpfs / "home"
    _history_with_runs(home, 2)
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(home)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdout.readline().strip() == b"written"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (home / f"{DB_NAME}-wal").stat().st_size > 0  # the 5 runs live only in the WAL
    _remount(tmpfs, "ro")
    with open_store(home, readonly=True) as store:
        assert store.journal_mode == "readonly"  # mode=ro reading the WAL, not immutable (which would skip it)
        assert store.count_runs() == 7


PERMISSION_CHILD = """
import sys
from tnr_tui.services.history import HistoryError, open_store
try:
    open_store(sys.argv[1]).close()
    print("opened for writing")
except HistoryError as e:
    print(type(e).__name__, getattr(e, "reason", ""), e)
with open_store(sys.argv[1], readonly=True) as store:
    print("read", store.count_runs(), store.journal_mode)
"""


def test_a_directory_this_user_cannot_write_is_permission_denied_and_still_readable(tmp_path):
    home = tmp_path / "home"
    _history_with_runs(home, 2)
    try:
        os.chmod(home, 0o555)
        proc = subprocess.run(
            ["unshare", "-U", sys.executable, "-c", textwrap.dedent(PERMISSION_CHILD), str(home)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0 and "unshare" in proc.stderr:
            pytest.skip(f"no user namespaces here: {proc.stderr.strip()}")
        lines = proc.stdout.splitlines()
        assert proc.returncode == 0, proc.stderr
        assert lines[0].startswith(f"HistoryUnwritable {PERMISSION_DENIED} cannot write the history in {home}")
        assert lines[1] == "read 2 immutable"
        # The child was subject to the file modes: as root, without the namespace, writing would work.
        assert os.getuid() != 0 or "opened for writing" not in proc.stdout
    finally:
        os.chmod(home, 0o755)


def test_list_on_a_missing_data_directory_creates_nothing(tmp_path, capsys):
    home = tmp_path / "not-yet"
    assert main(["--data-dir", str(home), "history", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no history at {home} yet"
    assert main(["--data-dir", str(home), "history", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["--data-dir", str(home), "history", "show", "01ABC"]) == 2
    assert capsys.readouterr().err.strip() == f"tnr-lab: error: no history at {home} yet"
    assert not home.exists()
    home.mkdir()
    with pytest.raises(NoHistory):
        open_store(home, readonly=True)
    assert list(home.iterdir()) == []


def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    home = tmp_path / "home"
    with open_store(home) as store:
        run_id = store.create_run(request("long " * 60_000))  # far more than a pipe holds
    shell = f"{sys.executable} -m tnr_tui --data-dir {home} history show {run_id} | head -n 1"
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {shell}"], capture_output=True, text=True, cwd=REPO)
    assert proc.stdout.startswith(f"run {run_id}")
    assert proc.stderr == ""  # no "error: Broken pipe", no "Exception ignored"
    assert proc.returncode == 141  # 128 + SIGPIPE, as `yes | head` reports under pipefail


def test_a_read_only_open_of_an_older_schema_upgrades_it_where_writable_and_names_it_where_not(tmpfs):
    from test_history_migrations import make_v1_file

    home = tmpfs / "home"
    home.mkdir()
    make_v1_file(home / DB_NAME)
    _remount(tmpfs, "ro")
    with pytest.raises(HistoryError, match="schema version 1, older .* cannot be upgraded where it is"):
        open_store(home, readonly=True)
    _remount(tmpfs, "rw")
    with open_store(home, readonly=True) as store:
        assert [r.prompt for r in store.list_runs()] == ["old run"]
    assert len(list(home.glob(f"{DB_NAME}.v1-*.bak"))) == 1  # upgraded as a writable open would, backup first
