"""`tnr-lab history delete ID ...`: what the History screen's delete does, from the command line.

It says what goes before it goes, asks on a terminal (--yes not to, and needs --yes where there is none),
checks every id before deleting any, refuses a run that is still sampling, and removes only the history's own
files, as the screen does (Store.files_to_delete).
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tnr_tui.cli import main
from tnr_tui.services.history import OutputFile, open_store


def run_with_image(store, prompt, status="done"):
    run_id = store.create_run({"prompt": prompt, "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}})
    path = store.new_output_path(run_id, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)
    if status == "done":
        store.finish_run(run_id, "done", outputs=[OutputFile.of("image", path)])
    return run_id, path


@pytest.fixture
def home(tmp_path):
    data = tmp_path / "home"
    store = open_store(data)
    runs = [run_with_image(store, f"circle {i}") for i in range(3)]
    store.close()
    return data, runs


def delete(data, *args):
    return main(["--data-dir", str(data), "history", "delete", *args])


def ids_in(data):
    store = open_store(data)
    try:
        return {run.id for run in store.list_runs(limit=100)}
    finally:
        store.close()


class Terminal(io.StringIO):
    """A stdin that is a terminal and answers `answer`."""

    def __init__(self, answer: str) -> None:
        super().__init__(answer + "\n")

    def isatty(self) -> bool:
        return True


def test_yes_deletes_the_runs_and_their_files(home, capsys):
    data, runs = home
    (first, first_image), (second, second_image), (kept, kept_image) = runs
    assert delete(data, first, second[:20], "--yes") == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"deleted run {first} and 1 file(s)", f"deleted run {second} and 1 file(s)"]
    assert ids_in(data) == {kept}
    assert not first_image.exists() and not second_image.exists() and kept_image.exists()


def test_json_lists_what_went(home, capsys):
    data, runs = home
    run_id, image = runs[0]
    assert delete(data, run_id, "--yes", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [{"id": run_id, "files": [str(image)]}]


def test_an_unknown_id_among_them_deletes_nothing(home, capsys):
    data, runs = home
    assert delete(data, runs[0][0], "01NOSUCHRUN", "--yes") == 2
    err = capsys.readouterr().err
    assert err.startswith("tnr-lab: error: ") and "01NOSUCHRUN" in err
    assert ids_in(data) == {run_id for run_id, _ in runs}


def test_a_run_still_sampling_is_refused_and_nothing_goes(home, capsys):
    data, runs = home
    store = open_store(data)
    live, live_image = run_with_image(store, "sampling now", status="running")  # this process: alive
    store.close()
    assert delete(data, runs[0][0], live, "--yes") == 2
    err = capsys.readouterr().err
    assert f"run {live} is running: cancel it first" in err and "nothing was deleted" in err
    assert ids_in(data) == {run_id for run_id, _ in runs} | {live}
    assert live_image.exists()


def test_without_yes_and_without_a_terminal_it_says_what_would_go_and_deletes_nothing(home, capsys, monkeypatch):
    data, runs = home
    run_id, image = runs[0]
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # piped: not a terminal, so not an answer
    assert delete(data, run_id) == 2
    err = capsys.readouterr().err
    assert f"Delete run {run_id}?" in err and str(image) in err and "give --yes" in err
    assert run_id in ids_in(data) and image.exists()


@pytest.mark.parametrize(("answer", "gone"), [("y", True), ("yes", True), ("n", False), ("", False)])
def test_on_a_terminal_it_asks(home, capsys, monkeypatch, answer, gone):
    data, runs = home
    run_id, image = runs[0]
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    assert delete(data, run_id) == 0
    captured = capsys.readouterr()
    assert "Delete 1 run(s)? [y/N] " in captured.err
    assert (run_id not in ids_in(data)) is gone and image.exists() is not gone
    assert ("nothing was deleted" in captured.err) is not gone


def test_another_process_keeps_using_the_history_while_runs_are_deleted(home, capsys):
    data, runs = home
    other = open_store(data)  # the lab or a sweep, open on the same history
    try:
        assert delete(data, runs[0][0], "--yes") == 0
        assert other.get_run(runs[0][0]) is None
        new_run, _ = run_with_image(other, "made meanwhile")
        assert other.get_run(new_run).status == "done"
    finally:
        other.close()
    assert ids_in(data) == {runs[1][0], runs[2][0], new_run}


def test_a_file_another_run_records_is_kept(home, capsys):
    data, runs = home
    store = open_store(data)
    (first, first_image) = runs[0]
    twin = store.create_run({"prompt": "same picture", "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}})
    store.finish_run(twin, "done", outputs=[OutputFile.of("image", first_image)])
    store.close()
    assert delete(data, first, "--yes") == 0
    assert capsys.readouterr().out.strip() == f"deleted run {first} and 0 file(s)"
    assert first_image.exists()
