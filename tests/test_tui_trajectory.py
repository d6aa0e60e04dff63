"""The History's trajectory view (t): scrubbing a stored run's steps, its frames, numbers and plot cursor.

Runs are recorded with fixed rows and synthetic frames whose colour encodes the step (tests/tui_runs.py);
no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pilot_wait import waiter
from textual.widgets import DataTable
from tui_runs import fake_rows, record_run, step_colour, stored_run_path

from engine.request import GenerationRequest
from tnr_tui.services.history import open_store
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.screens.trajectory import TrajectoryScreen, numbers_text
from tnr_tui.ui.widgets.plot import format_number

wait_for = waiter(timeout=20.0, poll=0.02)


def history_app(data_dir: Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", autoload=False)


async def open_trajectory(pilot: Any, run_id: str) -> TrajectoryScreen:
    app = pilot.app
    await pilot.press("f3")
    await wait_for(pilot, lambda: app.history_screen.query_one("#runs", DataTable).row_count > 0, what="the runs")
    table = app.history_screen.query_one("#runs", DataTable)
    table.move_cursor(row=table.get_row_index(run_id))
    await pilot.pause(0.05)
    await pilot.press("t")
    await wait_for(pilot, lambda: isinstance(app.screen, TrajectoryScreen), what="the trajectory screen")
    screen = app.screen
    await wait_for(pilot, lambda: screen.trajectory is not None, what="the trajectory to load")
    await pilot.pause(0.05)
    return screen


def shown_colour(screen: TrajectoryScreen) -> tuple[int, int, int] | None:
    image = screen.query_one("#traj-frame").pil_image
    return None if image is None else image.getpixel((image.width - 1, image.height - 1))


def numbers(screen: TrajectoryScreen) -> str:
    return str(screen.query_one("#traj-numbers").content)


async def test_left_and_right_scrub_the_frame_the_numbers_and_the_cursor(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    run_id = record_run(store, steps=12)
    rows = fake_rows(12).as_dicts()
    store.close()
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        screen = await open_trajectory(pilot, run_id)
        plot = screen.query_one("#traj-plot")
        # It opens at the last step: the final frame, the last row, the cursor at the right end.
        assert screen.index == 11 and shown_colour(screen) == step_colour(11)
        assert numbers(screen).startswith("step 12/12") and plot.spec.cursor == 12.0
        await pilot.press("left", "left", "left")
        await pilot.pause(0.05)
        assert screen.index == 8 and shown_colour(screen) == step_colour(8)
        text = numbers(screen)
        assert text.startswith("step 9/12") and format_number(rows[8]["sigma"]) in text
        assert format_number(rows[8]["diff_ratio"]) in text and format_number(rows[11]["sigma"]) not in text
        assert plot.spec.cursor == 9.0
        assert "latent preview, step 9" in str(screen.query_one("#traj-frame .picture-caption").content)
        cursor_text = plot.text()
        await pilot.press("right")
        await pilot.pause(0.05)
        assert screen.index == 9 and shown_colour(screen) == step_colour(9) and plot.spec.cursor == 10.0
        assert [len(s.points) for s in plot.spec.series] == [12]  # the whole run, only the cursor moved
        assert plot.text() == cursor_text  # same characters: the highlight moved
        await pilot.press("home")
        await pilot.pause(0.05)
        assert screen.index == 0 and numbers(screen).startswith("step 1/12") and shown_colour(screen) == step_colour(0)
        await pilot.press("left")  # stays at the first step
        await pilot.pause(0.05)
        assert screen.index == 0
        await pilot.press("end")
        await pilot.pause(0.05)
        assert screen.index == 11
        await pilot.press("escape")
        await pilot.pause(0.05)
        assert app.screen is app.history_screen


async def test_decoded_frames_are_kept_every_few_steps(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    run_id = record_run(store, steps=10, decode_every=4)  # decoded at steps 4, 8 and 10
    store.close()
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        screen = await open_trajectory(pilot, run_id)
        assert screen.trajectory.kinds() == ["frames", "decoded_frames"]
        await pilot.press("d")
        await pilot.pause(0.05)
        caption = screen.query_one("#traj-frame .picture-caption")
        assert screen.kind == "decoded_frames" and str(caption.content) == "decoded, step 10"
        assert screen.query_one("#traj-frame").pil_image.size == (32, 32)  # decoded frames are full size
        for _ in range(4):
            await pilot.press("left")
        await pilot.pause(0.05)
        assert str(caption.content) == "decoded, step 6 (kept at step 4)"
        assert shown_colour(screen) == step_colour(3, 100)
        await pilot.press("home")
        await pilot.pause(0.05)
        assert screen.query_one("#traj-frame").pil_image is None
        assert str(caption.content) == "no decoded frame yet (the first is at step 4)"
        await pilot.press("d")  # back to the latent previews
        await pilot.pause(0.05)
        assert screen.kind == "frames" and shown_colour(screen) == step_colour(0)


async def test_a_run_without_frames_or_rows_says_so(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    bare = record_run(store, steps=6, frames=False, telemetry=False)
    rows_only = record_run(store, steps=6, frames=False)
    store.close()
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        screen = await open_trajectory(pilot, bare)
        title = str(screen.query_one("#traj-title").content)
        assert "no telemetry rows" in title
        caption = str(screen.query_one("#traj-frame .picture-caption").content)
        assert caption == "no frames: this run did not keep them (keep_frames off)"
        assert screen.trajectory.steps == 6  # from the run's request
        assert numbers(screen) == "step 6/6\n(no telemetry row)"

        assert screen.query_one("#traj-plot").text()[0].startswith("no telemetry rows for this run")
        await pilot.press("escape")
        screen = await open_trajectory(pilot, rows_only)
        assert "no telemetry rows" not in str(screen.query_one("#traj-title").content)
        assert numbers(screen).startswith("step 6/6\nσ")
        await pilot.press("left")
        await pilot.pause(0.05)
        assert screen.index == 4 and screen.query_one("#traj-plot").spec.cursor == 5.0


async def test_a_damaged_frames_file_is_a_line_not_a_crash(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    run_id = record_run(store, steps=5)
    path = stored_run_path(store, run_id, "frames")
    store.close()
    path.write_bytes(b"not an animated png" * 10)
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        screen = await open_trajectory(pilot, run_id)
        title = str(screen.query_one("#traj-title").content)
        assert "not a readable frames file" in title and str(path) in title
        assert numbers(screen).startswith("step 5/5")  # the rows still show
        assert screen.query_one("#traj-frame").pil_image is None


def test_numbers_fill_columns_of_the_height_they_have() -> None:
    items = [(f"n{k}", str(k)) for k in range(7)]
    text = numbers_text(items, 3, label_width=3).splitlines()
    assert len(text) == 3
    assert text[0].split() == ["n0", "0", "n3", "3", "n6", "6"] and text[2].split() == ["n2", "2", "n5", "5"]


def test_numbers_take_no_more_columns_than_the_width_holds() -> None:
    # A column is label (3) + space + value (1) = 5 cells, 3 between columns: 13 cells hold two, not three.
    items = [(f"n{k}", str(k)) for k in range(7)]
    text = numbers_text(items, 3, label_width=3, room=13).splitlines()
    assert len(text) == 4 and max(len(line) for line in text) <= 13  # longer columns, no wrapped line
    assert text[0].split() == ["n0", "0", "n4", "4"] and text[3].split() == ["n3", "3"]
    assert numbers_text(items, 3, label_width=3, room=100) == numbers_text(items, 3, label_width=3)


async def test_a_lab_run_keeps_its_trajectory_for_the_history(tmp_data_dir: Path, tiny_sdxl_dir: Path) -> None:
    # The real path: the Lab's run (keep_frames on) on the tiny model, then History, t: its own rows and frames.
    from textual.widgets import Input

    app = TnrLabApp(data_dir=tmp_data_dir, model=str(tiny_sdxl_dir), image_protocol="halfcell")
    async with app.run_test(size=(150, 46)) as pilot:
        lab = app.lab
        for name, value in (("steps", "4"), ("width", "64"), ("height", "64"), ("decode_every", "2")):
            lab.query_one(f"#{name}", Input).value = value
        await pilot.pause(0.05)
        assert lab.build_request().keep_frames
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.ended, timeout=120, what="the run")
        assert app.ended[0].status == "done", app.ended[0].error
        run_id = app.ended[0].run_id
        assert len(lab.plot_rows) == 4  # the live plot had every step's row
        screen = await open_trajectory(pilot, run_id)
        trajectory = screen.trajectory
        stored = app.store.run_steps(run_id)
        assert [r["sigma"] for r in trajectory.rows] == stored.column("sigma") == [r["sigma"] for r in lab.plot_rows]
        assert trajectory.kinds() == ["frames", "decoded_frames"] and trajectory.steps == 4
        last = screen.query_one("#traj-frame").pil_image.copy()
        await pilot.press("home")
        await pilot.pause(0.05)
        first = screen.query_one("#traj-frame").pil_image
        assert first.size == last.size and first.tobytes() != last.tobytes()  # step 1's estimate is not the end's
        assert numbers(screen).startswith("step 1/4") and format_number(stored.row(0)["sigma"]) in numbers(screen)


async def test_a_failed_run_that_asked_for_frames_says_it_ended_before_any(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    failed = store.create_run(GenerationRequest("a red circle", steps=20, keep_frames=True))
    store.finish_run(failed, "failed", error="out of memory")
    store.close()
    app = history_app(tmp_data_dir)
    async with app.run_test(size=(150, 46)) as pilot:
        screen = await open_trajectory(pilot, failed)
        caption = str(screen.query_one("#traj-frame .picture-caption").content)
        assert caption == "no frames: the run failed before it kept any"
        assert screen.trajectory.steps == 0 and numbers(screen).startswith("no steps")  # not "step 20/20"
