"""The study's design: its configuration, its arms (one grid cell each, sampled over all seeds) and the prompts.

Sections (`StudyConfig.sections`; the command's `--sections` / `--skip`):

- claims: the notebook's claims (study.md 1, 2 and 4): none vs tnr, cfg / cfg++ / tnr-cfg over a scale range,
  the difference term from the telemetry rows;
- solvers: euler, heun and rk4 at equal model evaluations with and without TNR (study.md 3);
- samplers: the common samplers at equal model evaluations, each with none, tnr, cfg, cfg++ and tnr-cfg;
- guidance: the methods TNR competes with (cfg, cfg++, tnr-cfg, apg, cfg-zero-star, pag) each at its best
  setting, at equal model evaluations (pag also at equal steps), and `apg --tnr` vs `apg`.

The samplers and guidance sections use each method's best setting from a scale search on *other* seeds
(SEARCH_SEED + 1, ...; Euler at the study's step count), as engine/toy/evaluate.py does, so the numbers they
report on seeds 1..N are not fitted to those seeds. (Section 2's "best scale" is chosen on the seeds it reports,
as it always was; it says so.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engine.request import EMBEDDED_MODEL, GenerationRequest
from tnr_tui.services.cells import GridCell, frozen_params
from tnr_tui.services.sweep.spec import MAX_SEEDS, matched_steps, reference_budget

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

SECTIONS: tuple[str, ...] = ("claims", "solvers", "samplers", "guidance")
# What a StudyConfig samples unless told otherwise: the notebook's sections (what callers of the API always
# got). `tnr-lab study` runs every section unless --sections / --skip say otherwise.
NOTEBOOK_SECTIONS: tuple[str, ...] = ("claims", "solvers")
# The samplers researchers use every day (issue 12), in the order the tables list them.
SAMPLERS: tuple[str, ...] = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_sde",
    "uni_pc",
    "ddim",
    "lms",
)
SAMPLER_METHODS: tuple[str, ...] = ("none", "tnr", "cfg", "cfg++", "tnr-cfg")
# The guidance methods TNR competes with (issue 13), each at its best setting.
RIVALS: tuple[str, ...] = ("cfg", "cfg++", "tnr-cfg", "apg", "cfg-zero-star", "pag")
# Settings every arm of a method samples with, searched or not:
# - apg at eta 0, the paper's setting (diffusers' default eta 1 is CFG exactly while ||c - u|| stays under the
#   norm threshold, and on the embedded model's 4x8x8 latent it stays far under the default 15);
# - pag perturbed at every step (start -1, stop 1, as the PAG pipelines do); the guider's default window
#   (0.01, 0.2) perturbs only steps 1-3 of 20.
FIXED_PARAMS: dict[str, dict[str, Any]] = {
    "apg": {"eta": 0.0},
    "pag": {"perturbed_guidance_start": -1.0, "perturbed_guidance_stop": 1.0},
}
# On the embedded model (64x64 images, an 8x8 latent) the UNet's mid block works at 2x2: identity
# self-attention over 4 tokens moves c by about 2 % of ||c - u|| (measured from the telemetry's perturbed_term,
# 20 Euler steps), so pag at the guider's default "mid" is CFG. down_blocks.1 is its lowest-resolution
# attention with room to perturb (4x4 tokens; ||c - p|| about 2 ||c - u||), the role SDXL's 32x32 mid plays.
EMBEDDED_PAG_LAYERS = "down_blocks.1"
SEARCH_SEED = 90_000  # the scale search samples seeds 90001, 90002, ... (engine/toy/evaluate.py's SEARCH_SEED)


class StudyError(ValueError):
    """Bad study arguments; the message is meant for the user."""


@dataclass(frozen=True)
class StudyConfig:
    samples: int = 32
    steps: int = 20
    # Scale grids: cfg, cfg++ and tnr-cfg are section 2's arms; every method the samplers and guidance
    # sections use is searched over its grid (on the search seeds).
    scales: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "cfg": (1.5, 3.0, 5.0, 7.5),
            "cfg++": (0.2, 0.4, 0.6, 0.8, 1.0),
            "tnr-cfg": (1.5, 3.0, 5.0, 7.5),
            "apg": (1.5, 3.0, 5.0, 7.5, 10.0),
            "cfg-zero-star": (1.5, 3.0, 5.0, 7.5),
            "pag": (1.5, 3.0, 5.0),
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
    sections: tuple[str, ...] = NOTEBOOK_SECTIONS
    samplers: tuple[str, ...] = SAMPLERS
    sampler_methods: tuple[str, ...] = SAMPLER_METHODS
    # The samplers section's budget, in Euler steps: `sampler_budget` evaluations for one-prediction methods,
    # twice that for two-prediction ones; None: `steps`.
    sampler_budget: int | None = None
    rivals: tuple[str, ...] = RIVALS
    search_samples: int = 32  # seeds of the scale search (SEARCH_SEED + 1, ...)
    pag_scales: tuple[float, ...] = (1.0, 3.0)  # pag's perturbed_guidance_scale grid (with its scale grid)
    # The self-attention layers pag perturbs. "auto": EMBEDDED_PAG_LAYERS on the embedded model, else the
    # guider's "mid" (run_study resolves it once it knows the model).
    pag_layers: str = "auto"
    # (path, weight) of each LoRA every arm samples with (the request's `loras`, as `sweep --lora` gives every
    # cell); the arms' labels stay as they are: study.md's header names the LoRAs once.
    loras: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise StudyError(f"samples must be at least 2 (a confidence interval needs spread), got {self.samples}")
        # Every arm's seeds are planned up front: a typo of a few digits filled the memory for minutes.
        for name, count in (("samples", self.samples), ("search samples", self.search_samples)):
            if count > MAX_SEEDS:
                raise StudyError(f"{name} must be at most {MAX_SEEDS} (a sweep's seed limit), got {count}")
        if self.steps < 1:
            raise StudyError(f"steps must be at least 1, got {self.steps}")
        if not self.budgets or min(self.budgets) < 1:
            raise StudyError("budgets must be whole numbers of at least 1")
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown or not self.sections:
            raise StudyError(
                f"sections: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}"
            )
        if self.searches and self.search_samples < 2:
            raise StudyError(f"search samples must be at least 2, got {self.search_samples}")
        if self.sampler_budget is not None and self.sampler_budget < 1:
            raise StudyError(f"sampler budget must be at least 1, got {self.sampler_budget}")
        for method in self.searched_methods:
            if not self.scales.get(method):
                raise StudyError(f"scales: {method} needs at least one scale to search")
        if "pag" in self.searched_methods and not self.pag_scales:
            raise StudyError("pag scales: give at least one perturbed_guidance_scale")
        from engine.request import LoraSpec, validate_field

        try:
            object.__setattr__(self, "loras", tuple((str(p), float(w)) for p, w in self.loras))
        except (TypeError, ValueError):
            raise StudyError(f"loras: give (path, weight) pairs, got {self.loras!r}") from None
        message = validate_field("loras", tuple(LoraSpec(p, w) for p, w in self.loras))
        if message:
            raise StudyError(message)

    def has(self, section: str) -> bool:
        return section in self.sections

    @property
    def searches(self) -> bool:
        """Whether the study searches scales on other seeds (the samplers and guidance sections need them)."""
        return bool(self.searched_methods)

    @property
    def searched_methods(self) -> tuple[str, ...]:
        """The scaled methods whose best setting a section needs, in the order of their first use."""
        methods: list[str] = []
        if self.has("samplers"):
            methods += [m for m in self.sampler_methods if _scaled(m)]
        if self.has("guidance"):
            methods += [m for m in self.rivals if _scaled(m)]
        return tuple(dict.fromkeys(methods))

    @property
    def samplers_budget(self) -> int:
        return self.sampler_budget or self.steps


def resolve_pag_layers(cfg: StudyConfig, embedded: bool) -> StudyConfig:
    """`cfg` with pag_layers "auto" made concrete for the model (EMBEDDED_PAG_LAYERS or "mid")."""
    if cfg.pag_layers != "auto":
        return cfg
    return replace(cfg, pag_layers=EMBEDDED_PAG_LAYERS if embedded else "mid")


def _scaled(method: str) -> bool:
    from engine.units import GUIDANCE

    return GUIDANCE.get(method).uses_scale


# Short names of unit parameters in arm labels (tables are read by people; study.json keeps the full names).
LABEL_NAMES: dict[str, str] = {
    "perturbed_guidance_scale": "s",
    "perturbed_guidance_start": "start",
    "perturbed_guidance_stop": "stop",
    "perturbed_guidance_layers": "layers",
}


@dataclass(frozen=True)
class Arm(GridCell):
    """One configuration sampled over all seeds: the lab's grid cell, plus `--tnr` on the method's guided pair
    (engine.request's `tnr`; the sweep's cells have no use for it yet)."""

    tnr: bool = False

    @property
    def label(self) -> str:
        if not self.tnr and not self.guidance_params and not self.solver_params:
            return super().label  # the labels studies always had
        scale = "" if self.scale is None else f" {self.scale:g}"
        params = "".join(
            f" {LABEL_NAMES.get(k, k)}={v:g}" if isinstance(v, float) else f" {LABEL_NAMES.get(k, k)}={v}"
            for k, v in self.guidance_params + self.solver_params
        )
        return f"{self.guidance}{'+tnr' if self.tnr else ''}{scale}{params} {self.solver} {self.steps}st"

    def request(self, base: GenerationRequest | None = None, **changes: Any) -> GenerationRequest:
        if self.tnr:
            changes.setdefault("tnr", True)
        return super().request(base, **changes)


def method_arm(method: str, scale: float | None, solver: str, steps: int, params: Mapping[str, Any] = ()) -> Arm:
    """An arm of `method` with its fixed study settings (FIXED_PARAMS) and `params` on top."""
    merged = {**FIXED_PARAMS.get(method, {}), **dict(params)}
    return Arm(method, scale if _scaled(method) else None, solver, steps, guidance_params=frozen_params(merged))


def equal_evaluations(arm: Arm, budget: int) -> Arm:
    """`arm` at the step count whose planned evaluations (engine.evaluations, its unit parameters included: a
    PAG window changes the count) are nearest `budget`; ties: fewer steps."""
    from engine.evaluations import steps_for_budget

    return arm.with_steps(steps_for_budget(arm.with_steps(1).request(), budget))


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
    """The arms that need no scale search (the claims and solvers sections), each once."""
    arms: list[Arm] = []
    if cfg.has("claims"):
        arms += single_arms(cfg) + two_prediction_arms(cfg)
    if cfg.has("solvers"):
        arms += solver_arms(cfg)
    return list(dict.fromkeys(arms))


# ---- the scale search and the sections that use it ------------------------------------------------------------


def search_seeds(cfg: StudyConfig) -> list[int]:
    return [SEARCH_SEED + k for k in range(1, cfg.search_samples + 1)]


def search_arms(cfg: StudyConfig) -> dict[str, list[Arm]]:
    """method -> its candidate settings (Euler, the study's steps): every scale of its grid (pag: times every
    perturbed scale)."""
    out: dict[str, list[Arm]] = {}
    for method in cfg.searched_methods:
        extra: list[dict[str, Any]] = [{}]
        if method == "pag":
            layers = {} if cfg.pag_layers in ("auto", "mid") else {"perturbed_guidance_layers": cfg.pag_layers}
            extra = [{"perturbed_guidance_scale": float(s), **layers} for s in cfg.pag_scales]
        out[method] = [method_arm(method, s, "euler", cfg.steps, e) for s in cfg.scales[method] for e in extra]
    return out


def best_settings(cfg: StudyConfig, search: Mapping[Arm, Any], embedded: bool) -> dict[str, Arm]:
    """method -> its best searched arm: the highest mean accuracy (embedded) or colourfulness over the search
    seeds; ties: the smaller scale (then the smaller parameters), the milder setting."""
    key = "accuracy" if embedded else "colourfulness"
    best: dict[str, Arm] = {}
    for method, arms in search_arms(cfg).items():
        tried = [a for a in arms if a in search]
        if tried:
            best[method] = max(
                tried,
                key=lambda a: (
                    float(np.mean(search[a].values[key])),
                    -(a.scale or 0.0),
                    tuple(
                        -float(v)
                        for _, v in a.guidance_params
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    ),
                ),
            )
    return best


def _sampler_base(cfg: StudyConfig, method: str, best: Mapping[str, Arm]) -> Arm:
    chosen = best.get(method)
    scale = chosen.scale if chosen is not None else None
    params = dict(chosen.guidance_params) if chosen is not None else {}
    return method_arm(method, scale, "euler", cfg.samplers_budget, params)


def sampler_arm(cfg: StudyConfig, method: str, solver: str, best: Mapping[str, Arm]) -> Arm | None:
    """`method` at its best setting on `solver`, at the evaluations of Euler with it (None: no setting found)."""
    if _scaled(method) and method not in best:
        return None
    base = _sampler_base(cfg, method, best)
    budget = base.planned_evaluations
    return equal_evaluations(replace(base, solver=solver), budget)


def sampler_arms(cfg: StudyConfig, best: Mapping[str, Arm]) -> list[Arm]:
    if not cfg.has("samplers"):
        return []
    arms = [sampler_arm(cfg, m, s, best) for s in cfg.samplers for m in cfg.sampler_methods]
    return list(dict.fromkeys(a for a in arms if a is not None))


def guidance_budget(cfg: StudyConfig, best: Mapping[str, Arm]) -> int:
    """The guidance section's evaluations per image: CFG's at the study's steps (two per step)."""
    cfg_arm = best.get("cfg") or method_arm("cfg", 1.5, "euler", cfg.steps)
    return cfg_arm.with_steps(cfg.steps).planned_evaluations


