"""SVG snapshots of each screen (pytest-textual-snapshot), with a text image protocol forced.

Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update` and review
the SVGs in tests/__snapshots__/.
"""

from __future__ import annotations

from pathlib import Path

from pilot_wait import open_history
from textual.widgets import Input

from tnr_tui.ui.app import TnrLabApp

SIZE = (150, 46)


def make_app(data_dir: Path) -> TnrLabApp:
    # No model load: the Model panel stays "not loaded", so the picture does not depend on timing.
    return TnrLabApp(data_dir=data_dir, model="embedded", image_protocol="unicode", autoload=False)


async def settled(pilot) -> None:
    """Wait for what the app does after its first frame (keymap, image widgets), so pictures are stable."""
    for _ in range(500):
        if pilot.app.deferred_ready:
            break
        await pilot.pause(0.01)
    for field in pilot.app.lab.query(Input):  # a blinking cursor would make the picture depend on timing
        field.cursor_blink = False
    await pilot.pause()


def test_lab_screen(snap_compare, tmp_data_dir: Path) -> None:
    assert snap_compare(
        make_app(tmp_data_dir),
        press=[*"a red [bold]circle[/ on a blue background"],
        run_before=settled,
        terminal_size=SIZE,
    )


def test_lab_screen_tnr_with_weighted_prompts(snap_compare, tmp_data_dir: Path) -> None:
    async def setup(pilot) -> None:
        await settled(pilot)
        lab = pilot.app.lab
        lab.query_one("#guidance").value = "tnr"
        lab.query_one("#weighted").value = True
        lab.query_one("#width").value = "100"  # invalid: the message shows under the field
        for _ in range(200):  # validation runs on the Changed message: wait for its message and colours
            if lab.query_one("#width").error and lab.query_one("#width").has_class("-invalid"):
                break
            await pilot.pause(0.01)
        await pilot.pause(0.05)

    assert snap_compare(make_app(tmp_data_dir), run_before=setup, terminal_size=SIZE)


def test_history_screen(snap_compare, tmp_data_dir: Path) -> None:
    assert snap_compare(make_app(tmp_data_dir), press=["f3"], run_before=settled, terminal_size=SIZE)


def test_compare_screen(snap_compare, tmp_data_dir: Path) -> None:
    assert snap_compare(make_app(tmp_data_dir), press=["f4", *"a red circle"], run_before=settled, terminal_size=SIZE)


def test_export_dialog(snap_compare, tmp_data_dir: Path) -> None:
    from sqlalchemy import text

    from engine.request import GenerationRequest
    from tnr_tui.services.history import open_store

    store = open_store(tmp_data_dir)
    store.create_run(GenerationRequest(prompt="p"), status="queued", run_id="01ARZ3NDEKTSV4RRFFQ69G5FAV")
    with store.engine.begin() as connection:  # a fixed date, so the picture does not change with the clock
        connection.execute(text("UPDATE runs SET created_at = '2025-01-02 03:04:05.000000'"))

    async def setup(pilot) -> None:
        await settled(pilot)
        await open_history(pilot)
        pilot.app.screen.action_export()
        await pilot.pause()
        pilot.app.screen.query_one("#export-path").value = "/tmp/run.png"
        await pilot.pause()

    assert snap_compare(make_app(tmp_data_dir), run_before=setup, terminal_size=SIZE)


def test_lab_screen_at_80x24(snap_compare, tmp_data_dir: Path) -> None:
    # The usual SSH default: compact panels (titled rules), two fields a line, the preview beside them.
    async def setup(pilot) -> None:
        await settled(pilot)
        pilot.app.lab.query_one("#guidance").value = "tnr-cfg"
        await pilot.pause()

    assert snap_compare(make_app(tmp_data_dir), press=[*"a red circle"], run_before=setup, terminal_size=(80, 24))


def test_compare_screen_at_80x24(snap_compare, tmp_data_dir: Path) -> None:
    assert snap_compare(
        make_app(tmp_data_dir), press=["f4", *"a red circle"], run_before=settled, terminal_size=(80, 24)
    )


class _Bundle:
    name, device, dtype = "fake", "cpu", "float32"


