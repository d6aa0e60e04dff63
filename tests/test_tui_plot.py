"""The braille line plot (tnr_tui.ui.widgets.plot), the telemetry series it draws, and the Lab's live plot.

No model: the app runs a fake run function that emits fixed telemetry rows (tests/tui_runs.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from pilot_wait import waiter
from tui_runs import FakeEvent, fake_rows, fake_run_fn

from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.choice import Choice
from tnr_tui.ui.widgets.plot import LinePlot, PlotSpec, Series, draw, format_number
from tnr_tui.ui.widgets.telemetry import BY_KEY, choices_for, row_items, series_of
from tnr_tui.ui.worker import DeviceWorker, RunProgress

BRAILLE = range(0x2800, 0x2900)


def dots(line: str) -> list[int]:
    """The columns of a text line that hold a braille cell with dots."""
    return [k for k, ch in enumerate(line) if ord(ch) in BRAILLE and ord(ch) != 0x2800]


# ---- the drawing (pure) -------------------------------------------------------------------------------


def test_a_rising_line_goes_from_the_bottom_left_to_the_top_right() -> None:
    spec = PlotSpec((Series("up", [(0, 0.0), (10, 1.0)]),))
    drawn = draw(spec, 30, 8).text()
    assert len(drawn) == 8 and all(len(line) == 30 for line in drawn)
    assert drawn[0].startswith("━ up")  # the legend
    plot_rows = drawn[1:-1]
    top, bottom = dots(plot_rows[0]), dots(plot_rows[-1])
    assert top and bottom and min(top) > max(bottom)  # high values to the right
    assert plot_rows[0].lstrip().startswith("1┤") and plot_rows[-1].lstrip().startswith("0┤")
    assert drawn[-1].split() == ["0", "10"]  # the x range's ends


def test_the_drawing_uses_every_column_and_row_of_its_area() -> None:
    spec = PlotSpec((Series("up", [(0, 0.0), (10, 1.0)]),), legend=False)
    drawn = draw(spec, 30, 8).text()
    columns = sorted({k for line in drawn[:-1] for k in dots(line)})
    margin = drawn[0].index("┤") + 1
    assert columns == list(range(margin, 30))  # a diagonal crosses every cell column once at least
    assert all(dots(line) for line in drawn[:-1])


def test_a_missing_value_breaks_the_line() -> None:
    gap = [(float(i), None if 4 <= i <= 6 else 1.0) for i in range(11)]
    drawn = draw(PlotSpec((Series("flat", gap),), legend=False), 32, 5).text()
    flat_row = next(line for line in drawn if dots(line))
    columns = dots(flat_row)
    assert len(columns) < 32 - flat_row.index("┤") - 1  # some columns stay empty: the gap
    holes = [c for c in range(columns[0], columns[-1]) if c not in columns]
    assert holes, flat_row


def test_log_axis_labels_are_the_values_not_their_logarithms() -> None:
    spec = PlotSpec((Series("decay", [(i, 10.0**-i) for i in range(4)]),), log_y=True, legend=False)
    drawn = draw(spec, 30, 9).text()
    labels = [line.split("┤")[0].strip() for line in drawn if "┤" in line]
    assert labels == ["1", "0.0316", "0.001"]  # 10^0, 10^-1.5, 10^-3
    # equal ratios are equal distances: the four points climb by the same number of rows
    rows = [r for r, line in enumerate(drawn[:-1]) if dots(line)]
    assert rows[0] == 0 and rows[-1] == len(drawn) - 2


def test_reversed_x_puts_large_sigma_on_the_left() -> None:
    points = [(14.6, 1.0), (0.03, 0.0)]
    spec = PlotSpec((Series("s", points),), log_x=True, reverse_x=True, legend=False)
    drawn = draw(spec, 30, 6).text()
    assert drawn[-1].split() == ["14.6", "0.03"]
    assert min(dots(drawn[0])) < min(dots(drawn[-2]))  # y = 1 (sigma 14.6) on the left, top row


def test_the_cursor_is_a_highlighted_column() -> None:
    spec = PlotSpec((Series("s", [(i, float(i % 3)) for i in range(20)]),), cursor=10, legend=False)
    drawn = draw(spec, 40, 6)
    for line in drawn.lines[:-1]:
        at = 0
        cursor_columns = []
        for text, style in line:
            if "plot--cursor" in style.split():
                cursor_columns += list(range(at, at + len(text)))
            at += len(text)
        assert len(cursor_columns) == 1
    moved = draw(PlotSpec(spec.series, cursor=15, legend=False), 40, 6)
    assert moved.text() == drawn.text()  # the characters stay; only the highlight moves
    assert moved.lines != drawn.lines


def test_no_data_shows_the_empty_text() -> None:
    drawn = draw(PlotSpec((Series("s", [(0, None), (1, None)]),)), 40, 6, empty="nothing to plot").text()
    assert drawn[0].rstrip() == "nothing to plot" and not any(dots(line) for line in drawn)


def test_tick_labels_are_short() -> None:
    assert [format_number(v) for v in (0.0, 1.0, 0.0123456, 1.5e-5, 123456.0, -2.5)] == [
        "0",
        "1",
        "0.0123",
        "1.5e-5",
        "1.23e5",
        "-2.5",
    ]


# ---- the telemetry series -----------------------------------------------------------------------------


def test_series_take_their_values_from_the_rows_columns() -> None:
    rows = fake_rows(5).as_dicts()
    (ratio,) = series_of(rows, BY_KEY["diff_ratio"], x="step")
    assert [x for x, _ in ratio.points] == [1, 2, 3, 4, 5]
    assert [y for _, y in ratio.points] == [r["diff_ratio"] for r in rows]
    norms = series_of(rows, BY_KEY["norms"], x="sigma")
    assert [s.label for s in norms] == ["‖c‖", "‖u‖", "‖c−u‖"]
    assert [x for x, _ in norms[2].points] == [r["sigma"] for r in rows]
    (change,) = series_of(rows, BY_KEY["x0_change"])
    assert change.points[0][1] is None  # no change at step 0


def test_a_units_extra_column_is_offered_and_shown() -> None:
    keys = [c.key for c in choices_for([*fake_rows(2).columns, "apg_parallel"])]
    assert keys[: len(BY_KEY)] == list(BY_KEY) and keys[len(BY_KEY) :] == ["apg_parallel"]
    row = dict(fake_rows(2).row(1), apg_parallel=3.25)
    items = dict(row_items(row))
    assert items["σ"] == format_number(row["sigma"]) and items["apg parallel"] == "3.25"
    assert items["S"] == "–"  # no TNR: no factor


# ---- the worker forwards every row, however the messages coalesce --------------------------------------


def test_progress_messages_carry_every_row_so_far() -> None:
    posted: list[Any] = []
    worker = DeviceWorker(posted.append)
    table, other = fake_rows(6), fake_rows(6, guidance="tnr-cfg", tnr=True)
    for i, (row, row_b) in enumerate(zip(table.as_dicts(), other.as_dicts(), strict=True)):
        # two jobs of one batch, their steps interleaved as a batch's events are
        for job_id, r in ((1, row), (2, row_b)):
            event = FakeEvent(i, 6, r["sigma"], r["sigma_next"], None, 2 * (i + 1), 0.1 * i, rows=[r])
            worker._on_step(job_id, event, [time.monotonic()])
    progress = [m for m in posted if isinstance(m, RunProgress) and m.job_id == 1]
    assert [len(m.rows) for m in progress] == [1, 2, 3, 4, 5, 6]
    # The last one replaces any queued older one and still holds all six rows.
    assert progress[-1].can_replace(progress[2]) and list(progress[-1].rows) == table.as_dicts()
    last_b = [m for m in posted if isinstance(m, RunProgress) and m.job_id == 2][-1]
    assert list(last_b.rows) == other.as_dicts() and not last_b.can_replace(progress[-1])
    # A job's step 0 starts its list anew.
    worker._on_step(1, FakeEvent(0, 6, 1.0, 0.5, None, 2, 0.0, rows=[table.row(0)]), [0.0])
    assert len([m for m in posted if isinstance(m, RunProgress) and m.job_id == 1][-1].rows) == 1


# ---- the Lab's live plot ------------------------------------------------------------------------------


class Bundle:
    name, device, dtype = "fake", "cpu", "float32"


def lab_app(data_dir: Path, run_fn: Any) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", load_fn=lambda *a: Bundle(), run_fn=run_fn)


wait_for = waiter(timeout=20.0, poll=0.02)


async def test_the_live_plot_draws_the_rows_as_the_run_samples(tmp_data_dir: Path) -> None:
    held = threading.Event()
    release = threading.Event()

    def gate(i: int) -> None:  # hold the run after its fourth step
        if i == 4:
            held.set()
            release.wait(20)

    app = lab_app(tmp_data_dir, fake_run_fn(gate=gate))
    async with app.run_test(size=(150, 46)) as pilot:
        lab = app.lab
        lab.query_one("#steps").value = "10"
        await pilot.press("ctrl+r")
        plot = lab.query_one("#live-plot", LinePlot)
        await wait_for(pilot, lambda: held.is_set() and len(lab.plot_rows) == 4, what="four steps")
        await pilot.pause(0.05)
        (series,) = plot.spec.series
        assert [x for x, _ in series.points] == [1, 2, 3, 4]  # steps so far, on an axis of all ten
        assert plot.spec.x_range == (1.0, 10.0)
        assert [y for _, y in series.points] == [r["diff_ratio"] for r in fake_rows(10).as_dicts()[:4]]
        partial = plot.text()
        release.set()
        await wait_for(pilot, lambda: app.ended, what="the run to end")
        await pilot.pause(0.05)
        assert len(plot.spec.series[0].points) == 10
        assert plot.text() != partial
        assert plot.text()[-1].split() == ["1", "step", "10"]

        # Another series from the drop-down redraws from the same rows.
        async def choose(key: str) -> None:
            lab.query_one("#plot-series", Choice).value = key
            expected = [s.label for s in series_of(lab.plot_rows, BY_KEY[key])]
            await wait_for(pilot, lambda: [s.label for s in plot.spec.series] == expected, what=key)

        await choose("x0_change")
        assert plot.spec.log_y and plot.spec.series[0].points[0][1] is None
        await choose("norms")
        assert len(plot.spec.series) == 3 and plot.text()[0].startswith("━ ‖c‖")
        await choose("tnr_factor")
        assert plot.text()[0].startswith("S (TNR): none in this run")  # cfg: no TNR factor


async def test_the_plot_redraws_only_when_its_data_changes(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir, fake_run_fn())
    async with app.run_test(size=(150, 46)) as pilot:
        lab = app.lab
        lab.query_one("#steps").value = "6"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.ended, what="the run to end")
        await pilot.pause(0.1)
        plot = lab.query_one("#live-plot", LinePlot)
        draws = plot.draws
        for _ in range(5):
            plot.refresh()
            await pilot.pause(0.02)
        assert plot.draws == draws  # repaints reuse the drawn lines


async def test_ctrl_t_swaps_picture_and_plot_on_a_small_terminal(tmp_data_dir: Path) -> None:
    app = lab_app(tmp_data_dir, fake_run_fn())
    async with app.run_test(size=(80, 24)) as pilot:
        lab = app.lab
        box, picture = lab.query_one("#live-plot-box"), lab.query_one("#preview")
        await pilot.pause(0.1)
        assert picture.display and not box.display and "ctrl+t plot" in lab.query_one("#panel-preview").border_title
        await pilot.press("ctrl+t")
        await pilot.pause(0.05)
        assert box.display and not picture.display
        assert lab.query_one("#live-plot").size.height >= 10
        await pilot.press("ctrl+t")
        await pilot.pause(0.05)
        assert picture.display and not box.display
