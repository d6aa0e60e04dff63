"""What a sweep is: its arguments, its spec (the id is a hash of it), its cells and their evaluation budgets.

Model evaluations (`--match-evaluations`): the one count (engine.evaluations). The reference budget is
`--steps` of Euler with one prediction; each solver/method gets the step count whose planned evaluations are
nearest it (ties: the fewer steps, so no cell spends more than its tie partner). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.evaluations import planned_evaluations, steps_for_budget
from engine.request import (
    DEFAULT_SCALE,
    EMBEDDED_MODEL,
    GUIDANCE_METHODS,
    MAX_SEED,
    SOLVERS,
    GenerationRequest,
)
from engine.units import GUIDANCE
from engine.units import SOLVERS as SOLVERS_REGISTRY
from tnr_tui.services.cells import GridCell, cell_of_request, frozen_params

# Methods whose scale means something; the others run once, with no scale.
SCALED_METHODS: tuple[str, ...] = tuple(u.name for u in GUIDANCE if u.uses_scale)
MAX_SEEDS = 10_000


class SweepError(ValueError):
    """Bad sweep arguments or a sweep that cannot continue; the message is meant for the user."""


# ---- model evaluations --------------------------------------------------------------------------------------


def evaluations(solver: str, guidance: str, steps: int) -> int:
    """Model evaluations of one image (engine.evaluations, the one count; the final step to sigma 0 is first order)."""
    if steps < 1:
        raise SweepError(f"steps must be at least 1, got {steps}")
    return planned_evaluations(GenerationRequest(prompt="", solver=solver, guidance=guidance, steps=steps))


def reference_budget(steps: int) -> int:
    """The evaluation budget of `steps` Euler steps with one prediction per step (none or tnr)."""
    return evaluations("euler", "none", steps)


def matched_steps(solver: str, guidance: str, budget: int) -> int:
    """The step count whose evaluations are nearest `budget` (ties: fewer steps); at least 1 step."""
    return steps_for_budget(GenerationRequest(prompt="", solver=solver, guidance=guidance, steps=1), budget)


# ---- argument parsing ---------------------------------------------------------------------------------------


def parse_list(text: str, choices: Sequence[str], what: str, registry: Any = None) -> tuple[str, ...]:
    """'a,b,c' -> ('a', 'b', 'c'), each checked against `choices`, duplicates dropped, order kept. With a
    unit `registry`, an A1111 / ComfyUI alias ("DPM++ 2M") is taken for its unit's name."""
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if registry is not None:
        items = [registry.canonical(t) or t for t in items]
    if not items:
        raise SweepError(f"no {what} given")
    for item in items:
        if item not in choices:
            raise SweepError(f"unknown {what} {item!r}; choose from: {', '.join(choices)}")
    return tuple(dict.fromkeys(items))


