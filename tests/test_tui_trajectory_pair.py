"""Two runs side by side (History: c, then c on another run): alignment by sigma, frames and plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pilot_wait import waiter
from textual.widgets import DataTable
from tui_runs import fake_rows, karras_sigmas, record_run, step_colour

from tnr_tui.services.history import open_store
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.screens.pair import PairScreen, align_by_position, align_by_sigma


def nearest_by_brute_force(sigma: float, others: list[float]) -> int:
    distances = [abs(math.log(sigma) - math.log(s)) for s in others]
    return distances.index(min(distances))


def test_each_step_is_matched_with_the_nearest_sigma_in_log_sigma() -> None:
    a = karras_sigmas(20)
    b = karras_sigmas(12)
    aligned = align_by_sigma(a, b)
    assert aligned == [nearest_by_brute_force(s, b) for s in a]
    assert aligned[0] == 0 and aligned[-1] == 11  # the grids share their ends
    assert aligned == sorted(aligned)  # both fall: the match never goes back
    # Log sigma, not sigma: from 1.0, 1.5 is nearer (log distance 0.41) than 0.6 (0.51), though 0.6 is
    # nearer in sigma (0.4 against 0.5); 2.0 and 0.5 are equally near (a ratio of 2): the first wins.
    assert align_by_sigma([1.0], [1.5, 0.6]) == [0]
    assert align_by_sigma([1.0], [0.6, 1.5]) == [1]
    assert align_by_sigma([1.0], [2.0, 0.5]) == [0]


def test_the_same_grid_aligns_step_for_step() -> None:
    a = karras_sigmas(15)
    assert align_by_sigma(a, list(a)) == list(range(15))


@pytest.mark.parametrize(
    ("sigmas_a", "sigmas_b", "expected"),
    [
        ([1.0, None, 0.1], [1.0, 0.1], [0, None, 1]),  # a missing sigma has no match
        ([1.0, 0.5], [None, None], [None, None]),  # B has no sigma at all
        ([1.0, 0.0], [1.0, 0.5, 0.0], [0, 2]),  # a sigma of 0 matches only the other run's 0
        ([0.0], [1.0, 0.5], [None]),
        ([2.0], [4.0, 1.0], [0]),  # a tie goes to B's earlier step
        ([float("nan"), 1.0], [1.0], [None, 0]),
    ],
)
def test_missing_and_end_sigmas(sigmas_a: list, sigmas_b: list, expected: list) -> None:
    assert align_by_sigma(sigmas_a, sigmas_b) == expected


def test_without_sigmas_runs_align_by_their_position() -> None:
    assert align_by_position(5, 9) == [0, 2, 4, 6, 8]
    assert align_by_position(3, 0) == [None, None, None]
    assert align_by_position(1, 4) == [3]


wait_for = waiter(timeout=20.0, poll=0.02)


async def test_the_pair_view_shows_b_at_the_nearest_sigma(tmp_data_dir: Path) -> None:
    store = open_store(tmp_data_dir)
    cfg = record_run(store, steps=20, guidance="cfg", hue=0)
    tnr = record_run(store, steps=12, guidance="tnr-cfg", hue=200)
    store.close()
    sigmas_cfg, sigmas_tnr = karras_sigmas(20), karras_sigmas(12)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        await pilot.press("f3")
        history = app.history_screen
        table = history.query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, what="the runs")
        table.move_cursor(row=table.get_row_index(cfg))
        await pilot.pause(0.05)
        await pilot.press("c")  # mark A
        await pilot.pause(0.05)
        assert history.marked == cfg
        assert str(history.query_one("#run-params").content).startswith("marked for a pair")
        table.move_cursor(row=table.get_row_index(tnr))
        await pilot.pause(0.05)
        await pilot.press("c")  # B: open the pair
        await wait_for(pilot, lambda: isinstance(app.screen, PairScreen), what="the pair screen")
        screen = app.screen
        await wait_for(pilot, lambda: screen.a is not None, what="the runs to load")
        await pilot.pause(0.05)
        assert screen.by_sigma and screen.index == 19 and screen.b_index() == 11
        plot = screen.query_one("#pair-plot")
        assert [s.label for s in plot.spec.series] == ["A ‖c−u‖ / ‖u‖", "B ‖c−u‖ / ‖u‖"]
        assert plot.spec.log_x and plot.spec.reverse_x  # over sigma, falling to the right
        assert [x for x, _ in plot.spec.series[1].points] == sigmas_tnr
        for _ in range(7):
            await pilot.press("left")
        await pilot.pause(0.05)
        i = 12
        j = nearest_by_brute_force(sigmas_cfg[i], sigmas_tnr)
        assert screen.index == i and screen.b_index() == j and plot.spec.cursor == sigmas_cfg[i]
        frame_b = screen.query_one("#pair-frame-b").pil_image
        assert frame_b.getpixel((frame_b.width - 1, frame_b.height - 1)) == step_colour(j, 200)
        frame_a = screen.query_one("#pair-frame-a").pil_image
        assert frame_a.getpixel((frame_a.width - 1, frame_a.height - 1)) == step_colour(i, 0)
        table_text = str(screen.query_one("#pair-numbers").content).splitlines()
        assert table_text[1].split() == ["step", f"{i + 1}/20", f"{j + 1}/12"]
        ratio = next(line for line in table_text if line.startswith("‖c−u‖/‖u‖"))
        expected = (fake_rows(20).row(i)["diff_ratio"], fake_rows(12, guidance="tnr-cfg").row(j)["diff_ratio"])
        assert ratio.split()[1:] == [f"{v:.3g}" for v in expected]
        await pilot.press("s")  # swap: B's run drives
        await pilot.pause(0.05)
        assert screen.run_ids == (tnr, cfg) and screen.index == 11 and screen.b_index() == 19
