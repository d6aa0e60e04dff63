"""The study: arms, bootstrap intervals, and an end-to-end run at tiny size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_metrics import build_tiny_clip

from engine.request import GenerationRequest
from tnr_tui.services.study import (
    Arm,
    StudyConfig,
    StudyError,
    all_arms,
    bootstrap_indices,
    direction,
    mean_ci,
    nice_ticks,
    prompt_for_seed,
    run_study,
    solver_arms,
)

TINY = StudyConfig(
    samples=3, steps=4, scales={"cfg": (2.0, 4.0), "cfg++": (0.5,), "tnr-cfg": (2.0, 4.0)}, budgets=(4, 8)
)


def test_solver_arms_spend_equal_evaluations() -> None:
    arms = solver_arms(StudyConfig(budgets=(20,)))
    assert {(a.guidance, a.solver): (a.steps, a.planned_evaluations) for a in arms} == {
        ("none", "euler"): (20, 20),
        ("none", "heun"): (10, 19),
        ("none", "rk4"): (6, 21),
        ("tnr", "euler"): (20, 20),
        ("tnr", "heun"): (10, 19),
        ("tnr", "rk4"): (6, 21),
    }


def test_all_arms_share_duplicates() -> None:
    arms = all_arms(TINY)
    # none/tnr euler at 4 steps is both a single-prediction arm and the B=4 solver arm
    assert arms.count(Arm("none", None, "euler", 4)) == 1
    assert len(arms) == 2 + 5 + (6 + 6 - 2)


def test_bootstrap_interval_of_a_known_sample() -> None:
    idx = bootstrap_indices(50, resamples=4000, seed=1)
    values = np.r_[np.ones(25), np.zeros(25)]
    mean, lo, hi = mean_ci(values, idx)
    assert mean == 0.5
    # the binomial standard error is sqrt(0.25 / 50) = 0.0707: the interval is about +-1.96 of it
    assert lo == pytest.approx(0.5 - 1.96 * 0.0707, abs=0.03)
    assert hi == pytest.approx(0.5 + 1.96 * 0.0707, abs=0.03)
    # a constant has a zero-width interval
    assert mean_ci(np.full(50, 3.0), idx) == (3.0, 3.0, 3.0)


def test_seed_prompts_are_fixed_toy_scenes() -> None:
    prompts = [prompt_for_seed(s, TINY, embedded=True) for s in range(1, 169)]
    assert len(set(prompts)) == 168  # every scene once in the first 168 seeds
    assert prompt_for_seed(5, TINY, embedded=True) == prompts[4]
    assert prompt_for_seed(1, StudyConfig(prompts=("x", "y")), embedded=False) == "x"


def test_nice_ticks_cover_the_range() -> None:
    assert nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    ticks = nice_ticks(3.3, 47.0)
    assert ticks[0] <= 3.3 and ticks[-1] >= 47.0


def test_direction_reads_the_interval() -> None:
    assert direction(0.1, 2.0) == "higher"
    assert direction(-2.0, -0.1) == "lower"
    assert direction(-0.1, 0.1) == "no detectable difference"
    assert direction(0.0, 0.0) == "no detectable difference"  # identical arms
    # a sign every resample agrees on, but below the printed digits, is not a finding
    assert direction(1e-6, 2e-5, "contrast") == "no detectable difference"
    assert direction(0.01, 0.04, "colourfulness") == "no detectable difference"
    assert direction(0.1, 0.4, "colourfulness") == "higher"
    assert direction(-0.03, -0.01, "accuracy") == "lower"


def test_config_rejects_one_sample() -> None:
    with pytest.raises(StudyError, match="at least 2"):
        StudyConfig(samples=1)


def fake_toy_sampler(request: GenerationRequest) -> tuple[Image.Image, dict]:
    """Renders the prompt's scene (right in tnr arms, blank grey otherwise) so the checker has something to grade."""
    from engine.toy import parse_prompt, render

    rng = np.random.default_rng(request.seed)
    if request.guidance in ("tnr", "tnr-cfg"):
        pixels = render(parse_prompt(request.prompt), rng)
    else:
        pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    return Image.fromarray(pixels), {"model_evaluations": request.steps}


