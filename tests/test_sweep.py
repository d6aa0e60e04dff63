"""Sweeps: model-evaluation matching, argument parsing, the plan, and a tiny sweep through the CLI."""

from __future__ import annotations

import pytest

from tnr_tui.services.cells import GridCell
from tnr_tui.services.sweep import (
    SweepError,
    SweepSpec,
    cell_key_of_request,
    cell_request,
    evaluations,
    matched_steps,
    parse_scales,
    parse_seeds,
    plan,
    reference_budget,
)


def test_evaluations_count_the_final_euler_step_once() -> None:
    assert evaluations("euler", "none", 20) == 20
    assert evaluations("euler", "cfg", 20) == 40
    # Heun: 19 two-stage steps + the final Euler step
    assert evaluations("heun", "tnr", 20) == 39
    # RK4 with CFG: 2 * (4 * 4 + 1)
    assert evaluations("rk4", "tnr-cfg", 5) == 34
    assert evaluations("rk4", "none", 1) == 1


@pytest.mark.parametrize(
    "solver, guidance, budget, steps, spent",
    [
        ("euler", "none", 20, 20, 20),
        ("euler", "cfg", 20, 10, 20),
        ("heun", "none", 20, 10, 19),  # 19 and 21 are equally near: the fewer steps win
        ("rk4", "tnr", 20, 6, 21),  # 21 is nearer than 17
        ("heun", "cfg++", 20, 5, 18),  # 18 vs 22: tie, fewer steps
        ("rk4", "tnr-cfg", 20, 3, 18),  # 18 vs 26
        ("rk4", "cfg", 2, 1, 2),  # never below one step
        ("heun", "none", 40, 20, 39),
    ],
)
def test_matched_steps_spend_the_nearest_budget(solver, guidance, budget, steps, spent) -> None:
    assert matched_steps(solver, guidance, budget) == steps
    assert evaluations(solver, guidance, steps) == spent


def test_matched_steps_is_nearest_for_every_budget() -> None:
    for solver in ("euler", "heun", "midpoint", "rk4"):
        for guidance in ("none", "cfg"):
            for budget in range(1, 60):
                n = matched_steps(solver, guidance, budget)
                best = min(abs(evaluations(solver, guidance, m) - budget) for m in range(1, 80))
                assert abs(evaluations(solver, guidance, n) - budget) == best


def test_reference_budget_is_one_evaluation_per_euler_step() -> None:
    assert reference_budget(20) == 20


def test_parse_seeds_ranges_and_lists() -> None:
    assert parse_seeds("1-4,9, 12-13") == (1, 2, 3, 4, 9, 12, 13)
    assert parse_seeds("3,3,2") == (3, 2)
    for bad, message in (("4-1", "backwards"), ("x", "cannot read"), ("", "no seeds"), ("1-20000", "more than")):
        with pytest.raises(SweepError, match=message):
            parse_seeds(bad)


def test_parse_scales_per_method() -> None:
    assert parse_scales(["cfg=3,5,7", "cfg++=0.4,0.8"]) == {"cfg": (3.0, 5.0, 7.0), "cfg++": (0.4, 0.8)}
    with pytest.raises(SweepError, match="takes no scale"):
        parse_scales(["tnr=2"])
    with pytest.raises(SweepError, match="not numbers"):
        parse_scales(["cfg=a,b"])
    with pytest.raises(SweepError, match="METHOD=V1,V2"):
        parse_scales(["cfg"])


def test_plan_expands_the_grid_with_matched_steps() -> None:
    spec = SweepSpec(
        prompts=("a red circle on a white background",),
        methods=("none", "cfg"),
        scales={"cfg": (3.0, 5.0)},
        solvers=("euler", "rk4"),
        steps=8,
        match_evaluations=True,
        seeds=(1, 2),
    )
    cells = plan(spec)
    # none: 1 scale x 2 solvers; cfg: 2 scales x 2 solvers; times 2 seeds
    assert len(cells) == (2 + 4) * 2
    steps = {(c.guidance, c.scale, c.solver): c.steps for c in cells}
    assert steps == {
        ("none", None, "euler"): 8,
        ("none", None, "rk4"): 3,  # 9 evaluations (vs 5 for 2 steps)
        ("cfg", 3.0, "euler"): 4,
        ("cfg", 3.0, "rk4"): 2,  # 10 evaluations: nearer 8 than the 2 of one step
        ("cfg", 5.0, "euler"): 4,
        ("cfg", 5.0, "rk4"): 2,
    }


def test_sweep_id_depends_on_the_arguments_and_the_weights() -> None:
    a = SweepSpec(prompts=("p",), seeds=(1, 2))
    assert a.sweep_id("w1") == SweepSpec(prompts=("p",), seeds=(1, 2)).sweep_id("w1")
    assert a.sweep_id("w1") != SweepSpec(prompts=("p",), seeds=(1, 2, 3)).sweep_id("w1")
    assert a.sweep_id("w1") != a.sweep_id("w2")  # new weights behind the same model name: a new sweep
    assert a.sweep_id("w1").startswith("sw-") and len(a.sweep_id("w1")) == 13
    assert SweepSpec.from_dict(a.to_dict()) == a