def guidance_rows(cfg: StudyConfig, best: Mapping[str, Arm]) -> list[tuple[str, Arm]]:
    """(role, arm) of the guidance section: each method at its best setting and equal evaluations, pag also at
    equal steps, and apg with --tnr at apg's setting."""
    if not cfg.has("guidance"):
        return []
    budget = guidance_budget(cfg, best)
    rows: list[tuple[str, Arm]] = []
    for method in cfg.rivals:
        if method not in best:
            continue
        arm = equal_evaluations(best[method], budget)
        rows.append((method, arm))
        if method == "pag" and arm.steps != cfg.steps:
            rows.append(("pag (equal steps)", best[method].with_steps(cfg.steps)))
        if method == "apg":
            rows.append(("apg --tnr", equal_evaluations(replace(best[method], tnr=True), budget)))
    return rows


def guidance_arms(cfg: StudyConfig, best: Mapping[str, Arm]) -> list[Arm]:
    return list(dict.fromkeys(arm for _, arm in guidance_rows(cfg, best)))


def reported_arms(cfg: StudyConfig, best: Mapping[str, Arm]) -> list[Arm]:
    """Every arm sampled on the study's seeds, each once: the fixed ones, then those the search decided."""
    return list(dict.fromkeys(all_arms(cfg) + sampler_arms(cfg, best) + guidance_arms(cfg, best)))


