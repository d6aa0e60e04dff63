"""The study's measurement of the notebook's claim (services/study/trajectory.py): ||c - u|| / ||u|| per step
and the trajectory's x0_change, from every image's telemetry rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine.request import GenerationRequest
from engine.telemetry import table_of
from tnr_tui.services.study import StudyConfig, bootstrap_indices, run_study
from tnr_tui.services.study.statistics import median_ci

CFG = StudyConfig(
    samples=4, steps=3, scales={"cfg": (2.0, 4.0, 6.0), "cfg++": (0.5,), "tnr-cfg": (2.0, 4.0, 6.0)}, budgets=(3,)
)


def synthetic(request: GenerationRequest) -> tuple[Image.Image, dict]:
    """Rows with known numbers: diff_ratio = 0.01 * (step + 1) * seed, x0_change = 0.1 * seed (twice as much
    under TNR); methods without u have no diff_ratio."""
    two = request.guidance in ("cfg", "tnr-cfg", "cfg++")
    tnr = request.guidance in ("tnr", "tnr-cfg")
    rows = []
    for i in range(request.steps):
        row = dict.fromkeys(("sigma", "sigma_next", "timestep", "evaluations", "tnr_factor"), 1.0)
        row.update(index=i, sigma=10.0 - i, tnr_factor=1.5 if tnr else None)
        row["diff_ratio"] = 0.01 * (i + 1) * request.seed if two else None
        row["x0_change"] = None if i == 0 else 0.1 * request.seed * (2 if tnr else 1)
        rows.append(row)
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    return image, {"model_evaluations": request.steps, "telemetry": table_of(rows)}


def test_the_study_reports_the_difference_term_and_the_path_length(tmp_path: Path) -> None:
    report = run_study(CFG, tmp_path, sample_fn=synthetic, model_description="synthetic", log=lambda _: None)
    data = json.loads((tmp_path / "study.json").read_text())["difference_term"]
    assert data["reference_scale"] == 4.0  # the middle shared scale
    entry = next(e for e in data["scales"] if e["scale"] == 4.0)
    seeds = np.arange(1, 5)
    every = np.concatenate([0.01 * k * seeds for k in (1, 2, 3)])
    assert entry["cfg"]["diff_ratio_median"] == float(np.median(every))
    indices = bootstrap_indices(CFG.samples)
    assert entry["cfg"]["diff_ratio_first_step"] == list(median_ci(0.01 * seeds, indices))
    # path length: sum over steps 2..3 of x0_change = 0.2 seed (cfg), 0.4 seed (tnr-cfg); paired mean 0.2 * 2.5
    assert np.isclose(entry["path_length_difference"][0], 0.2 * seeds.mean())
    assert entry["path_length_difference"][1] > 0
    md = report.markdown.read_text()
    assert "## 4. The difference term and the trajectory, per step" in md
    assert "| 4 | 0.04 |" in md  # scale 4: cfg's median over steps and seeds
    assert "Per step at scale 4 (median over 4 seeds" in md
    assert (
        "| c - u is a hundredth of either base term | cfg 4: median ‖c - u‖ / ‖u‖ over steps and seeds 0.04 | diff_ratio | - | not held: 4.0 hundredths"
        in md
    )
    assert "![difference-term](difference-term.png)" in md
    with Image.open(tmp_path / "difference-term.png") as im:
        assert im.width == 720 and im.height > 700
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert len(lines) == report.images  # every cell's rows are kept
    assert {"arm", "seed", "columns", "rows"} <= set(lines[0])


def test_a_study_without_rows_says_so_and_draws_no_difference_plot(tmp_path: Path) -> None:
    def plain(request: GenerationRequest) -> tuple[Image.Image, dict]:
        return Image.new("RGB", (64, 64)), {"model_evaluations": request.steps}

    report = run_study(CFG, tmp_path, sample_fn=plain, model_description="plain", log=lambda _: None)
    assert "(no per-step rows: this study's sampler kept none)" in report.markdown.read_text()
    assert not (tmp_path / "difference-term.png").exists() and not (tmp_path / "steps.jsonl").exists()


def test_the_study_on_the_tiny_model_measures_real_rows(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    from engine.models import load_bundle
    from tnr_tui.services.study import engine_sampler

    bundle = load_bundle(str(tiny_sdxl_dir), device="cpu")
    cfg = StudyConfig(
        samples=2,
        steps=3,
        scales={"cfg": (3.0,), "cfg++": (0.5,), "tnr-cfg": (3.0,)},
        budgets=(2,),
        solvers=("euler",),
        model=str(tiny_sdxl_dir),
        width=64,
        height=64,
    )
    run_study(cfg, tmp_path, sample_fn=engine_sampler(bundle), bundle=bundle, log=lambda _: None)
    data = json.loads((tmp_path / "study.json").read_text())["difference_term"]
    (entry,) = data["scales"]
    ratios = entry["cfg"]["per_step_median"]
    assert len(ratios) == 3 and all(0 < r < 10 for r in ratios)
    assert entry["path_length"]["cfg"][0] > 0 and entry["path_length"]["tnr-cfg"][0] > 0
    assert (tmp_path / "difference-term.png").is_file()
