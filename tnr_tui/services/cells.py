"""The one grid-cell type of every comparison: a sweep's cells, the study's arms and the Compare screen's tiles.

A cell is a sampling configuration (guidance method and scale, solver, steps, and the units' own parameters),
optionally with the prompt and seed of one image. Its planned model evaluations come from engine.evaluations,
the count the sampler reports, so equal-evaluation comparisons mean the same thing everywhere. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.request import GenerationRequest


def frozen_params(params: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A unit's parameters as a hashable, ordered tuple (cells are dict keys and set members)."""
    return tuple(sorted((params or {}).items()))


@dataclass(frozen=True)
class GridCell:
    guidance: str
    scale: float | None
    solver: str
    steps: int
    prompt: str = ""
    seed: int = 0
    guidance_params: tuple[tuple[str, Any], ...] = ()
    solver_params: tuple[tuple[str, Any], ...] = ()
    loras: tuple[tuple[str, float], ...] = ()  # (path, weight) of each LoRA the cell samples with

    @property
    def label(self) -> str:
        """method [scale] [params] solver Nst [LoRAs]: how tables, sheets and tiles name the configuration."""
        from engine.loras import lora_name

        scale = "" if self.scale is None else f" {self.scale:g}"
        params = "".join(f" {k}={v}" for k, v in self.guidance_params + self.solver_params)
        loras = "".join(f" {lora_name(path)}:{weight:g}" for path, weight in self.loras)
        return f"{self.guidance}{scale}{params} {self.solver} {self.steps}st{loras}"

    @property
    def key(self) -> str:
        """A stable text key (sweeps match cells against their CSV rows and the history with it)."""
        scale = "" if self.scale is None else repr(float(self.scale))
        fields: list[Any] = [self.prompt, self.guidance, scale, self.solver, self.steps, self.seed]
        if self.guidance_params or self.solver_params:
            fields.append({"guidance": dict(self.guidance_params), "solver": dict(self.solver_params)})
        if self.loras:  # only then: the keys of cells without LoRAs stay what they were
            fields.append({"loras": [[path, float(weight)] for path, weight in self.loras]})
        return json.dumps(fields, sort_keys=True)

    def request(self, base: GenerationRequest | None = None, **changes: Any) -> GenerationRequest:
        """The cell's request: `base` (or a plain request) with the cell's fields and `changes` on top."""
        values = dict(
            guidance=self.guidance,
            scale=self.scale,
            solver=self.solver,
            steps=self.steps,
            guidance_params=dict(self.guidance_params),
            solver_params=dict(self.solver_params),
            **changes,
        )
        if self.loras:
            values.setdefault("loras", tuple(self.loras))
        if self.prompt or base is None:
            values.setdefault("prompt", self.prompt)
            values.setdefault("seed", self.seed)
        return base.replace(**values) if base is not None else GenerationRequest(**values)

    @property
    def planned_evaluations(self) -> int:
        from engine.evaluations import planned_evaluations

        return planned_evaluations(self.request())

    def with_steps(self, steps: int) -> GridCell:
        from dataclasses import replace

        return replace(self, steps=steps)


def cell_of_request(request: Mapping[str, Any]) -> GridCell:
    """The cell of a recorded request (a dict as the history stores it), scale resolved as the sweep plans it."""
    from engine.units import GUIDANCE

    method = request["guidance"]
    unit = GUIDANCE.get(method) if method in GUIDANCE else None
    scale = request.get("scale")
    if unit is None or not unit.uses_scale:
        scale = None
    elif scale is None:
        scale = unit.default_scale
    return GridCell(
        guidance=method,
        scale=scale,
        solver=request["solver"],
        steps=int(request["steps"]),
        prompt=request["prompt"],
        seed=int(request["seed"]),
        guidance_params=frozen_params(request.get("guidance_params")),
        solver_params=frozen_params(request.get("solver_params")),
        loras=tuple((lora["path"], float(lora.get("weight", 1.0))) for lora in request.get("loras") or []),
    )
