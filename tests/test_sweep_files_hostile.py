"""The sweep's own files under faults (issue 10 hostile pass): a SIGTERM while a contact sheet or the CSV is
written left `sheet-...png.tmp.png` beside the sheets; an image that is no longer an image ended the sweep,
after every cell was sampled and recorded, with a PIL traceback while drawing the sheet."""

from __future__ import annotations

import pytest
from PIL import Image

from tnr_tui.services.sweep import sheets, table


def interrupted_replace(*args, **kwargs):
    raise KeyboardInterrupt  # what the CLI's SIGTERM handler raises (tnr_tui.cli.Terminated)


def test_an_interrupted_sheet_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sheets.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        sheets.draw_sheet("p", ["cfg"], [1], {}, tmp_path / "sheet.png")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_csv_keeps_the_old_one_and_leaves_no_temp_file(tmp_path, monkeypatch):
    csv_path = tmp_path / "sweep.csv"
    csv_path.write_text("old\n")
    monkeypatch.setattr(table.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        table.write_rows(csv_path, [{"key": "a"}])
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]
    assert csv_path.read_text() == "old\n"


def test_an_unreadable_or_missing_image_is_a_gap_in_the_sheet(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_text("not a png")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    images = {
        ("cfg", 1): garbage,
        ("cfg", 2): truncated,
        ("cfg", 3): tmp_path / "gone.png",
        ("cfg", 4): tmp_path / "whole.png",
    }
    out = tmp_path / "sheet.png"
    sheets.draw_sheet("p", ["cfg"], [1, 2, 3, 4], images, out)
    with Image.open(out) as im:
        assert im.size[0] > 4 * sheets.THUMB