def test_spec_rejects_bad_arguments() -> None:
    with pytest.raises(SweepError, match="--prompt"):
        SweepSpec(prompts=())
    with pytest.raises(SweepError, match="not in --guidance"):
        SweepSpec(prompts=("p",), methods=("none",), scales={"cfg": (3.0,)})


def test_cell_key_round_trips_through_a_recorded_request() -> None:
    spec = SweepSpec(prompts=("p",), methods=("cfg", "tnr"), scales={"cfg": (3.0,)}, seeds=(7,))
    for cell in plan(spec):
        request = cell_request(cell, spec, "sw-1")
        assert request.tags == {"sweep": "sw-1"}
        assert cell_key_of_request(request.to_dict()) == cell.key
    # a cfg run recorded without a scale used the method's default
    assert (
        cell_key_of_request({"prompt": "p", "guidance": "cfg", "scale": None, "solver": "euler", "steps": 3, "seed": 1})
        == GridCell("cfg", 5.0, "euler", 3, prompt="p", seed=1).key
    )


# ---- through the CLI on the tiny model ------------------------------------------------------------------------

PROMPT = "a red circle on a white background"


def sweep_argv(data_dir, model_dir, out, seeds: str = "1-2", *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "sweep",
        "--prompt",
        PROMPT,
        "--guidance",
        "none,cfg",
        "--scales",
        "cfg=2,4",
        "--steps",
        "2",
        "--seeds",
        seeds,
        "--model",
        str(model_dir),
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        str(out),
        *extra,
    ]


def test_tiny_sweep_records_runs_and_writes_sheet_and_csv(tiny_sdxl_dir, tmp_path, capsys) -> None:
    import csv

    from PIL import Image

    from tnr_tui.cli import main
    from tnr_tui.services.history import RunFilter, open_store

    out = tmp_path / "sweep"
    assert main(sweep_argv(tmp_path / "home", tiny_sdxl_dir, out)) == 0
    printed = capsys.readouterr().out
    sweep_id = printed.split()[1].rstrip(":")
    assert "6 run, 0 already done, 0 failed of 6" in printed

    with open_store(tmp_path / "home") as store:
        runs = store.list_runs(RunFilter(sweep=sweep_id))
        assert len(runs) == 6 and {r.status for r in runs} == {"done"}
        assert {r.origin for r in runs} == {"sweep"}
        assert sorted((r.guidance, r.scale or 0.0, r.seed) for r in runs) == sorted(
            (g, s, seed) for g, s in (("none", 0.0), ("cfg", 2.0), ("cfg", 4.0)) for seed in (1, 2)
        )
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 6
    assert [(r["guidance"], r["scale"], r["seed"]) for r in rows[:3]] == [
        ("none", "", "1"),
        ("none", "", "2"),
        ("cfg", "2.0", "1"),
    ]
    assert {r["evaluations"] for r in rows} == {"2", "4"}  # none: 2 steps x 1; cfg: 2 steps x 2 predictions
    assert all(0.0 <= float(r["saturation"]) <= 1.0 and float(r["colourfulness"]) >= 0.0 for r in rows)
    assert all(r["check_all"] == "" for r in rows)  # no checker verdicts for a model other than the embedded one
    (sheet,) = out.glob("sheet-*.png")
    with Image.open(sheet) as im:
        # 3 rows (none, cfg 2, cfg 4) x 2 seed columns of 128 px thumbnails with a 4 px gap, below a 42 px header
        assert im.height == 42 + 3 * (128 + 4) + 4
        assert im.width > 2 * (128 + 4)


def test_sweep_resume_skips_done_cells(tiny_sdxl_dir, tmp_path, capsys) -> None:
    from tnr_tui.cli import main
    from tnr_tui.services.history import RunFilter, open_store

    home, out = tmp_path / "home", tmp_path / "sweep"
    assert main(sweep_argv(home, tiny_sdxl_dir, out, "1")) == 0
    sweep_id = capsys.readouterr().out.split()[1].rstrip(":")

    # the same command again: nothing to run
    assert main(sweep_argv(home, tiny_sdxl_dir, out, "1")) == 0
    assert "0 run, 3 already done" in capsys.readouterr().out

    # without the CSV, the history alone tells which cells are done, and the CSV is rebuilt from it
    (out / "sweep.csv").unlink()
    assert main(sweep_argv(home, tiny_sdxl_dir, out, "1")) == 0
    assert "0 run, 3 already done" in capsys.readouterr().out
    assert len((out / "sweep.csv").read_text().strip().splitlines()) == 1 + 3

    # more seeds under the same sweep id: only the new cells run
    assert main(sweep_argv(home, tiny_sdxl_dir, out, "1-2", "--resume", sweep_id)) == 0
    assert "3 run, 3 already done" in capsys.readouterr().out
    with open_store(home) as store:
        assert store.count_runs(RunFilter(sweep=sweep_id)) == 6

    # --resume with no arguments reads them back from DIR/sweep.json
    assert main(["--data-dir", str(home), "sweep", "--resume", sweep_id, "--out", str(out)]) == 0
    assert "0 run, 6 already done" in capsys.readouterr().out