def test_study_tables_and_plots_from_a_fake_sampler(tmp_path: Path) -> None:
    report = run_study(TINY, tmp_path, sample_fn=fake_toy_sampler, model_description="fake", log=lambda _: None)
    md = report.markdown.read_text()
    assert "## 1. Single prediction" in md and "## 3. Solvers" in md
    # tnr renders the right scene every time, none never: accuracy 100% vs 0%, a difference of 100 points
    assert "| tnr euler 4st | 4 | 100% [100, 100]" in md
    assert "| none euler 4st | 4 | 0% [0, 0]" in md
    assert "| tnr - none | 100 pts [100, 100] *" in md
    assert (
        "| TNR mildly improves prompt coherence | euler 4 steps: tnr - none | accuracy | 100 pts [100, 100] | higher |"
        in md
    )
    assert (
        "| TNR mildly improves prompt coherence | euler 8 steps: tnr - none | accuracy | 100 pts [100, 100] | higher |"
        in md
    )
    for plot in report.plots:
        with Image.open(plot) as im:
            assert im.width > 300 and im.height > 300
    assert report.images == len(all_arms(TINY)) * 3


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_study_adds_a_clip_score_with_a_local_clip_model(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from engine.metrics import ClipScorer

    cfg = StudyConfig(samples=2, steps=2, scales={"cfg": (2.0,)}, budgets=(2,), solvers=("euler",))
    report = run_study(cfg, tmp_path, sample_fn=fake_toy_sampler, clip_model=tiny_clip_dir, log=lambda _: None)
    md = report.markdown.read_text()
    assert "| arm | evaluations | accuracy | colourfulness | contrast | saturation | dynamic_range | clip_score |" in md
    image, _ = fake_toy_sampler(
        GenerationRequest(prompt=prompt_for_seed(1, cfg, True), seed=1, steps=2, guidance="tnr")
    )
    expected = ClipScorer(tiny_clip_dir).score(image, prompt_for_seed(1, cfg, True))
    import json

    arms = json.loads((tmp_path / "study.json").read_text())["arms"]
    tnr = next(a for a in arms if a["label"] == "tnr euler 2st")
    assert tnr["clip_score"][0] == pytest.approx(expected, abs=1e-4)


def test_study_refuses_a_directory_without_clip(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="no CLIP model"):
        run_study(TINY, tmp_path, sample_fn=fake_toy_sampler, clip_model=tmp_path, log=lambda _: None)


def test_study_cli_end_to_end_on_the_tiny_model(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    from tnr_tui.cli import main

    out = tmp_path / "study"
    code = main(
        [
            "study",
            "--model",
            str(tiny_sdxl_dir),
            "--samples",
            "2",
            "--steps",
            "2",
            "--budgets",
            "2",
            "--scales",
            "cfg=2",
            "cfg++=0.5",
            "tnr-cfg=2",
            "--solvers",
            "euler,rk4",
            "--skip",
            "samplers,guidance",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    md = (out / "study.md").read_text()
    assert "accuracy" not in md.split("## 1.")[1].split("\n")[2]  # no checker for a non-embedded model
    assert "| none euler 2st | 2 |" in md
    assert "| tnr-cfg 2 euler 2st | 4 |" in md  # the sampler's count: 2 predictions x 2 steps
    assert "| none rk4 1st | 1 |" in md  # budget 2: one RK4 step (the last step is Euler) is nearest
    assert (out / "metrics-vs-scale.png").is_file() and (out / "solvers-vs-evaluations.png").is_file()


def test_study_cli_rejects_bad_budgets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tnr_tui.cli import main

    assert main(["study", "--budgets", "0,x", "--out", str(tmp_path)]) == 2
    assert "budgets" in capsys.readouterr().err


def test_study_refuses_a_file_as_out_before_loading_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tnr_tui.cli import main

    blocker = tmp_path / "taken"
    blocker.write_text("x")
    assert main(["study", "--model", str(tmp_path / "no-model"), "--out", str(blocker)]) == 2
    assert f"--out {blocker} exists and is not a directory" in capsys.readouterr().err


def test_a_study_with_midpoint_on_the_embedded_model_writes_numbers_tables_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The smallest study the CLI allows, on the embedded model, with a solver the palette once lacked."""
    import json

    from tnr_tui.cli import main
    from tnr_tui.services.study import solver_colours

    out = tmp_path / "study"
    args = ["study", "--samples", "2", "--steps", "1", "--budgets", "1", "--scales", "cfg=2", "cfg++=0.5"]
    args += ["tnr-cfg=2", "--solvers", "euler,midpoint", "--width", "64", "--height", "64", "--out", str(out)]
    args += ["--sections", "claims,solvers"]
    assert main(args) == 0
    captured = capsys.readouterr()
    arms = json.loads((out / "study.json").read_text())["arms"]
    midpoint = [a for a in arms if a["solver"] == "midpoint"]
    assert {a["guidance"] for a in midpoint} == {"none", "tnr"} and all(len(a["accuracy"]) == 2 for a in midpoint)
    md = (out / "study.md").read_text()
    assert "| none midpoint 1st | 1 |" in md and "B=1 midpoint: tnr - none" in md
    for name in ("metrics-vs-scale.png", "solvers-vs-evaluations.png", "contact-sheet.png"):
        assert f"plot: {out / name}" in captured.out and f"![{name[:-4]}]({name})" in md
    # midpoint's line is drawn in its own colour (the second of the cycle: its place in --solvers).
    colour = solver_colours(("euler", "midpoint"))["midpoint"]
    with Image.open(out / "solvers-vs-evaluations.png") as im:
        pixels = set(im.convert("RGB").getdata())
    assert colour in pixels and colour != solver_colours(("euler", "midpoint"))["euler"]
    # 1 step of the model's leading spacing starts low: every arm sampled trailing, and the study says so.
    assert all(a["schedules"] == ["trailing"] for a in arms)
    assert "sigma schedule: default (sampled as trailing)" in md and "## Warnings of the runs" in md
    assert "warning: schedule: the model's leading spacing at 1 step" in captured.err


def test_a_plot_that_fails_is_a_warning_and_the_numbers_are_already_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import tnr_tui.services.study.runner as study  # where run_study looks the plot up

    seen: list[bool] = []

    def broken_plot(cfg, results, indices, path, embedded):
        seen.append((tmp_path / "study.json").is_file() and "| tnr euler 4st |" in (tmp_path / "study.md").read_text())
        raise RuntimeError("no room on the canvas")

    monkeypatch.setattr(study, "plot_accuracy_vs_evaluations", broken_plot)
    logged: list[str] = []
    report = run_study(TINY, tmp_path, sample_fn=fake_toy_sampler, model_description="fake", log=logged.append)
    assert seen == [True]  # study.json and the tables existed when the plot was drawn
    message = "solvers-vs-evaluations.png was not drawn: RuntimeError: no room on the canvas"
    assert report.warnings == [message] and f"warning: {message}" in logged
    arms = json.loads((tmp_path / "study.json").read_text())["arms"]
    assert len(arms) == len(all_arms(TINY)) and all(len(a["accuracy"]) == 3 for a in arms)
    md = report.markdown.read_text()
    assert f"- {message}" in md and "![metrics-vs-scale](metrics-vs-scale.png)" in md
    assert "solvers-vs-evaluations" not in md.split("## Plots")[1].replace(message, "")
    assert [p.name for p in report.plots] == ["metrics-vs-scale.png", "contact-sheet.png"]
    assert not (tmp_path / "solvers-vs-evaluations.png").exists()


def test_the_study_cli_prints_a_failed_plot_and_exits_0(
    tiny_sdxl_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tnr_tui.services.study.runner as study  # where run_study looks the plot up
    from tnr_tui.cli import main

    def broken_sheet(cfg, results, path, embedded, best=None):
        raise MemoryError("contact sheet")

    monkeypatch.setattr(study, "study_sheet", broken_sheet)
    out = tmp_path / "study"
    args = ["study", "--model", str(tiny_sdxl_dir), "--samples", "2", "--steps", "1", "--budgets", "1"]
    args += ["--scales", "cfg=2", "cfg++=0.5", "tnr-cfg=2", "--solvers", "midpoint", "--width", "64"]
    args += ["--height", "64", "--out", str(out), "--skip", "samplers,guidance"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: contact-sheet.png was not drawn: MemoryError: contact sheet" in err
    assert (out / "study.json").is_file() and (out / "solvers-vs-evaluations.png").is_file()


def test_every_solver_gets_a_colour_of_its_own_and_the_legend_wraps() -> None:
    from PIL import ImageFont

    from tnr_tui.services.study import Series, legend_layout, solver_colours

    names = [f"solver_{i}" for i in range(20)]
    colours = solver_colours(names)
    assert list(colours) == names and len(set(colours.values())) == 20
    assert solver_colours(names[:3]) == {n: colours[n] for n in names[:3]}  # by position, whatever follows
    series = [Series(f"{n} tnr", [1.0], [1.0], [1.0], [1.0], colours[n]) for n in names]
    placed = legend_layout(series, ImageFont.load_default(size=12), 720)
    font = ImageFont.load_default(size=12)
    assert max(x + 40 + font.getlength(s.label) for x, _, s in placed) <= 720
    assert max(row for _, row, _ in placed) >= 2


def test_the_clis_defaults_are_the_designs():
    # tnr_tui/cli/study.py repeats them so that `tnr-lab study --help` imports no torch: they must not drift.
    from tnr_tui.cli import study as cli
    from tnr_tui.services.study import design

    assert cli.SECTIONS_DEFAULT == design.SECTIONS
    assert cli.SAMPLERS_DEFAULT == design.SAMPLERS
    assert cli.METHODS_DEFAULT == design.RIVALS
