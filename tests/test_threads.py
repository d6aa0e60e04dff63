"""CPU thread policy of the lab and `generate` (tnr_tui.services.threads) and its flags."""

from __future__ import annotations

import pytest
import torch

from tnr_tui.cli import main
from tnr_tui.services import threads


@pytest.mark.parametrize(
    ("requested", "environ", "cores", "expected"),
    [
        (None, {}, 2, 1),  # small machine: one thread
        (None, {}, 1, 1),
        (None, {}, 16, None),  # big machine: torch's default
        (None, {"OMP_NUM_THREADS": "2"}, 2, None),  # the user's OpenMP setting stands
        (None, {"TNR_LAB_THREADS": "3"}, 2, 3),
        (None, {"TNR_LAB_THREADS": "0"}, 2, None),
        (4, {"TNR_LAB_THREADS": "3"}, 2, 4),  # the flag wins over the environment
        (0, {}, 2, None),
    ],
)
def test_choose_cpu_threads(monkeypatch, requested, environ, cores, expected) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.choose_cpu_threads(requested, environ) == expected


def test_bad_thread_counts_are_refused_with_a_message() -> None:
    with pytest.raises(ValueError, match="or more, got -1"):
        threads.choose_cpu_threads(-1, {})
    with pytest.raises(ValueError, match="TNR_LAB_THREADS must be a whole number"):
        threads.choose_cpu_threads(None, {"TNR_LAB_THREADS": "many"})
    with pytest.raises(ValueError, match=r"threads must be at most \d+ on this machine"):
        threads.choose_cpu_threads(100_000, {})


def test_generate_threads_flag_sets_torch_and_bad_values_are_one_line(tmp_path, tiny_sdxl_dir, capsys) -> None:
    before = torch.get_num_threads()
    try:
        argv = ["--data-dir", str(tmp_path / "home"), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "a"]
        assert main([*argv, "--steps", "1", "--threads", "2", "--out", str(tmp_path / "o.png")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert main([*argv, "--threads", "-3", "--out", str(tmp_path / "p.png")]) == 2
    assert "threads must be 0 (torch's default) or more, got -3" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_the_lab_refuses_a_bad_thread_setting_before_it_starts(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("TNR_LAB_THREADS", "lots")
    assert main(["--data-dir", str(tmp_path), "--threads", "-1"]) == 2
    assert "got -1" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "TNR_LAB_THREADS must be a whole number" in capsys.readouterr().err
