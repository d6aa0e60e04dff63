"""A value PostgreSQL cannot store (a NUL in a text) is said as that, not as a history it cannot reach.

Found by the hostile pass of issue 10: `history import` of a JSONL record, or `history import-png` of a PNG
whose parameters text holds a NUL, said "cannot reach the history postgresql://...: PostgreSQL text fields
cannot contain NUL (0x00) bytes" while the server was there all along. Nothing is imported either way.
"""

from __future__ import annotations

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tnr_tui.services.history import HistoryError, open_store
from tnr_tui.services.history.transfer import import_png

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'tnr-lab[postgres]')")


@pytest.fixture
def server(pg_server):
    return pg_server  # the session's one server (tests/conftest.py)


@pytest.fixture
def url(pg_url) -> str:
    return pg_url


def test_a_nul_in_a_prompt_is_a_value_it_cannot_store(url, tmp_path):
    store = open_store(tmp_path / "home", url=url)
    with pytest.raises(HistoryError) as caught:
        store.create_run({"prompt": "a\x00b", "solver": "euler", "guidance": "cfg", "steps": 2})
    message = str(caught.value)
    assert "cannot store this value" in message and "NUL" in message
    assert "cannot reach" not in message
    assert store.count_runs() == 0


def test_import_png_with_a_nul_in_its_text_leaves_no_file(url, tmp_path):
    png = tmp_path / "nul.png"
    info = PngInfo()
    info.add_text("parameters", "a\x00b\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64")
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    store = open_store(tmp_path / "home", url=url)
    with pytest.raises(HistoryError, match="cannot store this value"):
        import_png(store, png)
    assert store.count_runs() == 0
    assert not [p for p in store.outputs_dir.rglob("*") if p.is_file()]
