"""--data-dir naming a file: every command says so in the same words. `history list` said "the data directory
X is not a directory"; `generate` said "cannot create the data directory X/outputs: File exists"."""

from __future__ import annotations

import pytest

from tnr_tui.cli import main


@pytest.mark.parametrize("command", [["history", "list"], ["history", "import-png", "none.png"]])
def test_a_data_dir_that_is_a_file_is_said_so(tmp_path, capsys, command: list[str]) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("mine")
    assert main(["--data-dir", str(not_a_dir), *command]) == 2
    err = capsys.readouterr().err
    assert err == f"tnr-lab: error: the data directory {not_a_dir} is not a directory\n", err
    assert not_a_dir.read_text() == "mine"
