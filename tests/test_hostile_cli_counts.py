"""Huge or out-of-range image counts are one line before any model loads.

`generate --batch 100000000` built a hundred million requests up front (22 GB resident after ten minutes on
a 23 GB machine); `study --samples 100000000` the same with its arms. A sweep caps its seeds at MAX_SEEDS
(10 000); generate's --batch and the study's --samples / --search-samples now have that bound too, and a seed
range that runs past the largest seed is said before the model loads (it failed after loading it, or for a
sweep in the middle of the run).
"""

from __future__ import annotations

import pytest

from engine.request import MAX_SEED
from tests.cli_argv import generate_argv
from tnr_tui.cli import main
from tnr_tui.services.study import StudyConfig, StudyError
from tnr_tui.services.sweep import SweepError, parse_seeds
from tnr_tui.services.sweep.spec import MAX_SEEDS


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: every refusal here comes before it."""
    import engine.models

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the count was checked")

    monkeypatch.setattr(engine.models, "load_bundle", refuse)


@pytest.mark.parametrize("count", [str(MAX_SEEDS + 1), "100000000"])
def test_generate_batch_over_the_seed_cap_is_one_line(tmp_path, capsys, no_model, count: str) -> None:
    assert main(generate_argv(tmp_path / "home", tmp_path / "o.png", "--batch", count)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"at most {MAX_SEEDS}" in err, err
    assert not (tmp_path / "home").exists()  # nothing opened, nothing recorded


def test_generate_batch_past_the_largest_seed_is_said_before_the_model_loads(tmp_path, capsys, no_model) -> None:
    assert main(generate_argv(tmp_path / "home", tmp_path / "o.png", "--seed", str(MAX_SEED), "--batch", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(MAX_SEED) in err and "--batch" in err, err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("field", ["samples", "search_samples"])
def test_study_counts_over_the_cap_are_refused(field: str) -> None:
    with pytest.raises(StudyError, match=f"at most {MAX_SEEDS}"):
        StudyConfig(**{field: MAX_SEEDS + 1})
    StudyConfig(**{field: MAX_SEEDS})  # the cap itself is allowed


def test_study_cli_huge_samples_is_one_line(tmp_path, capsys, no_model) -> None:
    rc = main(["study", "--samples", "100000000", "--steps", "1", "--sections", "claims", "--out", str(tmp_path)])
    assert rc == 2
    assert f"at most {MAX_SEEDS}" in capsys.readouterr().err


def test_sweep_seed_past_the_largest_is_refused_when_parsed() -> None:
    assert parse_seeds(str(MAX_SEED)) == (MAX_SEED,)
    with pytest.raises(SweepError, match="largest seed"):
        parse_seeds(f"{MAX_SEED - 1}-{MAX_SEED + 1}")