def parse_seeds(text: str) -> tuple[int, ...]:
    """'1-4,9,12-13' -> (1, 2, 3, 4, 9, 12, 13)."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise SweepError(f"seeds: cannot read {part!r}; write e.g. 1-16 or 1,2,5-8")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SweepError(f"seeds: the range {part!r} runs backwards")
        if hi > MAX_SEED:  # said here, not by the first cell's request once the model has loaded
            raise SweepError(f"seeds: {part!r} runs past the largest seed {MAX_SEED}")
        if len(seeds) + hi - lo + 1 > MAX_SEEDS:
            raise SweepError(f"seeds: more than {MAX_SEEDS} seeds; is {part!r} a typo?")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise SweepError("no seeds given")
    return tuple(dict.fromkeys(seeds))


def parse_scales(items: Iterable[str]) -> dict[str, tuple[float, ...]]:
    """['cfg=3,5,7', 'cfg++=0.4,0.8'] -> {'cfg': (3.0, 5.0, 7.0), 'cfg++': (0.4, 0.8)}."""
    scales: dict[str, tuple[float, ...]] = {}
    for item in items:
        method, sep, values = item.partition("=")
        method = method.strip().lower()
        method = GUIDANCE.canonical(method) or method  # cfg_pp=0.5 is cfg++'s
        if not sep or not values.strip():
            raise SweepError(f"scales: cannot read {item!r}; write METHOD=V1,V2 (e.g. cfg=3,5,7)")
        if method not in SCALED_METHODS:
            raise SweepError(f"scales: {method!r} takes no scale; scaled methods: {', '.join(SCALED_METHODS)}")
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise SweepError(f"scales: {values!r} are not numbers (in {item!r})") from None
        if not parsed or any(v != v or v in (float("inf"), float("-inf")) for v in parsed):
            raise SweepError(f"scales: {item!r} needs finite numbers")
        scales[method] = tuple(dict.fromkeys(parsed))
    return scales


# ---- the plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSpec:
    """Everything that decides a sweep's cells (its id is a hash of this)."""

    prompts: tuple[str, ...]
    methods: tuple[str, ...] = GUIDANCE_METHODS
    scales: dict[str, tuple[float, ...]] = field(default_factory=dict)
    solvers: tuple[str, ...] = ("euler",)
    steps: int = 20
    match_evaluations: bool = False
    seeds: tuple[int, ...] = (1, 2, 3, 4)
    model: str = EMBEDDED_MODEL
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    schedule: str = "default"
    # LoRAs every cell samples with ((path, weight), ...) and the LoRA axis: each entry one row variant
    # (() = no LoRA beyond the fixed ones); the model's prediction overrides (None: the model's own).
    loras: tuple[tuple[str, float], ...] = ()
    lora_sets: tuple[tuple[tuple[str, float], ...], ...] = ()
    prediction_type: str | None = None
    zero_snr: bool | None = None
    # Units' own parameters, NAME -> value: each applies to every method (solver) of the sweep that declares it.
    guidance_params: dict[str, Any] = field(default_factory=dict)
    solver_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise SweepError("give at least one non-empty --prompt")
        for what, given, names, registry in (
            ("guidance", self.guidance_params, self.methods, GUIDANCE),
            ("solver", self.solver_params, self.solvers, SOLVERS_REGISTRY),
        ):
            declared = {p.name for n in names if n in registry for p in registry.get(n).params}
            unused = sorted(set(given) - declared)
            if unused:
                raise SweepError(f"--{what}-param {', '.join(unused)}: no {what} of this sweep takes it")
        for m in self.methods:
            if m not in GUIDANCE_METHODS:
                raise SweepError(f"unknown guidance method {m!r}; choose from: {', '.join(GUIDANCE_METHODS)}")
        for s in self.solvers:
            if s not in SOLVERS:
                raise SweepError(f"unknown solver {s!r}; choose from: {', '.join(SOLVERS)}")
        if self.steps < 1:
            raise SweepError(f"steps must be at least 1, got {self.steps}")
        unused = sorted(set(self.scales) - set(self.methods))
        if unused:
            raise SweepError(f"scales given for {', '.join(unused)}, which is not in --guidance")

    def scales_of(self, method: str) -> tuple[float | None, ...]:
        if method not in SCALED_METHODS:
            return (None,)
        return self.scales.get(method, (DEFAULT_SCALE[method],))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = {m: list(v) for m, v in sorted(self.scales.items())}
        for k in ("prompts", "methods", "solvers", "seeds"):
            d[k] = list(d[k])
        # The LoRA and prediction fields only when set: a sweep without them keeps the id it had before.
        for k in ("loras", "lora_sets", "prediction_type", "zero_snr", "guidance_params", "solver_params"):
            if d[k] in ((), [], None, {}):
                del d[k]
        if self.loras:
            d["loras"] = [list(p) for p in self.loras]
        if self.lora_sets:
            d["lora_sets"] = [[list(p) for p in s] for s in self.lora_sets]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        d = dict(d)
        d["scales"] = {m: tuple(float(x) for x in v) for m, v in d.get("scales", {}).items()}
        for k in ("prompts", "methods", "solvers", "seeds"):
            if k in d:
                d[k] = tuple(d[k])
        if "loras" in d:
            d["loras"] = tuple((str(p), float(w)) for p, w in d["loras"])
        if "lora_sets" in d:
            d["lora_sets"] = tuple(tuple((str(p), float(w)) for p, w in s) for s in d["lora_sets"])
        return cls(**d)

    def sweep_id(self, model_identity: str = "") -> str:
        """'sw-' + 10 hex digits of the spec's canonical JSON and the model's weights identity: the same
        arguments on the same weights give the same sweep (new weights behind 'embedded' start a new one)."""
        blob = json.dumps({"spec": self.to_dict(), "model": model_identity}, sort_keys=True, separators=(",", ":"))
        return "sw-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def cell_request(
    cell: GridCell, spec: SweepSpec, sweep_id: str, extra_tags: dict[str, str] | None = None
) -> GenerationRequest:
    """The request of one sweep cell: the spec's shared settings, the cell's own, tagged with the sweep."""
    return cell.request(
        negative_prompt=spec.negative_prompt,
        model=spec.model,
        width=spec.width,
        height=spec.height,
        schedule=spec.schedule,
        preview_every=0,  # nobody watches a sweep's previews; skip their cost
        decode_every=0,
        tags={"sweep": sweep_id, **(extra_tags or {})},
        prediction_type=spec.prediction_type,
        zero_snr=spec.zero_snr,
    )


def cell_key_of_request(request: dict[str, Any]) -> str:
    """The cell key of a recorded request (a dict as the history stores it)."""
    return cell_of_request(request).key


def row_label(cell: GridCell) -> str:
    """The contact sheet's row label: method, scale, solver, steps and model evaluations."""
    return f"{cell.label} {cell.planned_evaluations}ev"


def params_of(registry: Any, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The sweep's parameters that the unit `name` declares."""
    declared = {p.name for p in registry.get(name).params} if name in registry else set()
    return {k: v for k, v in given.items() if k in declared}


def plan(spec: SweepSpec) -> list[GridCell]:
    """The cells in sheet order: prompt, then method, scale, solver (rows), then seed (columns)."""
    budget = reference_budget(spec.steps)
    cells = []
    for prompt in spec.prompts:
        for method in spec.methods:
            for scale in spec.scales_of(method):
                for solver in spec.solvers:
                    setting = GridCell(
                        method,
                        scale,
                        solver,
                        spec.steps,
                        guidance_params=frozen_params(params_of(GUIDANCE, method, spec.guidance_params)),
                        solver_params=frozen_params(params_of(SOLVERS_REGISTRY, solver, spec.solver_params)),
                    )
                    if spec.match_evaluations:  # the count of this very setting (a method's window changes it)
                        setting = setting.with_steps(steps_for_budget(setting.request(), budget))
                    for lora_set in spec.lora_sets or ((),):  # the LoRA axis: one row per set
                        loras = tuple(spec.loras) + tuple(lora_set)
                        for seed in spec.seeds:
                            cells.append(replace(setting, prompt=prompt, seed=seed, loras=loras))
    return cells
