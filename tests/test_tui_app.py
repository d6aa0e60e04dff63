"""The real lab under App.run_test(): typing, running with a tiny random SDXL model, the history, compare.

The model is the session's tiny SDXL-topology directory (tests/conftest.py), passed as the lab's model, at
64x64 with a few steps: the point is the app's behaviour, not the pictures.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pilot_wait import open_history, waiter
from textual.widgets import DataTable, Input, Select

from engine.request import GenerationRequest
from tnr_tui.services.history import open_store
from tnr_tui.services.sweep import evaluations, matched_steps
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.screens.compare import parse_methods, plan_grid
from tnr_tui.ui.screens.lab import equivalent_cfg_scale, format_progress
from tnr_tui.ui.widgets.dropdown import DropDown
from tnr_tui.ui.widgets.fields import RequestField
from tnr_tui.ui.widgets.picture import Picture

MARKUP_PROMPT = "a red [bold]circle[/ on a blue background"


wait_for = waiter(timeout=60.0)


def notifications(app: TnrLabApp) -> list[Any]:
    """The app's notifications. Textual 8.2 has no public list of them (App._notifications is the only
    record; a toast disappears after its timeout), so the private attribute is read here, in one place."""
    return list(app._notifications)


def make_app(data_dir: Path, model: str | Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, model=str(model), image_protocol="halfcell")


async def set_small(app: TnrLabApp, steps: int = 3) -> None:
    lab = app.lab
    lab.query_one("#steps", Input).value = str(steps)
    lab.query_one("#width", Input).value = "64"
    lab.query_one("#height", Input).value = "64"
    lab.query_one("#decode_every", Input).value = "2"


async def test_typing_and_ctrl_r_records_a_done_run(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        assert app.focused is not None and app.focused.id == "prompt"  # the prompt box has focus at start
        await pilot.press(*MARKUP_PROMPT)
        await set_small(app, steps=3)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.ended, what="the run to end")
        ended = app.ended[0]
        assert ended.status == "done", ended.error
        assert ended.stats["model_evaluations"] == 6  # cfg: 2 predictions x 3 Euler steps
        assert set(ended.metrics) >= {"colourfulness", "contrast", "saturation", "dynamic_range"}
        await pilot.pause(0.1)
        result = str(app.lab.query_one("#result-text").content)
        assert "6 model evaluations" in result and "colourfulness" in result
        assert app.lab.query_one("#preview").pil_image.size == (64, 64)  # the final image stays
    store = open_store(tmp_data_dir)
    (run,) = store.list_runs()
    assert run.id == ended.run_id and run.status == "done" and run.origin == "tui"
    assert run.prompt == MARKUP_PROMPT  # stored as typed
    assert run.request["steps"] == 3 and run.request["width"] == 64
    assert run.output("image") is not None and store.resolve(run.output("image").path).is_file()


async def test_markup_prompt_is_shown_literally(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press(*MARKUP_PROMPT)
        assert app.lab.query_one("#prompt", Input).value == MARKUP_PROMPT
        request = app.lab.build_request()
        assert request.prompt == MARKUP_PROMPT
        # An error message quoting the text must not be parsed as markup either.
        app.lab.query_one("#steps", Input).value = "[b]x"
        await pilot.pause(0.1)
        assert app.lab.query_one("#steps", RequestField).error == "steps must be a whole number, got '[b]x'"


async def test_a_prompt_past_77_tokens_ends_with_a_warning_notification(
    tmp_data_dir: Path, tiny_sdxl_dir: Path
) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        app.lab.query_one("#prompt", Input).value = "[b]" + " ".join(["a red circle on a blue background"] * 15)
        await set_small(app, steps=10)  # 1 step of leading spacing starts low: a warning of its own (MATH.md 7)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.ended, what="the run to end")
        assert app.ended[0].status == "done", app.ended[0].error
        await pilot.pause(0.1)
        warnings = [n for n in notifications(app) if n.severity == "warning"]
        assert len(warnings) == 1 and "'[b]a red circle" in warnings[0].message  # literal, not markup
        assert not warnings[0].markup


@pytest.mark.parametrize("damage", ["corrupt", "file"])
async def test_an_unopenable_history_is_a_notification_not_a_crash(tmp_path: Path, tiny_sdxl_dir: Path, damage) -> None:
    if damage == "corrupt":
        data_dir = tmp_path / "home"
        data_dir.mkdir()
        (data_dir / "history.sqlite").write_bytes(b"not a database at all " * 200)
    else:
        data_dir = tmp_path / "a-file"
        data_dir.write_text("the data dir is a file")
    app = make_app(data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press(*"a red circle")
        await pilot.press("ctrl+r")
        await pilot.pause(0.2)
        errors = [n for n in notifications(app) if n.severity == "error"]
        assert errors and errors[-1].title == "Not run" and "history cannot be opened" in errors[-1].message
        assert app.worker.pending == 0 and not app.ended  # nothing runs unrecorded
        await pilot.press("f3")
        await wait_for(
            pilot, lambda: [n for n in notifications(app) if n.title == "History"], what="the History's notice"
        )
        await pilot.press("f2")
        await pilot.pause(0.1)
        assert app.lab.query_one("#prompt", Input).value == "a red circle"  # the typed prompt is kept
    assert app.return_code in (0, None)


async def test_validation_uses_the_request_rules(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        lab = app.lab
        lab.query_one("#width", Input).value = "100"
        lab.query_one("#cfg_rescale", Input).value = "1.5"
        await pilot.pause(0.1)
        assert lab.query_one("#width", RequestField).error == "width must be a positive multiple of 8, got 100"
        assert lab.query_one("#cfg_rescale", RequestField).error == "CFG rescale must be between 0 and 1, got 1.5"
        await pilot.press("ctrl+r")
        await pilot.pause(0.1)
        assert not app.worker.busy and not app.ended  # nothing ran
        assert any("width must be" in n.message for n in notifications(app))


async def test_guidance_panel_shows_only_the_methods_parameters(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        lab = app.lab
        shown = {name: lab.query_one(f"#{name}").display for name in ("scale", "tnr_power", "cfg_rescale")}
        assert shown == {"scale": True, "tnr_power": False, "cfg_rescale": True}
        lab.query_one("#guidance", DropDown).value = "tnr"
        await pilot.pause(0.1)
        shown = {name: lab.query_one(f"#{name}").display for name in ("scale", "tnr_power", "cfg_rescale")}
        assert shown == {"scale": False, "tnr_power": True, "cfg_rescale": False}
        # The N-prompt form shows its equivalent CFG scale: g = (1 + s1 - s0) / 2 = (1 + 5 + 4) / 2.
        lab.query_one("#guidance", DropDown).value = "cfg"
        lab.query_one("#weighted").value = True
        await pilot.pause(0.1)
        assert str(lab.query_one("#equivalent").content) == "equivalent CFG scale g = 5.00"
        await pilot.press(*"x")
        request = lab.build_request()
        assert [(p.text, p.scale) for p in request.prompts] == [("", -4.0), ("x", 5.0)]


async def test_escape_cancels_and_records_cancelled(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press(*"a long run")
        await set_small(app, steps=400)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "step" in str(app.lab.query_one("#progress-text").content), what="a step")
        started = time.monotonic()
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.ended, timeout=20, what="the cancel")
        assert time.monotonic() - started < 5.0  # within one model evaluation (plus a loaded CI machine)
        assert app.ended[0].status == "cancelled"
    (run,) = open_store(tmp_data_dir).list_runs()
    assert run.status == "cancelled"


async def test_bad_model_path_fails_the_run_and_the_app_stays(tmp_data_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    app = make_app(tmp_data_dir, missing)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: "failed" in str(app.lab.query_one("#model-state").content), what="load failure")
        await pilot.press(*"x")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.ended, what="the failed run")
        assert app.ended[0].status == "failed" and "no-such-model" in app.ended[0].error
        assert any(n.title == "Run failed" for n in notifications(app))
        assert app.is_running
        await pilot.press(*"y")  # still responsive
        assert app.lab.query_one("#prompt", Input).value == "xy"
    (run,) = open_store(tmp_data_dir).list_runs()
    assert run.status == "failed" and "no-such-model" in run.error


async def test_quit_during_a_run_is_quick(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press(*"x")
        await set_small(app, steps=400)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "step" in str(app.lab.query_one("#progress-text").content), what="a step")
        started = time.monotonic()
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running, timeout=5, what="exit")
    assert time.monotonic() - started < 2.0


@pytest.fixture
def history_with_runs(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> Path:
    """Three finished runs through the real runs.execute: two mention a circle, one a square."""
    from engine.models import load_bundle
    from tnr_tui.services.runs import execute

    store = open_store(tmp_data_dir)
    bundle = load_bundle(str(tiny_sdxl_dir))
    for prompt in ("a red circle", "a green square", "a [blue] circle"):
        request = GenerationRequest(prompt=prompt, model=str(tiny_sdxl_dir), steps=2, width=64, height=64)
        execute(request, store, bundle=bundle)
    return tmp_data_dir


async def test_history_search_select_rerun_and_load(history_with_runs: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(history_with_runs, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        history = app.history_screen
        table = history.query_one("#runs", DataTable)
        assert table.row_count == 3
        await pilot.press("slash", *"circle")
        await wait_for(pilot, lambda: table.row_count == 2, timeout=5, what="the search")
        await pilot.press("tab")  # from the search box to the filters / table
        history.query_one("#runs").focus()
        await pilot.press("down")
        run = history.selected_run()
        assert run.prompt == "a red circle"  # newest first: "a [blue] circle", then "a red circle"
        assert 'prompt: "a red circle"' in str(history.query_one("#run-params").content)
        assert history.query_one("#thumb").pil_image is not None
        # Re-run: a new run in the history whose parent is the selected one.
        await pilot.press("r")
        await wait_for(pilot, lambda: app.ended, what="the re-run")
        assert app.ended[0].status == "done"
        rerun = open_store(history_with_runs).get_run(app.ended[0].run_id)
        assert rerun.parent_id == run.id and rerun.origin == "rerun" and rerun.prompt == "a red circle"
        # Load into the Lab.
        history.query_one("#runs").focus()
        table.move_cursor(row=table.get_row_index(run.id))
        await pilot.press("l")
        await pilot.pause(0.2)
        assert app.current_mode == "lab"
        assert app.lab.build_request().prompt == "a red circle"
        assert app.lab.build_request().steps == 2


async def test_history_favourite_note_and_delete(history_with_runs: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(history_with_runs, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        history = app.history_screen
        run = history.selected_run()
        image_path = app.store.resolve(run.output("image").path)
        await pilot.press("f")
        assert app.store.get_run(run.id).favourite is True
        await pilot.press("n")
        await pilot.pause(0.1)
        await pilot.press(*"[red]keep", "enter")
        await pilot.pause(0.1)
        assert app.store.get_run(run.id).notes == "[red]keep"
        await pilot.press("delete")
        await pilot.pause(0.1)
        await pilot.click("#confirm")
        await pilot.pause(0.1)
        assert app.store.get_run(run.id) is None and not image_path.exists()
        assert history.query_one("#runs", DataTable).row_count == 2


async def test_history_export_dialog_writes_png_and_json(
    history_with_runs: Path, tiny_sdxl_dir: Path, tmp_path: Path
) -> None:
    app = make_app(history_with_runs, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        run = app.history_screen.selected_run()
        for fmt, name in (("png", "out.png"), ("request", "req.json")):
            await pilot.press("e")
            await pilot.pause(0.1)
            dialog = app.screen
            dialog.query_one("#export-format", Select).value = fmt
            await pilot.pause(0.05)
            dialog.query_one("#export-path", Input).value = str(tmp_path / name)
            await pilot.click("#export")
            await pilot.pause(0.1)
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "req.json").read_text())["prompt"] == run.prompt


async def test_history_pages_instead_of_loading_everything(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    for i in range(130):
        store.create_run(GenerationRequest(prompt=f"p{i}"), status="queued")
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_history(pilot)
        table = app.history_screen.query_one("#runs", DataTable)
        assert table.row_count == 60 and app.history_screen.pages_loaded == 1
        table.move_cursor(row=50)
        await pilot.pause(0.1)
        assert table.row_count == 120  # the next page arrived as the cursor neared the end


async def test_compare_grid_runs_every_cell_into_the_history(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        await set_small(app, steps=2)
        await pilot.press("f4")
        await pilot.pause(0.1)
        screen = app.compare_screen
        screen.query_one("#compare-prompt", Input).value = "a red circle"
        screen.query_one("#compare-steps", Input).value = "2"
        screen.query_one("#compare-methods", Input).value = "cfg:3 tnr"
        screen.query_one("#compare-solvers", Input).value = "euler heun"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.ended) == 4, timeout=120, what="four runs")
        await pilot.pause(0.1)
        assert [m.status for m in app.ended] == ["done"] * 4
        captions = [str(t.query_one(".picture-caption").content) for t in screen.query(".compare-tile")]
        assert captions[0].startswith("cfg 3 · euler 2 steps") and captions[3].startswith("tnr · heun 1 steps")
        assert all(t.pil_image is not None for t in screen.query(".compare-tile"))
    runs = open_store(tmp_data_dir).list_runs()
    assert len(runs) == 4 and {r.prompt for r in runs} == {"a red circle"} and {r.seed for r in runs} == {0}


def test_plan_grid_matches_solvers_by_model_evaluations_like_the_sweep() -> None:
    base = GenerationRequest(prompt="p", steps=20)
    rows = plan_grid(base, "none cfg:5", "euler heun rk4")
    steps = [[c.request.steps for c in row] for row in rows]
    # P * (k * (steps - 1) + 1): 20 Euler evaluations; heun 10 steps = 19 (11 = 21, the tie goes to fewer);
    # rk4 6 steps = 21 is nearer than 5 steps = 17 (steps / stages would have given 5).
    assert steps == [[20, 20], [10, 10], [6, 6]]
    spent = [[evaluations(c.request.solver, c.request.guidance, c.request.steps) for c in row] for row in rows]
    assert spent == [[20, 40], [19, 38], [21, 42]]
    for row in rows:
        for cell in row:  # the same step count as the sweep's matching for that solver and method
            budget = evaluations("euler", cell.request.guidance, base.steps)
            assert cell.request.steps == matched_steps(cell.request.solver, cell.request.guidance, budget)
    assert rows[2][1].label == "cfg 5 · rk4 6 steps · 42 evals"
    assert rows[1][1].request.guidance == "cfg" and rows[1][1].request.scale == 5.0
    assert parse_methods("cfg++:0.8, tnr") == [("cfg++", 0.8), ("tnr", None)]
    with pytest.raises(ValueError, match="unknown guidance method 'cgf'"):
        parse_methods("cgf:3")


def test_equivalent_scale_and_progress_line() -> None:
    assert equivalent_cfg_scale([-4.0, 5.0]) == 5.0
    assert equivalent_cfg_scale([0.0, 1.0]) == 1.0  # plain conditional prediction
    assert equivalent_cfg_scale([1.0, 1.0, 1.0]) is None
    line = format_progress(4, 20, 3.25, 1.4321, 2.0)
    assert line == "step 5/20  σ 3.250  S 1.432  2.50 it/s  ETA 6.0 s"


async def test_keymap_file_remaps_a_binding_by_id(tmp_data_dir: Path) -> None:
    (tmp_data_dir / "keymap.json").write_text(json.dumps({"lab.run": "ctrl+g"}))
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="none", autoload=False)
    runs: list[str] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.deferred_ready, 10, "the keymap")  # applied after the first frame
        app.lab.action_run = lambda: runs.append("run")  # type: ignore[method-assign]
        await pilot.press("ctrl+r")
        await pilot.pause(0.05)
        assert runs == []  # the old key no longer runs
        await pilot.press("ctrl+g")
        await pilot.pause(0.05)
        assert runs == ["run"]
        assert not notifications(app)


async def test_a_broken_keymap_file_is_a_warning_not_a_crash(tmp_data_dir: Path) -> None:
    (tmp_data_dir / "keymap.json").write_text("{not json")
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="none", autoload=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.deferred_ready, 10, "the keymap")
        warnings = [n for n in notifications(app) if n.severity == "warning"]
        assert len(warnings) == 1 and warnings[0].message.startswith("keymap ignored: ")
        assert app.lab.is_mounted


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_lab_panels_fit_the_terminal(tmp_data_dir: Path, size: tuple[int, int]) -> None:
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=size) as pilot:
        # Laid out before anything is read (a fixed pause read zero regions on a loaded host, in another test).
        await wait_for(pilot, lambda: app.first_frame_at is not None, 20.0, "the first frame")
        lab = app.lab
        controls = lab.query_one("#controls")
        assert controls.max_scroll_y == 0  # the default request's panels fit without scrolling
        for field in lab.query(RequestField):
            if all(node.display for node in field.ancestors_with_self):
                box = field.content_region  # the text, after the label
                assert box.width >= 8, f"{field.id} input is {box.width} columns"
                assert box.right <= controls.region.right, f"{field.id} is cut off"
        from PIL import Image

        lab.query_one("#preview", Picture).show(Image.new("RGB", (64, 64), "red"), "final image, seed 0")
        await wait_for(
            pilot,
            lambda: (
                bool(lab.query("#preview .picture-image")) and lab.query_one("#preview .picture-image").region.width
            ),
            20.0,
            "the picture laid out",
        )
        preview = lab.query_one("#preview .picture-image").region
        assert preview.width >= 28 and lab.query_one("#preview .picture-caption").region.bottom <= size[1] - 1
        assert preview.width >= 28 and preview.bottom <= size[1] - 1  # above the footer
        # The busiest panels (tnr-cfg, N prompts) still fit at 80x24, scrolling if they must, never clipped.
        lab.query_one("#guidance", DropDown).value = "tnr-cfg"
        lab.query_one("#weighted").value = True
        names = ("tnr_power", "cfg_rescale", "prompt_scale", "negative_scale", "guidance_sigma_max")
        await wait_for(
            pilot,
            lambda: all(lab.query(f"#{n}") and lab.query_one(f"#{n}").region.width for n in names),
            20.0,
            "the busiest panels laid out",
        )
        for name in names:
            box = lab.query_one(f"#{name}", Input).region
            assert box.width >= 8 and box.right <= controls.region.right, name


def test_first_frame_imports_no_heavy_library(tmp_path: Path) -> None:
    # torch, SQLAlchemy and textual-image load after the first frame (bench/tui_latency.py's own probe).
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "tui_latency.py"
    spec = importlib.util.spec_from_file_location("tui_latency", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
        frame = bench.first_frame(str(tmp_path))  # a fresh interpreter
    finally:
        sys.modules.pop(spec.name, None)
    assert frame.loaded == "-", f"imported before the first frame: {frame.loaded}"
    assert 0 < frame.seconds < 30


async def test_schedule_rho_left_blank_means_each_schedules_own_default(
    tmp_data_dir: Path, tiny_sdxl_dir: Path
) -> None:
    app = make_app(tmp_data_dir, tiny_sdxl_dir)
    async with app.run_test(size=(160, 50)) as pilot:
        lab = app.lab
        lab.query_one("#prompt", RequestField).value = "a red circle"
        lab.query_one("#schedule", DropDown).value = "power"
        # The drop-down's change is a message: wait for it (a fixed pause lost the race on a loaded 2-core host).
        await wait_for(pilot, lambda: lab.query_one("#schedule_rho").display, 10.0, "the rho field shown")
        assert lab.build_request().schedule_rho is None  # the power warp's own rho (1), as in the CLI
        lab.query_one("#schedule_rho", Input).value = "3"
        await wait_for(pilot, lambda: lab.build_request().schedule_rho == 3.0, 10.0, "rho 3 in the request")


def test_the_lab_refuses_an_empty_data_dir(capsys) -> None:
    from tnr_tui.cli import main

    assert main(["--data-dir", ""]) == 2
    assert "--data-dir is empty" in capsys.readouterr().err


async def test_a_blank_scale_is_the_loaded_models_default(
    tmp_data_dir: Path, tiny_sdxl_dir: Path, tmp_path: Path
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_sdxl_dir, model)
    (model / "tnr_lab.json").write_text('{"default_scales": {"cfg": 2.5}}')
    app = make_app(tmp_data_dir, model)
    async with app.run_test(size=(160, 50)) as pilot:
        state = app.lab.query_one("#model-state")
        await wait_for(pilot, lambda: ": loaded" in str(state.content), what="the model")  # not "not loaded"
        scale = app.lab.query_one("#scale", RequestField)
        assert scale.value == "" and scale.placeholder == "2.5 (model)"
        app.lab.query_one("#guidance", DropDown).value = "cfg++"
        await pilot.pause(0.1)
        assert scale.placeholder == "0.8"  # this model names no cfg++ scale: the lab's own default
        app.lab.query_one("#guidance", DropDown).value = "cfg"
        await pilot.press(*"a red circle")
        await set_small(app, steps=1)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.ended, what="the run to end")
        assert app.ended[0].status == "done", app.ended[0].error
    store = open_store(tmp_data_dir)
    assert store.list_runs()[0].request["scale"] == 2.5  # stored resolved: a rerun does not depend on the file


def test_loading_a_model_freezes_the_long_lived_objects_for_the_gc() -> None:
    # A full collection over torch's and the model's objects froze the UI for ~300 ms mid-run (measured).
    import gc
    import weakref

    from tnr_tui.ui.worker import DeviceWorker

    class Model:  # a reference cycle, as torch modules have: only the collector frees it
        def __init__(self) -> None:
            self.me = self

    gc.unfreeze()
    posted: list[Any] = []
    worker = DeviceWorker(posted.append, load_fn=lambda ref, device, dtype: Model())
    try:
        first = weakref.ref(worker._load_model(("model-a", "auto", "auto")))
        assert gc.get_freeze_count() > 0
        assert [m.state for m in posted] == ["loading", "loaded"]
        # switching models frees the frozen previous one (frozen cycles are never collected otherwise)
        assert worker._load_model(("model-b", "auto", "auto")) is not None
        gc.collect()
        assert first() is None
    finally:
        gc.unfreeze()
