"""Export and import messages when the file or the place is wrong.

- A zip cut short (a copy that stopped, `head -c`) was called "neither a zip nor a UTF-8 JSONL file (line 1 is
  not UTF-8)": it is a damaged zip, and the message says so.
- `history export --out /read-only/x.jsonl` printed the export's temporary name
  (".x.jsonl.PID.tmp: Read-only file system"): removing the temporary file that was never made failed too
  (EROFS, not ENOENT) and that error replaced the export's own one-line message.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tnr_tui.cli import main
from tnr_tui.services.history import HistoryError, open_store, transfer
from tnr_tui.services.history.transfer import export_runs, import_runs


def _one_run_zip(tmp_path: Path) -> Path:
    src = open_store(tmp_path / "src")
    try:
        run_id = src.create_run({"prompt": "a circle", "solver": "euler", "guidance": "cfg", "steps": 2, "tags": {}})
        src.finish_run(run_id, "done")
        out = tmp_path / "runs.zip"
        export_runs(src, "zip", out)
    finally:
        src.close()
    return out


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_zip_is_called_a_damaged_zip(tmp_path: Path, keep: float) -> None:
    whole = _one_run_zip(tmp_path).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: int(len(whole) * keep)])
    dst = open_store(tmp_path / "dst")
    try:
        with pytest.raises(HistoryError, match="damaged or cut short") as info:
            import_runs(dst, cut)
        assert "UTF-8" not in str(info.value)
        assert dst.list_runs() == []
    finally:
        dst.close()


def test_export_to_a_read_only_place_names_the_users_file(tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "home"
    store = open_store(home)
    store.finish_run(store.create_run({"prompt": "a", "solver": "euler", "guidance": "cfg", "steps": 2}), "done")
    store.close()
    out = tmp_path / "ro" / "x.jsonl"
    out.parent.mkdir()

    def read_only(store: object, fmt: str, out: Path, tmp: Path, *args: object) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))  # as open(tmp, "w") there

    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.parent == out.parent:  # as on a read-only mount: even a missing file's unlink is EROFS
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(transfer, "_export_to", read_only)
    monkeypatch.setattr(Path, "unlink", unlink)
    rc = main(["--data-dir", str(home), "history", "export", "--format", "jsonl", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"tnr-lab: error: cannot export to {out}: Read-only file system\n", err
