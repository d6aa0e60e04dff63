"""The History screen's delete dialog names each recorded file as deleted, kept or missing (issue 10 hostile
pass: a run whose image had been removed by hand was said to keep a file 'not the history's own')."""

from __future__ import annotations

from PIL import Image

from tnr_tui.services.history import OutputFile, open_store
from tnr_tui.services.history.deleting import delete_question


def run_with_image(store, prompt):
    run_id = store.create_run({"prompt": prompt, "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}})
    path = store.new_output_path(run_id, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)
    store.finish_run(run_id, "done", outputs=[OutputFile.of("image", path)])
    return store.get_run(run_id), path


def test_a_missing_file_is_said_missing_not_kept(tmp_path):
    store = open_store(tmp_path / "home")
    run, path = run_with_image(store, "gone")
    path.unlink()
    text = delete_question(store, run, store.files_to_delete(run.id))
    assert "It deletes no file." in text
    assert "1 recorded file(s) are missing already:" in text and str(path) in text
    assert "not the history's own" not in text


def test_a_present_file_is_listed_as_deleted(tmp_path):
    store = open_store(tmp_path / "home")
    run, path = run_with_image(store, "here")
    files = store.files_to_delete(run.id)
    text = delete_question(store, run, files)
    assert "It deletes 1 file(s):" in text and str(path) in text
    assert "missing" not in text and "It keeps" not in text