def study_evaluations(cfg: StudyConfig, best: Mapping[str, Arm] | None = None) -> int:
    """Model evaluations the whole study spends, for the time estimate: the scale search's and every reported
    arm's (without `best`, the search's first candidates stand in for the best settings: only PAG's perturbed
    scale changes a count, and its grid's first value is counted)."""
    searched = search_arms(cfg)
    total = cfg.search_samples * sum(a.planned_evaluations for arms in searched.values() for a in arms)
    stand_in = best if best is not None else {m: arms[0] for m, arms in searched.items() if arms}
    return total + cfg.samples * sum(a.planned_evaluations for a in reported_arms(cfg, stand_in))


def prompt_for_seed(seed: int, cfg: StudyConfig, embedded: bool) -> str:
    """Seed s always gets the same prompt: on the embedded model a fixed shuffle of every toy scene."""
    if embedded:
        from engine.toy import all_scenes

        scenes = all_scenes()
        order = np.random.default_rng(2026).permutation(len(scenes))
        return scenes[int(order[(seed - 1) % len(scenes)])].prompt
    prompts = cfg.prompts or GENERAL_PROMPTS
    return prompts[(seed - 1) % len(prompts)]


def section_of(arm: Arm, cfg: StudyConfig, best: Mapping[str, Arm]) -> list[str]:
    """The sections an arm belongs to (an arm several sections share is sampled once)."""
    out = []
    if cfg.has("claims") and arm in single_arms(cfg) + two_prediction_arms(cfg):
        out.append("claims")
    if cfg.has("solvers") and arm in solver_arms(cfg):
        out.append("solvers")
    if arm in sampler_arms(cfg, best):
        out.append("samplers")
    if arm in guidance_arms(cfg, best):
        out.append("guidance")
    return out
