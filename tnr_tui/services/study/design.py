"""The study's design: its configuration, its arms (one grid cell each, sampled over all seeds) and the prompts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.request import EMBEDDED_MODEL
from tnr_tui.services.cells import GridCell
from tnr_tui.services.sweep.spec import matched_steps, reference_budget

CHECK_NAMES: tuple[str, ...] = ("accuracy", "colour_ok", "background_ok", "shape_ok")
BOOTSTRAP_RESAMPLES = 2000
SHEET_SEEDS = 8  # columns of the study's contact sheet
# Prompts for models without a checker (SDXL on a GPU host): varied subjects, colours and textures.
GENERAL_PROMPTS: tuple[str, ...] = (
    "a red vintage car parked on a cobblestone street",
    "a bowl of fruit on a wooden table, still life",
    "a lighthouse on a cliff at sunset",
    "portrait of an old fisherman, dramatic lighting",
    "a blue hummingbird next to a pink flower",
    "a snowy mountain village at night",
)


class StudyError(ValueError):
    """Bad study arguments; the message is meant for the user."""


@dataclass(frozen=True)
class StudyConfig:
    samples: int = 32
    steps: int = 20
    scales: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "cfg": (1.5, 3.0, 5.0, 7.5),
            "cfg++": (0.2, 0.4, 0.6, 0.8, 1.0),
            "tnr-cfg": (1.5, 3.0, 5.0, 7.5),
        }
    )
    # Evaluation budgets (in Euler-with-one-prediction steps) of the solver comparison.
    budgets: tuple[int, ...] = (5, 10, 20)
    solvers: tuple[str, ...] = ("euler", "heun", "rk4")
    model: str = EMBEDDED_MODEL
    prompts: tuple[str, ...] = ()  # for models without a checker; empty: GENERAL_PROMPTS
    width: int | None = None
    height: int | None = None
    # "default": the spacing the model's scheduler config names, or trailing where that grid starts low (SDXL's
    # leading at 1-5 steps, MATH.md 7), so arms of different step counts may sample different kinds: study.md
    # and study.json say which. "trailing" gives every arm the same kind.
    schedule: str = "default"

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise StudyError(f"samples must be at least 2 (a confidence interval needs spread), got {self.samples}")
        if self.steps < 1:
            raise StudyError(f"steps must be at least 1, got {self.steps}")
        if not self.budgets or min(self.budgets) < 1:
            raise StudyError("budgets must be whole numbers of at least 1")


# An arm: one configuration sampled over all seeds (the lab's one grid-cell type, without prompt and seed).
Arm = GridCell


def single_arms(cfg: StudyConfig) -> list[Arm]:
    return [Arm("none", None, "euler", cfg.steps), Arm("tnr", None, "euler", cfg.steps)]


def two_prediction_arms(cfg: StudyConfig) -> list[Arm]:
    return [Arm(m, s, "euler", cfg.steps) for m in ("cfg", "cfg++", "tnr-cfg") for s in cfg.scales.get(m, ())]


def solver_arms(cfg: StudyConfig) -> list[Arm]:
    arms = []
    for budget in cfg.budgets:
        for guidance in ("none", "tnr"):
            for solver in cfg.solvers:
                arms.append(Arm(guidance, None, solver, matched_steps(solver, guidance, reference_budget(budget))))
    return arms


def all_arms(cfg: StudyConfig) -> list[Arm]:
    return list(dict.fromkeys(single_arms(cfg) + two_prediction_arms(cfg) + solver_arms(cfg)))


def study_evaluations(cfg: StudyConfig) -> int:
    """Model evaluations the whole study spends (for the time estimate)."""
    return cfg.samples * sum(a.planned_evaluations for a in all_arms(cfg))


def prompt_for_seed(seed: int, cfg: StudyConfig, embedded: bool) -> str:
    """Seed s always gets the same prompt: on the embedded model a fixed shuffle of every toy scene."""
    if embedded:
        from engine.toy import all_scenes

        scenes = all_scenes()
        order = np.random.default_rng(2026).permutation(len(scenes))
        return scenes[int(order[(seed - 1) % len(scenes)])].prompt
    prompts = cfg.prompts or GENERAL_PROMPTS
    return prompts[(seed - 1) % len(prompts)]
