"""Batched seeds through the commands: generate --batch N, history rerun of a batched run, sweep --batch, the
study's batched arms against one image at a time, and --ray without Ray."""

from __future__ import annotations

import json

import pytest

from tnr_tui.cli import main
from tnr_tui.services.history import open_store


def test_generate_batch_makes_one_run_per_seed(tmp_path, tiny_sdxl_dir, capsys):
    home = tmp_path / "home"
    argv = ["--data-dir", str(home), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "a red circle"]
    argv += ["--steps", "3", "--seed", "10", "--batch", "3", "--json"]
    assert main([*argv, "--out", str(tmp_path / "x.png"), "--save-latent", str(tmp_path / "x.safetensors")]) == 0
    made = json.loads(capsys.readouterr().out)
    assert [m["seed"] for m in made] == [10, 11, 12]
    assert all(m["status"] == "done" and m["batch"]["size"] == 3 for m in made)
    assert [m["batch"]["index"] for m in made] == [0, 1, 2]
    for seed in (10, 11, 12):
        assert (tmp_path / f"x-{seed}.png").is_file() and (tmp_path / f"x-{seed}.safetensors").is_file()
    store = open_store(home)
    runs = {r.id: r for r in store.list_runs()}
    assert set(runs) == {m["run_id"] for m in made}
    run = runs[made[1]["run_id"]]
    assert run.status == "done" and run.request["seed"] == 11 and run.stats["batch"]["size"] == 3
    assert {o.kind for o in run.outputs} == {"image", "latent"}
    store.close()


def test_rerun_of_a_batched_run_says_so_and_batched_is_bit_identical(tmp_path, tiny_sdxl_dir, capsys):
    """Alone, a batched run is re-sampled at batch size 1 and the report says it was batched; --batched
    re-samples it in a batch of its size, bit-identical (an image depends on its request and batch size only)."""
    home = tmp_path / "home"
    argv = ["--data-dir", str(home), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "a red circle"]
    assert main([*argv, "--steps", "3", "--batch", "2", "--json", "--out", str(tmp_path / "x.png")]) == 0
    run_id = json.loads(capsys.readouterr().out)[1]["run_id"]
    assert main(["--data-dir", str(home), "history", "rerun", run_id, "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["recorded_in_batch"] == {"size": 2, "index": 1} and alone["rerun_batched"] is False
    assert alone["compared"] and alone["comparable"]
    assert main(["--data-dir", str(home), "history", "rerun", run_id, "--batched", "--json"]) == 0
    batched = json.loads(capsys.readouterr().out)
    assert batched["rerun_batched"] is True and batched["identical"] is True
    assert main(["--data-dir", str(home), "history", "rerun", run_id]) == 0
    assert "recorded from a batch of 2 (image 2)" in capsys.readouterr().out


def test_bad_batch_and_ray_options_are_one_line(tmp_path, capsys, monkeypatch):
    base = ["--data-dir", str(tmp_path / "home")]
    assert main([*base, "generate", "--prompt", "x", "--batch", "0", "--out", str(tmp_path / "a.png")]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    sweep = [*base, "sweep", "--prompt", "x", "--out", str(tmp_path / "s")]
    assert main([*sweep, "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    assert main([*sweep, "--ray-workers", "2"]) == 2
    assert "--ray-workers needs --ray" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    for command in (sweep, [*base, "study", "--out", str(tmp_path / "st")]):
        assert main([*command, "--ray", "local"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install -e '.[ray]'" in err[0], err


def test_sweep_batches_seeds_and_records_each(tmp_path, tiny_sdxl_dir, capsys):
    home = tmp_path / "home"
    argv = ["--data-dir", str(home), "sweep", "--model", str(tiny_sdxl_dir), "--prompt", "a red circle"]
    argv += ["--guidance", "none,cfg", "--seeds", "1-3", "--steps", "3", "--batch", "2", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 images in 4 batches (of 2, 1)" in out
    store = open_store(home)
    runs = store.list_runs()
    assert len(runs) == 6 and {r.status for r in runs} == {"done"}
    assert sorted((r.stats.get("batch") or {}).get("size", 1) for r in runs) == [1, 1, 2, 2, 2, 2]
    store.close()
    assert main(argv) == 0  # resumes: nothing left to do
    assert "6 already done, 0 to run" in capsys.readouterr().out


def test_study_batched_matches_one_image_at_a_time(tmp_path, tiny_sdxl_dir):
    """The study's numbers from batched arms equal those of one image at a time up to the last bits of the
    batched convolutions (a metric of an 8-bit image moves only where a pixel flips a level)."""
    from engine.models import load_bundle
    from tnr_tui.services.dispatch import LocalDispatcher
    from tnr_tui.services.study import StudyConfig, engine_sampler, single_arms
    from tnr_tui.services.study.running import run_arms

    bundle = load_bundle(str(tiny_sdxl_dir), device="cpu")
    cfg = StudyConfig(samples=4, steps=3, model=str(tiny_sdxl_dir), prompts=("a red circle", "a blue square"))
    arms = single_arms(cfg)
    alone = run_arms(arms, cfg, engine_sampler(bundle), embedded=False, log=lambda _: None)
    batched = run_arms(
        arms, cfg, None, embedded=False, log=lambda _: None, dispatcher=LocalDispatcher(bundle, cfg.model)
    )
    for arm in arms:
        a, b = alone[arm], batched[arm]
        assert a.seeds == b.seeds and a.evaluations == b.evaluations and set(a.values) == set(b.values)
        for name in a.values:
            assert b.values[name] == pytest.approx(a.values[name], rel=1e-2, abs=1e-2), name
