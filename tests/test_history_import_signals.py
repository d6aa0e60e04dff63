"""SIGTERM in the middle of an export or an import leaves nothing behind (issue 10, rough edges): no hidden
temporary file beside the export, no file or folder in the history's outputs/, no run.

Each case runs `tnr-lab` in a real process that is held at a known point of its work (a patched copy step
prints READY and waits), then gets a real SIGTERM: the test never races the process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tnr_tui.services.history import open_store
from tnr_tui.services.history.store import OutputFile
from tnr_tui.services.history.transfer import export_runs

REPO = Path(__file__).resolve().parents[1]

# Runs `tnr-lab ARGS...` with the named function of tnr_tui.services.history.transfer wrapped: its Nth call (1-based)
# prints READY and sleeps, so the parent can send SIGTERM while the work is half done.
HELD = r"""
import sys, time
import tnr_tui.services.history.transfer as transfer
import tnr_tui.services.history.store as store
name, nth, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
owner_name, _, name = name.rpartition(".")
module = getattr(store, owner_name) if owner_name else transfer if hasattr(transfer, name) else store
real = getattr(module, name)
calls = []
def held(*a, **k):
    calls.append(1)
    result = real(*a, **k)
    if len(calls) == nth:
        print("READY", flush=True)
        time.sleep(60)
    return result
setattr(module, name, held)
if not owner_name:
    setattr(transfer, name, held)  # the name as transfer.py imported it
from tnr_tui.cli import main
raise SystemExit(main(args))
"""


def terminate_when_held(function, nth, *args):
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD, function, str(nth), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline() == "READY\n", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, err


def history_with_files(data_dir, n=3):
    store = open_store(data_dir)
    for i in range(n):
        run_id = store.create_run({"prompt": f"p{i}", "steps": 4})
        image = store.new_output_path(run_id, ".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(image)
        store.finish_run(run_id, "done", outputs=[OutputFile.of("image", image)])
    store.close()
    return data_dir


@pytest.mark.parametrize("fmt,function", [("zip", "sha256_file"), ("jsonl", "_record")])
def test_sigterm_during_export_leaves_no_hidden_temporary_file(tmp_path, fmt, function):
    home = history_with_files(tmp_path / "home")
    target = tmp_path / "out"
    target.mkdir()
    args = ("--data-dir", home, "history", "export", "--format", fmt, "--out", target / f"runs.{fmt}")
    rc, out, err = terminate_when_held(function, 2, *args)
    assert (rc, err) == (143, "tnr-lab: terminated\n")
    assert list(target.iterdir()) == []  # neither the export nor its .runs.<fmt>.<pid>.tmp


def export_zip(tmp_path):
    history_with_files(tmp_path / "src")
    out = tmp_path / "runs.zip"
    export_runs(open_store(tmp_path / "src"), "zip", out)
    return out


@pytest.mark.parametrize(
    "function,nth",
    [
        ("_copy_at_most", 2),  # the second file is in its temporary name, the first in place
        ("Store.insert_records", 1),  # every file in place and the rows committed: nothing may be removed then
    ],
)
def test_sigterm_during_import_leaves_no_file_or_everything(tmp_path, function, nth):
    export = export_zip(tmp_path)
    home = tmp_path / "home"
    open_store(home).close()
    rc, out, err = terminate_when_held(function, nth, "--data-dir", home, "history", "import", export)
    assert (rc, err) == (143, "tnr-lab: terminated\n")
    store = open_store(home)
    files = [p for p in store.outputs_dir.rglob("*")]
    if function == "Store.insert_records":  # interrupted after the commit: the runs keep their files
        assert store.count_runs() == 3
        assert sorted(p for p in files if p.is_file()) == sorted(
            store.resolve(r.output("image").path) for r in store.iter_runs()
        )
    else:
        assert store.count_runs() == 0 and files == []


def test_sigterm_during_import_png_leaves_nothing(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 4, Sampler: Euler, Seed: 1")
    png = tmp_path / "cat.png"
    Image.new("RGB", (16, 16), "white").save(png, pnginfo=info)
    home = tmp_path / "home"
    open_store(home).close()
    rc, out, err = terminate_when_held("_copy_at_most", 1, "--data-dir", home, "history", "import-png", png)
    assert (rc, err) == (143, "tnr-lab: terminated\n")
    store = open_store(home)
    assert store.count_runs() == 0 and list(store.outputs_dir.rglob("*")) == []
    assert out == ""  # nothing was reported imported
