"""The History screen against damaged and hostile history content (issue 10): stored images that cannot be
decoded, user text with control characters, the delete dialog. The real app under App.run_test() over a
real store; no model (nothing here samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pilot_wait import open_history, waiter
from textual.widgets import DataTable

from engine.request import GenerationRequest
from tnr_tui.services.history import OutputFile, open_store
from tnr_tui.ui.app import TnrLabApp


def notifications(app: TnrLabApp) -> list[Any]:
    return list(app._notifications)  # Textual keeps no public list (see test_tui_app.notifications)


wait_for = waiter(timeout=10.0)


def done_run_with_image(store: Any, prompt: str) -> tuple[str, Path]:
    """A finished run whose image is a real PNG in the history's outputs/ (as runs.execute leaves it)."""
    run_id = store.create_run(GenerationRequest(prompt=prompt, steps=2))
    path = store.new_output_path(run_id, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "red").save(path)
    store.finish_run(run_id, "done", stats={"seconds": 0.1}, outputs=[OutputFile.of("image", path)])
    return run_id, path


def damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"this is not a picture at all" * 40)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:60])
    elif how == "missing":
        path.unlink()
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "text":
        path.write_text("prompt: a red circle\n")
    elif how == "empty":
        path.write_bytes(b"")


DAMAGES = {
    "garbage": "not an image file",
    "truncated": "image unreadable:",
    "missing": "no such file",
    "directory": "not a regular file",
    "text": "not an image file",
    "empty": "not an image file",
}


def history_app(data_dir: Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", autoload=False)


@pytest.mark.parametrize("how", sorted(DAMAGES))
async def test_a_stored_image_that_cannot_be_read_is_a_caption_not_a_crash(tmp_data_dir: Path, how: str) -> None:
    store = open_store(tmp_data_dir)
    good_id, _ = done_run_with_image(store, "a good one")
    bad_id, bad_path = done_run_with_image(store, "a damaged one")
    store.close()
    damage(bad_path, how)
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        history = app.history_screen
        table = history.query_one("#runs", DataTable)
        thumb = history.query_one("#thumb")
        caption = thumb.query_one(".picture-caption")
        table.move_cursor(row=table.get_row_index(bad_id))
        await pilot.pause(0.1)
        assert history.selected_id() == bad_id
        assert thumb.pil_image is None
        shown = str(caption.content)
        assert shown.startswith("image unreadable: ") and DAMAGES[how] in shown, shown
        assert str(bad_path) in shown
        assert "a damaged one" in str(history.query_one("#run-params").content)  # the details still show
        # The screen keeps working: the good run's thumbnail, then the damaged one again.
        table.move_cursor(row=table.get_row_index(good_id))
        await pilot.pause(0.1)
        assert thumb.pil_image is not None and thumb.pil_image.size == (64, 64)
        table.move_cursor(row=table.get_row_index(bad_id))
        await pilot.pause(0.1)
        assert thumb.pil_image is None and str(caption.content).startswith("image unreadable: ")
        assert app.is_running
    assert app.return_code in (0, None)


async def test_an_image_too_large_to_decode_is_refused_before_decoding(tmp_data_dir: Path, monkeypatch) -> None:
    from tnr_tui.ui.widgets import picture

    store = open_store(tmp_data_dir)
    run_id, path = done_run_with_image(store, "big")
    store.close()
    Image.new("RGB", (300, 200), "blue").save(path)
    monkeypatch.setattr(picture, "THUMBNAIL_MAX_PIXELS", 300 * 200 - 1)
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        caption = str(app.history_screen.query_one("#thumb .picture-caption").content)
        assert caption == f"image unreadable: too large to show (300x200): {path}"


HOSTILE = "\x1b]0;TITLE\x07a red\x1b[2J circle\r on blue\x9b31m"
CONTROL = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) != "\n"]


def has_control(text: str) -> bool:
    return any(c in text for c in CONTROL)


