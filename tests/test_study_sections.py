"""The study's samplers and guidance sections (issues 12 and 13): equal model evaluations, the scale search on
other seeds, the tables, the command's --sections / --skip, and a run on the tiny model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.request import GenerationRequest
from tnr_tui.services.study import (
    SAMPLERS,
    SEARCH_SEED,
    SECTIONS,
    Arm,
    StudyConfig,
    StudyError,
    best_settings,
    guidance_rows,
    method_arm,
    run_study,
    sampler_arm,
    sampler_arms,
    search_arms,
)

EVERY = StudyConfig(sections=SECTIONS)


def test_every_sampler_arm_spends_the_evaluations_of_euler_with_its_method() -> None:
    best = {m: arms[0] for m, arms in search_arms(EVERY).items()}
    for method in EVERY.sampler_methods:
        budget = sampler_arm(EVERY, method, "euler", best).planned_evaluations
        assert budget == (20 if method in ("none", "tnr") else 40)
        for solver in SAMPLERS:
            arm = sampler_arm(EVERY, method, solver, best)
            assert arm is not None and arm.solver == solver and arm.guidance == method
            # two evaluations a step (heun, dpmpp_sde): half the steps, the last step to 0 is first order
            two_stages = solver in ("heun", "dpmpp_sde")
            assert arm.steps == (10 if two_stages else 20)
            assert abs(arm.planned_evaluations - budget) <= (2 if two_stages else 0)
    # the scaled methods share their searched scale on every sampler
    assert {a.scale for a in sampler_arms(EVERY, best) if a.guidance == "cfg"} == {best["cfg"].scale}


def test_guidance_rows_at_equal_evaluations_pag_also_at_equal_steps_and_apg_with_tnr() -> None:
    best = {m: arms[0] for m, arms in search_arms(EVERY).items()}
    rows = dict(guidance_rows(EVERY, best))
    assert list(rows) == ["cfg", "cfg++", "tnr-cfg", "apg", "apg --tnr", "cfg-zero-star", "pag", "pag (equal steps)"]
    evaluations = {role: arm.planned_evaluations for role, arm in rows.items()}
    assert evaluations == {
        "cfg": 40,
        "cfg++": 40,
        "tnr-cfg": 40,
        "apg": 40,
        "apg --tnr": 40,
        "cfg-zero-star": 39,  # its zeroed first step costs one evaluation
        "pag": 39,  # three a step (u, c, perturbed), every step perturbed: 13 steps
        "pag (equal steps)": 60,
    }
    assert (rows["pag"].steps, rows["pag (equal steps)"].steps) == (13, 20)
    pag = rows["pag"].request()
    assert pag.guidance_params["perturbed_guidance_start"] == -1.0
    assert pag.guidance_params["perturbed_guidance_stop"] == 1.0
    # apg at the paper's eta 0, and --tnr on its guided pair, otherwise the same arm
    assert rows["apg"].request().guidance_params == {"eta": 0.0} and not rows["apg"].request().tnr
    assert rows["apg --tnr"].request().tnr and replace(rows["apg --tnr"], tnr=False) == rows["apg"]
    assert rows["apg --tnr"].label == "apg+tnr 1.5 eta=0 euler 20st"
    # the guider's default PAG window would perturb only steps 1-3 of 20: 43 evaluations, not 60
    assert Arm("pag", 1.5, "euler", 20).planned_evaluations == 43


def test_an_arm_without_parameters_keeps_the_label_studies_always_had() -> None:
    assert Arm("tnr-cfg", 1.5, "euler", 20).label == "tnr-cfg 1.5 euler 20st"
    assert method_arm("pag", 3.0, "euler", 13, {"perturbed_guidance_scale": 1.0}).label == (
        "pag 3 s=1 start=-1 stop=1 euler 13st"
    )


def test_sections_are_checked() -> None:
    with pytest.raises(StudyError, match="sections: unknown pictures"):
        StudyConfig(sections=("claims", "pictures"))
    with pytest.raises(StudyError, match="search samples must be at least 2"):
        StudyConfig(sections=("guidance",), search_samples=1)
    with pytest.raises(StudyError, match="scales: apg needs at least one scale"):
        StudyConfig(sections=("guidance",), scales={"cfg": (2.0,)}, rivals=("cfg", "apg"))


def toy_image(request: GenerationRequest, right: bool) -> tuple[Image.Image, dict]:
    from engine.toy import parse_prompt, render

    if right:
        pixels = render(parse_prompt(request.prompt), np.random.default_rng(request.seed))
    else:
        pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    return Image.fromarray(pixels), {"model_evaluations": request.steps}


def small_config(**changes) -> StudyConfig:
    values = dict(
        samples=3,
        steps=4,
        scales={
            "cfg": (2.0, 4.0),
            "cfg++": (0.5,),
            "tnr-cfg": (2.0,),
            "apg": (2.0, 4.0),
            "cfg-zero-star": (2.0,),
            "pag": (2.0,),
        },
        budgets=(4,),
        sections=("samplers", "guidance"),
        samplers=("euler", "heun", "dpmpp_2m_sde"),
        search_samples=4,
    )
    values.update(changes)
    return StudyConfig(**values)


def test_the_search_chooses_on_other_seeds_and_the_sections_report_the_study_seeds(tmp_path: Path) -> None:
    """cfg 4 is right on the search seeds only and cfg 2 on the study's seeds only: the study must pick 4 (it
    never sees how 2 does on the seeds it reports) and report cfg 4's 0 % there."""
    seen: list[GenerationRequest] = []

    def sampler(request: GenerationRequest) -> tuple[Image.Image, dict]:
        seen.append(request)
        search = request.seed > SEARCH_SEED
        if request.guidance == "cfg":
            right = request.scale == (4.0 if search else 2.0)
        else:
            right = request.guidance in ("tnr", "tnr-cfg") or request.tnr
        return toy_image(request, right)

    cfg = small_config()
    report = run_study(cfg, tmp_path, sample_fn=sampler, model_description="fake", log=lambda _: None)
    searched = [r for r in seen if r.seed > SEARCH_SEED]
    reported = [r for r in seen if r.seed <= SEARCH_SEED]
    assert {r.seed for r in searched} == set(range(SEARCH_SEED + 1, SEARCH_SEED + 5))
    assert {r.seed for r in reported} == {1, 2, 3}
    # every candidate of the search was sampled on the search seeds, none of them on the study's seeds
    candidates = {a for arms in search_arms(cfg).values() for a in arms}
    assert len(searched) == 4 * len(candidates)
    assert not any(r.guidance == "cfg" and r.scale == 2.0 for r in reported)
    data = json.loads((tmp_path / "study.json").read_text())
    assert data["search"]["best"]["cfg"] == "cfg 4 euler 4st"
    assert data["search"]["seeds"] == list(range(SEARCH_SEED + 1, SEARCH_SEED + 5))
    # the embedded model's pag perturbs down_blocks.1 (its 2x2 mid block barely changes under identity attention)
    pag = [r for r in seen if r.guidance == "pag"]
    assert pag and {r.guidance_params["perturbed_guidance_layers"] for r in pag} == {"down_blocks.1"}
    assert data["search"]["best"]["pag"] == "pag 2 layers=down_blocks.1 s=1 start=-1 stop=1 euler 4st"
    cfg_arm = next(a for a in data["arms"] if a["label"] == "cfg 4 euler 4st")
    assert cfg_arm["accuracy"] == [0.0, 0.0, 0.0]
    md = report.markdown.read_text()
    assert "## 5. Scale search on other seeds (4 seeds, 90001..90004; Euler, 4 steps)" in md
    assert "| cfg | cfg 4 | 4 | 100% [100, 100] |" in md and "**best**" in md
    assert "(identity self-attention in down_blocks.1, perturbed at every step)" in md  # the layers it searched
    assert "## 6. Samplers at equal model evaluations" in md and "## 7. Guidance methods" in md
    assert "## 1. Single prediction" not in md and "## 3. Solvers" not in md
    # apg --tnr renders right (the fake's TNR), apg does not: 100 points, marked
    assert "| apg --tnr - apg | 100 pts [100, 100] * |" in md
    assert "| TNR as a modifier helps APG | apg --tnr - apg | accuracy | 100 pts [100, 100] | higher |" in md
    assert "| TNR helps on every sampler (one prediction) | tnr - none on 3 samplers | accuracy |" in md
    assert "higher: euler, heun, dpmpp_2m_sde |" in md
    assert "| heun | 2 | 0% [0, 0] | 100% [100, 100] | 0% [0, 0] |" in md  # half the steps, equal evaluations
    assert report.images == 4 * len(candidates) + 3 * len(data["arms"])
    assert [p.name for p in report.plots] == ["samplers.png", "guidance.png", "contact-sheet.png"]
    for plot in report.plots[:2]:  # two panels side by side
        with Image.open(plot) as im:
            assert im.width >= 900 and im.height > 150
    assert set(report.times) == {"scale search", "arms", "samplers", "guidance"}
    assert "- time: scale search " in md