def test_sweep_bad_arguments_are_one_line_errors(tmp_path, capsys) -> None:
    from tnr_tui.cli import main

    base = ["--data-dir", str(tmp_path), "sweep", "--out", str(tmp_path / "o")]
    assert main(base + ["--prompt", "p", "--guidance", "none,foo"]) == 2
    assert "unknown guidance method 'foo'" in capsys.readouterr().err
    assert main(base + ["--prompt", "p", "--seeds", "9-1"]) == 2
    assert "backwards" in capsys.readouterr().err
    assert main(base) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(base + ["--prompt", "p", "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_sweep_on_the_embedded_model_records_the_checkers_verdicts(tiny_sdxl_dir, tmp_path, monkeypatch) -> None:
    import csv

    from PIL import Image

    from engine.toy import check
    from tnr_tui.cli import main

    # the tiny random model stands in for the embedded one: its images are noise, the verdicts still real
    monkeypatch.setenv("TNR_LAB_EMBEDDED_MODEL", str(tiny_sdxl_dir))
    out = tmp_path / "sweep"
    argv = ["--data-dir", str(tmp_path / "home"), "sweep", "--prompt", PROMPT, "--prompt", "not a toy prompt"]
    argv += ["--guidance", "none", "--steps", "1", "--seeds", "1", "--width", "64", "--height", "64", "--out", str(out)]
    assert main(argv) == 0
    rows = {r["prompt"]: r for r in csv.DictReader((out / "sweep.csv").open())}
    verdict = check(Image.open(rows[PROMPT]["image"]), PROMPT)
    got = rows[PROMPT]
    expected = (verdict.shape_colour, verdict.background, verdict.shape, verdict.all)
    assert (got["check_colour"], got["check_background"], got["check_shape"], got["check_all"]) == tuple(
        str(int(v)) for v in expected
    )
    assert rows["not a toy prompt"]["check_all"] == ""  # outside the toy grammar: no verdict
    assert len(list(out.glob("sheet-*.png"))) == 2  # one sheet per prompt


def test_resume_on_new_weights_runs_the_cells_again(tiny_sdxl_dir, tmp_path, capsys) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from tnr_tui.cli import main

    home, out = tmp_path / "home", tmp_path / "sweep"
    assert main(sweep_argv(home, tiny_sdxl_dir, out, "1")) == 0
    sweep_id = capsys.readouterr().out.split()[1].rstrip(":")
    # the same directory layout with one weight changed: another model identity
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_sdxl_dir, retrained)
    (weights,) = (retrained / "unet").glob("*.safetensors")
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights)
    assert main(sweep_argv(home, retrained, out, "1", "--resume", sweep_id)) == 0
    assert "3 run, 0 already done" in capsys.readouterr().out
    # and without --resume the new weights get a sweep id of their own
    assert main(sweep_argv(home, retrained, out, "1")) == 0
    assert sweep_id not in capsys.readouterr().out


def test_a_file_as_out_and_a_corrupt_history_are_one_line_errors(tiny_sdxl_dir, tmp_path, capsys) -> None:
    from tnr_tui.cli import main

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    assert main(sweep_argv(tmp_path / "home", tiny_sdxl_dir, blocker)) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    bad_home = tmp_path / "bad-home"
    bad_home.mkdir()
    (bad_home / "history.sqlite").write_bytes(b"this is not a database" * 100)
    assert main(sweep_argv(bad_home, tiny_sdxl_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith("tnr-lab: error: ") and "Traceback" not in err
    assert main(sweep_argv(tmp_path / "home", tiny_sdxl_dir, tmp_path / "o2", "1", "--steps", "0")) == 2
    assert "steps must be a whole number in 1..10000" in capsys.readouterr().err


def test_unit_parameters_apply_to_the_units_that_take_them_and_keep_old_ids() -> None:
    plain = SweepSpec(prompts=("p",), methods=("cfg", "apg"), seeds=(1,))
    spec = SweepSpec(prompts=("p",), methods=("cfg", "apg"), seeds=(1,), guidance_params={"eta": 0.0})
    by_method = {c.guidance: c for c in plan(spec)}
    assert dict(by_method["apg"].guidance_params) == {"eta": 0.0} and by_method["cfg"].guidance_params == ()
    assert cell_request(by_method["apg"], spec, "sw-x").guidance_params == {"eta": 0.0}
    assert "guidance_params" not in plain.to_dict()  # a sweep without them keeps the id it had
    assert spec.sweep_id() != plain.sweep_id()
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SweepError, match="--guidance-param eta: no guidance of this sweep takes it"):
        SweepSpec(prompts=("p",), methods=("cfg",), guidance_params={"eta": 0.0})


def test_matched_evaluations_count_a_methods_own_window() -> None:
    spec = SweepSpec(
        prompts=("p",), methods=("apg",), seeds=(1,), steps=12, match_evaluations=True, guidance_params={"start": 0.5}
    )
    (cell,) = plan(spec)
    assert abs(cell.planned_evaluations - reference_budget(12)) <= 2  # nearest: half the steps cost 1, half 2