def _fake_run_app(data_dir: Path) -> TnrLabApp:
    from tui_runs import fake_run_fn

    return TnrLabApp(
        data_dir=data_dir,
        model="embedded",
        image_protocol="unicode",
        autoload=False,
        load_fn=lambda *a: _Bundle(),
        run_fn=fake_run_fn(),
    )


async def _after_a_fixed_run(pilot, steps: int = 24, guidance: str = "tnr-cfg") -> None:
    """A finished run of fixed telemetry rows (tests/tui_runs.py), its timings hidden."""
    await settled(pilot)
    app = pilot.app
    app.lab.query_one("#steps").value = str(steps)
    app.lab.query_one("#guidance").value = guidance
    await pilot.pause()
    app.lab.action_run()
    for _ in range(1000):
        if app.ended:
            break
        await pilot.pause(0.01)
    assert app.ended and app.ended[0].status == "done"
    await pilot.pause(0.05)
    # The model's load time is in its line: the one number of the screen that depends on the clock.
    app.lab.query_one("#model-state").update("embedded: loaded (fake cpu float32)")
    await pilot.pause()


def test_lab_live_plot(snap_compare, tmp_data_dir: Path) -> None:
    # The plot of the run's telemetry beside the preview: S (TNR) over the 24 steps of a tnr-cfg run.
    async def setup(pilot) -> None:
        await _after_a_fixed_run(pilot)
        pilot.app.lab.query_one("#plot-series").value = "tnr_factor"
        await pilot.pause(0.05)

    assert snap_compare(_fake_run_app(tmp_data_dir), run_before=setup, terminal_size=SIZE)


def test_lab_live_plot_at_80x24(snap_compare, tmp_data_dir: Path) -> None:
    # 80x24: the plot instead of the picture (ctrl+t), x0 change on its log axis.
    async def setup(pilot) -> None:
        await _after_a_fixed_run(pilot)
        pilot.app.lab.query_one("#plot-series").value = "x0_change"
        await pilot.press("ctrl+t")
        await pilot.pause(0.05)

    assert snap_compare(_fake_run_app(tmp_data_dir), run_before=setup, terminal_size=(80, 24))


def _two_fixed_runs(data_dir: Path) -> tuple[str, str]:
    from tui_runs import record_run

    from tnr_tui.services.history import open_store

    store = open_store(data_dir)
    cfg = record_run(store, steps=20, guidance="cfg", run_id="01ARZ3NDEKTSV4RRFFQ69G5FA1", decode_every=5)
    tnr = record_run(store, steps=12, guidance="tnr-cfg", hue=200, run_id="01ARZ3NDEKTSV4RRFFQ69G5FA2")
    store.close()
    return cfg, tnr


def test_trajectory_view(snap_compare, tmp_data_dir: Path) -> None:
    # A stored run scrubbed back to step 14 of 20: its frame, the row's numbers, the plot's cursor.
    cfg, _ = _two_fixed_runs(tmp_data_dir)

    async def setup(pilot) -> None:
        from tnr_tui.ui.screens.trajectory import TrajectoryScreen

        await settled(pilot)
        app = pilot.app
        screen = TrajectoryScreen(cfg)
        await app.push_screen(screen)
        for _ in range(500):
            if screen.trajectory is not None:
                break
            await pilot.pause(0.01)
        await pilot.press(*["left"] * 6)
        await pilot.pause(0.05)

    assert snap_compare(make_app(tmp_data_dir), run_before=setup, terminal_size=SIZE)


def test_pair_view(snap_compare, tmp_data_dir: Path) -> None:
    # cfg (20 steps) and tnr-cfg (12 steps) on one seed, aligned by sigma, x0 change of both over sigma.
    cfg, tnr = _two_fixed_runs(tmp_data_dir)

    async def setup(pilot) -> None:
        from tnr_tui.ui.screens.pair import PairScreen

        await settled(pilot)
        screen = PairScreen(cfg, tnr)
        await pilot.app.push_screen(screen)
        for _ in range(500):
            if screen.a is not None:
                break
            await pilot.pause(0.01)
        screen.query_one("#pair-series").value = "x0_change"
        await pilot.press(*["left"] * 8)
        await pilot.pause(0.05)

    assert snap_compare(make_app(tmp_data_dir), run_before=setup, terminal_size=SIZE)
