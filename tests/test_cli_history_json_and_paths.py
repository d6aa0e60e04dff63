"""`history list/show --json` print JSON every parser reads, and a data directory whose name is not UTF-8 is read
like any other (both found by the second hostile pass of issue 10: a NaN stat printed as the bare word NaN, and
`history list` in a non-UTF-8 directory ended in a UnicodeEncodeError while building SQLite's read-only URI)."""

from __future__ import annotations

import json
import os

from tnr_tui.cli import main
from tnr_tui.services.history import open_store

REQUEST = {"prompt": "circle", "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}}


def strict_loads(text: str):
    def refuse(word: str):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_a_nan_stat_is_null_in_list_and_show_json(tmp_path, capsys):
    store = open_store(tmp_path)
    run_id = store.create_run(REQUEST)
    store.finish_run(run_id, "done", stats={"seconds": 1.5, "y": float("nan"), "x": [1.0, float("inf")]})
    store.close()

    assert main(["--data-dir", str(tmp_path), "history", "show", run_id, "--json"]) == 0
    shown = strict_loads(capsys.readouterr().out)
    assert shown["stats"]["y"] is None
    assert shown["stats"]["x"] == [1.0, None]
    assert shown["seconds"] == 1.5

    assert main(["--data-dir", str(tmp_path), "history", "list", "--json"]) == 0
    (row,) = strict_loads(capsys.readouterr().out)
    assert row["id"] == run_id and row["seconds"] == 1.5


def test_a_data_dir_that_is_not_utf8_lists_and_exports(tmp_path, capsys):
    data = os.fsdecode(os.fsencode(str(tmp_path)) + b"/h\xffome")  # a lone surrogate in the str
    store = open_store(data)
    run_id = store.create_run(REQUEST)
    store.finish_run(run_id, "done")
    store.close()
    capsys.readouterr()

    assert main(["--data-dir", data, "history", "list"]) == 0
    assert run_id in capsys.readouterr().out
    out = tmp_path / "runs.jsonl"
    assert main(["--data-dir", data, "history", "export", "--format", "jsonl", "--out", str(out)]) == 0
    assert run_id in out.read_text()


def test_a_run_whose_process_died_is_flagged_by_read_only_list_and_show(tmp_path, capsys):
    # A writer SIGKILLed mid-run leaves its row 'running'; history list and show only read (they never mark it
    # interrupted), so they say that its process is gone rather than show it running.
    import signal
    import subprocess
    import sys

    child = (
        "import os, signal, sys\n"
        "from tnr_tui.services.history import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "print(store.create_run(dict(prompt='circle', solver='euler', guidance='cfg', steps=2, tags={})), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    run_id = done.stdout.strip()

    assert main(["--data-dir", str(tmp_path), "history", "list"]) == 0
    captured = capsys.readouterr()
    (line,) = [row for row in captured.out.splitlines() if row.startswith(run_id)]
    assert "running?" in line
    assert "1 run(s) marked '?'" in captured.err
    assert main(["--data-dir", str(tmp_path), "history", "show", run_id]) == 0
    assert "running  (its process has ended" in capsys.readouterr().out

    with open_store(tmp_path) as store:  # a writable open recovers it
        assert store.get_run(run_id).status == "interrupted"
    assert main(["--data-dir", str(tmp_path), "history", "list"]) == 0
    captured = capsys.readouterr()
    assert "interrupted" in captured.out and "?" not in captured.err