def test_best_settings_break_ties_towards_the_milder_setting() -> None:
    cfg = small_config(sections=("guidance",), rivals=("pag",), pag_scales=(1.0, 3.0))
    from tnr_tui.services.study.running import ArmResult

    search = {
        a: ArmResult(a, [1, 2], {"accuracy": [1.0, 0.0]}, 12, 0.0) for arms in search_arms(cfg).values() for a in arms
    }
    (chosen,) = best_settings(cfg, search, embedded=True).values()
    assert chosen.scale == 2.0 and dict(chosen.guidance_params)["perturbed_guidance_scale"] == 1.0


def test_the_cli_sections_and_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tnr_tui.cli import main

    out = str(tmp_path / "s")
    assert main(["study", "--skip", "claims,solvers,samplers,guidance", "--out", out]) == 2
    assert "--skip leaves no section to run" in capsys.readouterr().err
    assert main(["study", "--sections", "claims,pictures", "--out", out]) == 2
    assert "unknown section 'pictures'" in capsys.readouterr().err
    assert main(["study", "--samplers", "euler,warp", "--out", out]) == 2
    assert "unknown sampler 'warp'" in capsys.readouterr().err
    assert main(["study", "--methods", "cfg,none", "--out", out]) == 2
    assert "unknown guidance method (with a scale) 'none'" in capsys.readouterr().err
    assert main(["study", "--pag-scales", "1,x", "--out", out]) == 2
    assert "--pag-scales" in capsys.readouterr().err


