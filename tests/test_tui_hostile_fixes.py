"""Defects a hostile pass over the real lab in tmux found (2026-12-01), each held here:

- "+ prompt" in the N-prompt box crashed the app (the new row was read before it had composed), and so did
  loading a run of three or more prompts into the Lab;
- a second "Run grid" in Compare crashed (the new grid took the old one's id before that was removed);
- ctrl+q while the worker was inside a long model evaluation aborted the process (exit 134) and left its
  run `running`; queued runs stayed `queued`;
- a crash exited 0.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pilot_wait import open_history
from textual.widgets import Checkbox, Input

from engine.request import GenerationRequest, WeightedPrompt
from tests.tui_runs import fake_run_fn
from tnr_tui.services.history import open_store
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.screens.lab import ExtraPrompt


class Bundle:
    name, device, dtype = "fake", "cpu", "float32"


def lab_app(data_dir: Path, run_fn: Any = None) -> TnrLabApp:
    return TnrLabApp(
        data_dir=data_dir, image_protocol="halfcell", load_fn=lambda *a: Bundle(), run_fn=run_fn or fake_run_fn()
    )


async def until(pilot: Any, condition: Any, what: str, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_adding_prompts_to_the_n_prompt_box_does_not_crash(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        lab = app.lab
        lab.query_one("#weighted", Checkbox).value = True
        # The box fills when first shown, and the button moves down under each new row. Each click waits for
        # the layout that put the button where it is, and for the button's press effect to end: Textual's
        # Button ignores a click while it shows the last press (0.2 s), which made this test flaky on CI.
        await until(
            pilot,
            lambda: bool(lab.query("#add-prompt")) and lab.query_one("#add-prompt").region.area > 0,
            "the N-prompt box to be laid out",
        )
        for n in range(1, 4):
            button = lab.query_one("#add-prompt")
            await until(pilot, lambda b=button: not b.has_class("-active"), "the last press effect to end")
            before = button.region
            await pilot.click("#add-prompt")
            await until(pilot, lambda n=n: len(lab.query(ExtraPrompt)) == n, f"row {n} to mount")
            await until(
                pilot, lambda y=before.y: lab.query_one("#add-prompt").region.y > y, f"the button to move ({n})"
            )
        assert len(lab.query(ExtraPrompt)) == 3 and app.return_code is None  # still running, no crash
        # negative, prompt and the three new rows (scale 1 each): the line counts all five
        assert str(lab.query_one("#equivalent").content).startswith("5 prompts: base = mean")
        # The new rows' prompts are read at once, as the equivalent-scale line does right after the mount.
        row = ExtraPrompt("a blue square", -0.5)
        assert row.prompt() == WeightedPrompt("a blue square", -0.5)
        await pilot.click(".remove-extra")
        await until(pilot, lambda: len(lab.query(ExtraPrompt)) == 2, "the removed row to go")


async def test_loading_a_run_of_three_prompts_into_the_lab_does_not_crash(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    request = GenerationRequest(
        "a red circle",
        prompts=(WeightedPrompt("neg", -1.0), WeightedPrompt("a red circle", 3.0), WeightedPrompt("x", 0.5)),
        steps=4,
    )
    async with app.run_test(size=(150, 46)) as pilot:
        app.lab.load_request(request)
        await pilot.pause()
        assert app.return_code is None
        assert app.lab.build_request().prompts == request.prompts


async def test_a_second_compare_grid_replaces_the_first(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("f4")
        await pilot.pause(0.1)
        screen = app.compare_screen
        screen.query_one("#compare-prompt", Input).value = "a red circle"
        screen.query_one("#compare-steps", Input).value = "2"
        screen.query_one("#compare-methods", Input).value = "cfg:3"
        screen.query_one("#compare-solvers", Input).value = "euler"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(app.ended) == 1, "the first grid's run")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(app.ended) == 2, "the second grid's run")
        await pilot.pause(0.1)
        assert app.return_code is None and [m.status for m in app.ended] == ["done", "done"]
        assert len(screen.query(".compare-grid")) == 1 and len(screen.query(".compare-tile")) == 1


async def test_quitting_during_a_model_evaluation_closes_its_run_and_the_queue(tmp_data_dir: Path) -> None:
    inside = threading.Event()
    release = threading.Event()

    def gate(step: int) -> None:  # a model evaluation that no stop flag interrupts (a large image on a CPU)
        inside.set()
        release.wait(30)

    app = lab_app(tmp_data_dir, fake_run_fn(gate=gate))
    try:
        async with app.run_test(size=(150, 46)) as pilot:
            await pilot.press("ctrl+r")
            await until(pilot, inside.is_set, "the run to start its evaluation")
            await pilot.press("ctrl+r")  # a second run waits in the queue
            await until(pilot, lambda: app.worker.pending == 1, "the queued run")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: app.worker_stuck, "the quit")
        runs = {r.status: r for r in open_store(tmp_data_dir).list_runs()}
        assert set(runs) == {"cancelled"} and len(open_store(tmp_data_dir).list_runs()) == 2
        errors = sorted(r.error for r in open_store(tmp_data_dir).list_runs())
        assert errors == [
            "cancelled before it started (the lab quit)",
            "cancelled: the lab quit during a model evaluation",
        ]
    finally:
        release.set()


class FinishedApp:
    """What run_app sees of an app that has ended (TnrLabApp's run, return_code and worker_stuck)."""

    def __init__(self, *, return_code: int | None, result: Any = None, stuck: bool = False, **_: Any) -> None:
        self.return_code, self._result, self.worker_stuck = return_code, result, stuck

    def run(self) -> Any:
        return self._result


@pytest.mark.parametrize(
    ("return_code", "stuck", "expected"),
    [(0, False, 0), (1, False, 1), (1, True, 1), (0, True, 0)],
)
def test_the_lab_command_exits_with_the_apps_status(
    monkeypatch: pytest.MonkeyPatch, tmp_data_dir: Path, return_code: int, stuck: bool, expected: int
) -> None:
    import os
    from types import SimpleNamespace

    import tnr_tui.ui.app as app_module
    from tnr_tui.cli import lab

    monkeypatch.setattr(app_module, "TnrLabApp", lambda **kw: FinishedApp(return_code=return_code, stuck=stuck))
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    args = SimpleNamespace(data_dir=str(tmp_data_dir), model=None, image_protocol="halfcell")
    if stuck:  # the worker is inside torch: the process ends without Python's shutdown, with that status
        with pytest.raises(SystemExit):
            lab.run_app(args)
        assert exits == [expected]
    else:
        assert lab.run_app(args) == expected and not exits


async def test_a_live_run_is_not_deleted_from_the_history_screen(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    live = store.create_run(GenerationRequest("sampling now"), status="queued")  # this process: alive
    store.close()
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        await pilot.press("delete")
        await pilot.pause(0.1)
        messages = [n.message for n in app._notifications]  # noqa: SLF001
        assert any(m.startswith(f"run {live[-8:]} is queued: cancel it first") for m in messages)
        assert type(app.screen).__name__ == "HistoryScreen"  # no confirmation dialog was opened
    assert open_store(tmp_data_dir).get_run(live) is not None


def app_with_a_run_to_export(data_dir: Path) -> TnrLabApp:
    from tests.test_tui_history_screen import done_run_with_image

    store = open_store(data_dir)
    done_run_with_image(store, "to export")
    store.close()
    return lab_app(data_dir)


async def export_to(pilot: Any, app: TnrLabApp, path: Path) -> Any:
    """Open History's export dialog on the run, give it `path` and press Export once; the dialog, once it has
    answered (an error shown, or closed)."""
    from tnr_tui.ui.screens.dialogs import ExportDialog

    await pilot.press("f3")
    await until(pilot, lambda: app.history_screen.query_one("#runs").row_count == 1, "the run listed")
    await pilot.press("e")
    await until(pilot, lambda: isinstance(app.screen, ExportDialog), "the export dialog")
    dialog = app.screen
    dialog.query_one("#export-path", Input).value = str(path)
    await pilot.click("#export")
    await until(pilot, lambda: app.screen is not dialog or str(dialog.query_one("#export-error").content), "the answer")
    return dialog


async def test_exporting_to_a_directory_is_said_in_the_dialog_which_stays_open(
    tmp_data_dir: Path, tmp_path: Path
) -> None:
    app = app_with_a_run_to_export(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        dialog = await export_to(pilot, app, tmp_path)
        assert app.screen is dialog  # still open, the path to fix in front of the user
        assert str(dialog.query_one("#export-error").content) == f"{tmp_path} is a directory: give a file name in it"
    assert not any(p.is_file() for p in tmp_path.iterdir())  # nothing was written into the directory


async def test_the_palette_offers_the_labs_screenshot_only(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert "Save screenshot" in titles and "Screenshot" not in titles and "Quit" in titles


async def test_a_keymap_with_unknown_ids_and_non_text_keys_says_so_and_applies_the_rest(tmp_data_dir: Path) -> None:
    import json

    (tmp_data_dir / "keymap.json").write_text(json.dumps({"lab.run": "ctrl+g", "nope.id": "x", "lab.cancel": 5}))
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.deferred_ready, "the keymap")
        await pilot.pause()
        warnings = [n.message for n in app._notifications if n.severity == "warning"]  # noqa: SLF001
        assert len(warnings) == 1
        assert warnings[0].startswith("keymap: unknown binding id(s) nope.id; keys must be text: lab.cancel (ignored")
        assert "ids start with app. compare. dialog. history. lab. pair. trajectory." in warnings[0]
        runs: list[str] = []
        app.lab.action_run = lambda: runs.append("run")  # type: ignore[method-assign]
        await pilot.press("ctrl+g")
        await pilot.pause(0.05)
        assert runs == ["run"]  # the valid entry applies


async def test_a_keymap_giving_a_binding_anothers_key_says_which_and_where(tmp_data_dir: Path) -> None:
    import json

    # ctrl+q is the app's quit (live on every screen); ctrl+g twice in the Lab; history's "r" on f2 (the app's).
    keymap = {"lab.run": "ctrl+q", "lab.cancel": "ctrl+g", "lab.new_seed": "ctrl+g", "history.rerun": "f2"}
    (tmp_data_dir / "keymap.json").write_text(json.dumps(keymap))
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.deferred_ready, "the keymap")
        await pilot.pause()
        warnings = [n.message for n in app._notifications if n.severity == "warning"]  # noqa: SLF001
        assert warnings == [
            "keymap: history.rerun and app.lab both take f2; lab.cancel and lab.new_seed both take ctrl+g; "
            "lab.run and app.quit both take ctrl+q: only one of each runs (give one another key in keymap.json)"
        ]


def test_keys_on_different_screens_do_not_clash() -> None:
    from tnr_tui.ui.app import binding_keys, keymap_clashes

    defaults = binding_keys()
    assert keymap_clashes({}, defaults) == []  # the lab's own keys: none taken twice
    history_key = defaults["history.rerun"]
    assert keymap_clashes({"lab.run": history_key}, defaults) == []  # the Lab's run on the History's key
    assert keymap_clashes({"lab.run": f"ctrl+g,{defaults['lab.cancel']}"}, defaults) == [
        f"lab.run and lab.cancel both take {defaults['lab.cancel']}"
    ]


def test_the_readme_names_every_binding_id() -> None:
    from tnr_tui.ui.app import binding_ids

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("keymap.json") :][:900]
    for binding in sorted(binding_ids()):
        group, name = binding.split(".", 1)
        assert f"`{group}.`" in paragraph or f"`{binding}`" in paragraph, binding
        assert name in paragraph, binding


async def test_a_runs_key_on_an_empty_list_says_so(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        for key in ("r", "t", "f", "e"):
            await pilot.press(key)
            await pilot.pause(0.05)
        messages = [n.message for n in app._notifications]  # noqa: SLF001
        assert messages.count("no run selected: the list is empty") == 4
        assert type(app.screen).__name__ == "HistoryScreen"


async def test_keys_read_in_one_burst_go_where_the_focus_is_when_each_is_taken(tmp_data_dir: Path) -> None:
    # As the driver posts them when they come in one read (typing ahead, SSH): Tab, Tab, Space. Routed to the
    # focus of the moment they were read, the space replaced the prompt and the box stayed unticked.
    from textual import events

    app = lab_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        await pilot.pause()
        lab = app.lab
        prompt = lab.query_one("#prompt", Input).value
        assert app.focused is lab.query_one("#prompt")
        for key, character in (("tab", "\t"), ("tab", "\t"), ("space", " ")):
            app.post_message(events.Key(key, character))
        await pilot.pause(0.1)
        assert lab.query_one("#prompt", Input).value == prompt
        assert app.focused is lab.query_one("#weighted", Checkbox) and lab.query_one("#weighted", Checkbox).value
        # Typing a value after Tab lands in the next field, not the one before it.
        app.set_focus(lab.query_one("#prompt"))
        await pilot.pause()
        for key, character in (("c", "c"), ("a", "a"), ("t", "t"), ("tab", "\t"), ("x", "x")):
            app.post_message(events.Key(key, character))
        await pilot.pause(0.1)
        assert lab.query_one("#prompt", Input).value.endswith("cat")
        assert lab.query_one("#negative_prompt", Input).value.endswith("x")


async def test_exporting_over_an_existing_file_asks_first(tmp_data_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's own picture")
    app = app_with_a_run_to_export(tmp_data_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        dialog = await export_to(pilot, app, mine)
        assert app.screen is dialog and mine.read_bytes() == b"the user's own picture"
        assert str(dialog.query_one("#export-error").content) == (
            f"{mine} exists: press Export again to replace it, or change the path"
        )
        button = dialog.query_one("#export")
        await until(pilot, lambda: not button.has_class("-active"), "the first press effect to end")  # see above
        await pilot.click("#export")  # the same export again: confirmed
        await until(pilot, lambda: app.screen is not dialog, "the dialog to close")
        assert app.screen is not dialog
    assert mine.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # replaced by the run's image, as asked