async def test_control_characters_in_user_text_show_as_escapes_everywhere(tmp_data_dir: Path) -> None:
    from tnr_tui.services.text import visible

    store = open_store(tmp_data_dir)
    run_id = store.create_run(
        GenerationRequest(prompt=HOSTILE, negative_prompt="ugly\x1b[8m", steps=2, seed=7), status="queued"
    )
    store.finish_run(run_id, "failed", error="boom\x1b]0;ERR\x07 \rgone")
    store.set_note(run_id, "note\x1b[2J")
    store.close()
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        history = app.history_screen
        table = history.query_one("#runs", DataTable)
        cell = str(table.get_cell(run_id, "prompt"))
        assert not has_control(cell) and cell.startswith("\\x1b]0;TITLE\\x07a red\\x1b[2J circle\\r on")
        details = str(history.query_one("#run-params").content)
        assert not has_control(details)
        assert "error: boom\\x1b]0;ERR\\x07 \\rgone" in details and "note: note\\x1b[2J" in details
        assert "\\x9b31m" in details  # a C1 CSI, which json.dumps leaves raw
        # Load into the Lab: shown escaped, kept exact for the request (re-runs sample what was recorded).
        await pilot.press("l")
        await pilot.pause(0.2)
        lab = app.lab
        prompt = lab.query_one("#prompt")
        assert prompt.value == visible(HOSTILE) and not has_control(prompt.value)
        assert not has_control(lab.query_one("#negative_prompt").value)
        request = lab.build_request()
        assert request.prompt == HOSTILE and request.negative_prompt == "ugly\x1b[8m" and request.seed == 7
        loaded = [n for n in notifications(app) if n.message.startswith("loaded run")]
        assert loaded and "control characters" in loaded[-1].message
        # Edited, the field is taken as shown: what the user sees is what runs.
        prompt.focus()
        await pilot.press("end", "!")
        assert lab.build_request().prompt == visible(HOSTILE) + "!"
        # A toast quoting user text, and a caption (Compare labels, previews) show the escapes too.
        app.notify(f"cannot run {HOSTILE}", title="t\x1b[2J", markup=False)
        lab.query_one("#preview").set_caption(f"cfg 3 · euler\n{HOSTILE}")
        await pilot.pause(0.1)
        assert all(not has_control(n.message) and not has_control(n.title) for n in notifications(app))
        caption = str(lab.query_one("#preview .picture-caption").content)
        assert caption == f"cfg 3 · euler\n{visible(HOSTILE)}"
        # Pasted control characters become their escapes in the field itself.
        app.lab.query_one("#prompt").value = "pasted\x1b[2J"
        assert lab.query_one("#prompt").value == "pasted\\x1b[2J"
        # The delete dialog quotes the prompt.
        await open_history(pilot)
        await pilot.press("delete")
        await pilot.pause(0.1)
        question = str(app.screen.query_one("Static").content)
        assert visible(HOSTILE) in question and not has_control(question)


async def test_the_delete_dialog_lists_the_files_it_deletes_and_keeps_the_users_own(
    tmp_data_dir: Path, tmp_path: Path
) -> None:
    store = open_store(tmp_data_dir)
    run_id, image = done_run_with_image(store, "to delete")
    latent = store.new_output_path(run_id, ".safetensors")
    latent.write_bytes(b"latent bytes")
    users_own = tmp_path / "my-picture.png"  # recorded by absolute path (an old import-png): never deleted
    Image.new("RGB", (8, 8)).save(users_own)
    store.add_output(run_id, OutputFile.of("latent", latent))
    store.add_output(run_id, OutputFile.of("preview", users_own))
    expected = store.files_to_delete(run_id)
    store.close()
    assert sorted(expected) == sorted([image, latent])
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        await pilot.press("delete")
        await pilot.pause(0.1)
        question = str(app.screen.query_one("Static").content)
        assert f"Delete run {run_id}?" in question
        assert "It deletes 2 file(s):" in question and f"  {image}" in question and f"  {latent}" in question
        assert "It keeps 1 recorded file(s)" in question and f"  {users_own}" in question
        await pilot.click("#confirm")
        await pilot.pause(0.1)
        assert app.store.get_run(run_id) is None
        assert app.history_screen.query_one("#runs", DataTable).row_count == 0
        assert any(n.message == f"deleted run {run_id[-8:]} and 2 file(s)" for n in notifications(app))
    assert not image.exists() and not latent.exists() and users_own.is_file()


async def test_a_history_action_that_fails_is_a_notification_not_a_crash(tmp_data_dir: Path) -> None:
    from tnr_tui.services.history import HistoryError

    store = open_store(tmp_data_dir)
    run_id, _ = done_run_with_image(store, "x")
    store.close()
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)

        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise HistoryError("the history is read-only here")

        app.store.set_favourite = refuse  # what a busy or read-only history raises
        app.store.files_to_delete = refuse
        await pilot.press("f")
        await pilot.press("delete")
        await pilot.pause(0.1)
        errors = [n.message for n in notifications(app) if n.severity == "error"]
        assert errors == [
            "cannot mark it: the history is read-only here",
            "cannot delete it: the history is read-only here",
        ]
        assert app.is_running and app.screen is app.history_screen  # no dialog for a delete that cannot be listed