def test_the_new_sections_on_the_tiny_model(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    """The real engine path: the counted evaluations are the planned ones (pag three a step), apg --tnr
    changes apg's images, and the tables and plots are written."""
    from tnr_tui.cli import main

    out = tmp_path / "study"
    args = ["study", "--model", str(tiny_sdxl_dir), "--samples", "2", "--steps", "3", "--width", "64"]
    args += ["--height", "64", "--sections", "samplers,guidance", "--samplers", "euler,dpmpp_2m_sde"]
    args += ["--methods", "cfg,apg,pag", "--search-samples", "2", "--pag-scales", "2"]
    args += ["--scales", "cfg=2", "cfg++=0.5", "tnr-cfg=2", "apg=2", "pag=2", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "study.json").read_text())
    by_label = {a["label"]: a for a in data["arms"]}
    roles = dict(data["roles"]["guidance"])
    assert list(roles) == ["cfg", "apg", "apg --tnr", "pag", "pag (equal steps)"]
    assert by_label[roles["pag"]]["evaluations"] == 6 and by_label[roles["pag"]]["steps"] == 2
    assert by_label[roles["pag (equal steps)"]]["evaluations"] == 9
    assert by_label[roles["apg"]]["evaluations"] == by_label[roles["apg --tnr"]]["evaluations"] == 6
    assert by_label[roles["apg --tnr"]]["tnr"] is True
    assert "perturbed_guidance_layers" not in dict(by_label[roles["pag"]]["guidance_params"])  # the guider's mid
    assert by_label[roles["apg --tnr"]]["colourfulness"] != by_label[roles["apg"]]["colourfulness"]
    for label, arm in by_label.items():
        planned = Arm(
            arm["guidance"],
            arm["scale"],
            arm["solver"],
            arm["steps"],
            guidance_params=tuple(tuple(p) for p in arm["guidance_params"]),
            tnr=arm["tnr"],
        ).planned_evaluations
        assert arm["evaluations"] == planned, label
    assert {a["solver"] for a in data["arms"]} == {"euler", "dpmpp_2m_sde"}
    md = (out / "study.md").read_text()
    assert "## 6. Samplers" in md and "| dpmpp_2m_sde: tnr - none |" in md
    assert (out / "samplers.png").is_file() and (out / "guidance.png").is_file()
    assert "pag: the perturbed pass (identity self-attention in mid) moves c by a median ‖c - p‖ / ‖c - u‖ = " in md
