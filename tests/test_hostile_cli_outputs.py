"""The user's --out / --save-latent copies: a place that cannot be written is one line before the model loads,
and a copy that fails after sampling loses none of a batch's images.

Found with a read-only bind mount (`generate --out /ro/o.png`): the model loaded, the image was sampled,
the copy failed and the run was recorded `failed` with its image deleted. With `generate --batch 3 --out
/full/b.png` on a full disk, seed 0 was recorded, its copy failed, and seeds 1 and 2 of the same batch,
already sampled, were recorded `cancelled` and their images dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli_argv import generate_argv
from tnr_tui.cli import main
from tnr_tui.services.history import RunFilter, open_store


@pytest.fixture
def unwritable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A directory this user may not write (os.access says so; root passes chmod, so it is told here)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access

    def access(path, mode, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return locked


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.models

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output paths were checked")

    monkeypatch.setattr(engine.models, "load_bundle", refuse)


@pytest.mark.parametrize("where", ["out", "out-subdir", "latent"])
def test_an_unwritable_place_is_one_line_before_the_model_loads(
    tmp_path: Path, tiny_sdxl_dir: Path, capsys, unwritable: Path, no_model, where: str
) -> None:
    home = tmp_path / "home"
    out = unwritable / "o.png" if where == "out" else tmp_path / "o.png"
    extra: tuple[str, ...] = ()
    if where == "out-subdir":
        out = unwritable / "new" / "o.png"  # a folder that would have to be made inside it
    if where == "latent":
        extra = ("--save-latent", str(unwritable / "l.safetensors"))
    assert main(generate_argv(home, out, *extra, model=tiny_sdxl_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(unwritable) in err and "permission denied" in err, err
    assert not home.exists()  # no run recorded as failed for it


def test_a_read_only_file_system_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, no_model) -> None:
    real = os.statvfs
    target = tmp_path / "ro"
    target.mkdir()

    class ReadOnly:
        def __init__(self, st: os.statvfs_result) -> None:
            self._st = st
            self.f_flag = st.f_flag | os.ST_RDONLY

        def __getattr__(self, name: str) -> object:
            return getattr(self._st, name)

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real(p)) if Path(p) == target else real(p))
    assert main(generate_argv(tmp_path / "home", target / "o.png", model=Path("embedded"))) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and str(target) in err, err


def test_a_failed_copy_keeps_every_image_of_the_batch(tmp_path: Path, tiny_sdxl_dir: Path, capsys) -> None:
    home = tmp_path / "home"
    out = tmp_path / "b.png"
    (tmp_path / "b-0.png").mkdir()  # seed 0's copy cannot be written: a directory is in the way
    rc = main(generate_argv(home, out, "--batch", "3", "--json", model=tiny_sdxl_dir))
    err = capsys.readouterr().err
    assert rc == 2 and "b-0.png" in err, err
    store = open_store(home)
    try:
        runs = list(store.iter_runs(RunFilter()))
        assert sorted(r.seed for r in runs) == [0, 1, 2]
        assert {r.status for r in runs} == {"done"}, [(r.seed, r.status) for r in runs]
        for r in runs:
            image = [o for o in r.outputs if o.kind == "image"]
            assert image and store.resolve(image[0].path).is_file()
    finally:
        store.close()
    # the copies that could be written are there
    assert (tmp_path / "b-1.png").is_file() and (tmp_path / "b-2.png").is_file()
