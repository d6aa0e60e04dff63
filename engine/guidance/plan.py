"""A request's guidance, resolved: which prompts to encode, which of them each step evaluates, how it combines.

The sampler loop knows nothing else about guidance. Per step, `GuidancePlan.for_step` says which rows of the
encoded texts the step's batched model call evaluates (and which go through a perturbed pass), and
`StepGuidance.pair` turns that call's output into the direction pair, applying the two things every method
shares:

- the lab's sigma window (`guidance_sigma_min/max`): a step whose *start* sigma lies outside it evaluates
  only the conditional prompt and moves along c (fewer evaluations, counted exactly);
- True Noise Removal as a modifier: where the method has it on, every eps of the pair becomes n + S (e - n),
  with S fixed per step from its end sigma (MATH.md 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.guidance.base import (
    GuidanceMethod,
    Pair,
    Predictions,
    StepInfo,
    abar_of_sigma,
    eps_to_v,
    equivalent_cfg_scale,
    tnr_factor,
    tnr_push,
    v_to_eps,
)
from engine.units import GUIDANCE

if TYPE_CHECKING:
    import torch

    from engine.request import GenerationRequest


@dataclass(frozen=True)
class StepGuidance:
    """How one step evaluates and combines: the rows of its batched call and the pair function."""

    rows: tuple[int, ...]  # indices into GuidancePlan.texts, in the order of the batched call
    kinds: tuple[str, ...]  # the prediction kind of each row ("perturbed" rows go through the perturbed pass)
    plan: GuidancePlan
    info: StepInfo
    inside_window: bool

    @property
    def S(self) -> float | None:
        return self.info.S

    @property
    def evaluations(self) -> int:
        """Model evaluations per stage of this step (per image)."""
        return len(self.rows)

    @property
    def normal_rows(self) -> tuple[int, ...]:
        return tuple(r for r, k in zip(self.rows, self.kinds, strict=True) if k != "perturbed")

    @property
    def perturbed_rows(self) -> tuple[int, ...]:
        return tuple(r for r, k in zip(self.rows, self.kinds, strict=True) if k == "perturbed")

    def pair(
        self,
        predictions: torch.Tensor,
        true_noise: torch.Tensor,
        perturbed: torch.Tensor | None = None,
        *,
        x: torch.Tensor | None = None,
        sigma: float | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Pair:
        """(den, ren) from the predictions of one batched call (`batch` rows per entry of `normal_rows`, in
        order) and, where the step has one, the perturbed pass's output. `x` and `sigma` (the point of the
        evaluation) are needed where a method combines in a v-prediction model's output space. `extras`, when
        given, receives what the method put in `Predictions.extras` (telemetry, engine/telemetry.py)."""
        batch = true_noise.shape[0]
        rows = [predictions[j * batch : (j + 1) * batch] for j in range(len(self.normal_rows))]
        plan = self.plan
        by_kind = dict(zip([k for k in self.kinds if k != "perturbed"], rows, strict=False))
        if not self.inside_window:
            return by_kind["cond"], by_kind["cond"]
        # The model's output space (MATH.md 5): a v-prediction model's nonlinear guidance sees v, as diffusers'.
        convert = plan.prediction_type == "v_prediction" and plan.method.acts_in_output_space()
        if convert:
            if x is None or sigma is None:
                raise ValueError(f"{plan.name} on a v-prediction model needs the point (x, sigma) of the evaluation")
            rows = [eps_to_v(r, x, sigma) for r in rows]
            by_kind = dict(zip(by_kind, rows, strict=True))
            perturbed = None if perturbed is None else eps_to_v(perturbed, x, sigma)
        if plan.n_prompt:
            preds = Predictions(
                cond=rows[0],
                prompts=tuple(rows),
                scales=plan.scales,
                rescale_reference=plan.rescale_reference,
                true_noise=true_noise,
            )
        else:
            preds = Predictions(
                cond=by_kind["cond"],
                uncond=by_kind.get("uncond"),
                perturbed=perturbed,
                true_noise=true_noise,
                empty=by_kind.get("empty"),
                cond2=by_kind.get("cond2"),
            )
        den, ren = plan.method.combine(preds, self.info)
        if extras is not None:
            extras.update(preds.extras)
        if convert:
            same = ren is den
            den = v_to_eps(den, x, sigma)
            ren = den if same else v_to_eps(ren, x, sigma)
        if self.info.S is None:
            return den, ren
        # TNR as a modifier (MATH.md 5): every eps of the pair is pushed, the re-noising one too.
        pushed = tnr_push(den, true_noise, self.info.S)
        return pushed, pushed if ren is den else tnr_push(ren, true_noise, self.info.S)


@dataclass(frozen=True)
class GuidancePlan:
    """A request's guidance, resolved.

    Rows of `texts`: the two-prompt form is [negative, prompt] (or [prompt] for methods of one prediction);
    the N-prompt form is the N prompts, then the request's prompt where it is not among them (it is the
    conditional prediction outside the sigma window).
    """

    method: GuidanceMethod
    texts: tuple[str, ...]
    rows_of_kind: dict[str, int]  # two-prompt form: kind -> row
    guided_rows: tuple[int, ...]  # N-prompt form: the prompts' rows
    conditional_row: int  # c: what steps outside the window evaluate
    scale: float
    scales: tuple[float, ...]  # N-prompt form: per-prompt scales (empty otherwise)
    tnr_power: float
    uses_tnr: bool
    sigma_min: float | None
    sigma_max: float | None
    rescale_reference: int = 0
    prediction_type: str = "epsilon"  # the model's output (MATH.md 5: where nonlinear methods combine)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def n_prompt(self) -> bool:
        return bool(self.scales)

    @property
    def equivalent_cfg_scale(self) -> float | None:
        if self.n_prompt:
            return equivalent_cfg_scale(self.scales)
        return self.scale if self.method.uses_scale else None

    @classmethod
    def from_request(cls, request: GenerationRequest, prediction_type: str = "epsilon") -> GuidancePlan:
        """The plan of a request; `prediction_type` is the model's ("epsilon" or "v_prediction")."""
        unit = GUIDANCE.get(request.guidance)
        method = unit(
            request.effective_scale, getattr(request, "guidance_params", None), cfg_rescale=request.cfg_rescale
        )
        method.run_seed = request.seed
        common: dict[str, Any] = dict(
            method=method,
            scale=request.effective_scale,
            tnr_power=request.tnr_power,
            uses_tnr=unit.tnr or bool(getattr(request, "tnr", False)),
            sigma_min=request.guidance_sigma_min,
            sigma_max=request.guidance_sigma_max,
            prediction_type=prediction_type,
        )
        if request.prompts and unit.n_prompt:
            texts = [p.text for p in request.prompts]
            scales = tuple(p.scale for p in request.prompts)
            if request.prompt in texts:
                conditional_row = texts.index(request.prompt)
            else:
                conditional_row = len(texts)
                texts.append(request.prompt)
            reference = max(range(len(scales)), key=lambda i: scales[i])
            return cls(
                texts=tuple(texts),
                rows_of_kind={"cond": conditional_row},
                guided_rows=tuple(range(len(scales))),
                conditional_row=conditional_row,
                scales=scales,
                rescale_reference=reference,
                **common,
            )
        texts = [request.negative_prompt, request.prompt] if unit.uses_negative() else [request.prompt]
        rows = {"cond": len(texts) - 1}
        if unit.uses_negative():
            rows["uncond"] = 0
        for kind, text in method.extra_texts().items():  # appended: the rows above stay where they were
            rows[kind] = len(texts)
            texts.append(text)
        rows["perturbed"] = rows[unit.perturbed_prompt] if "perturbed" in unit.kinds else rows["cond"]
        return cls(
            texts=tuple(texts), rows_of_kind=rows, guided_rows=(), conditional_row=rows["cond"], scales=(), **common
        )

    def in_window(self, sigma: float) -> bool:
        """Guidance applies while the step's start sigma lies in [sigma_min, sigma_max] (either end optional)."""
        if self.sigma_min is not None and sigma < self.sigma_min:
            return False
        return not (self.sigma_max is not None and sigma > self.sigma_max)

    def for_step(self, sigma: float, sigma_next: float, index: int = 0, steps: int = 1) -> StepGuidance:
        inside = self.in_window(sigma)
        S = tnr_factor(abar_of_sigma(sigma_next), self.tnr_power) if self.uses_tnr else None
        info = StepInfo(index=index, steps=steps, sigma=sigma, sigma_next=sigma_next, S=S)
        if not inside:
            return StepGuidance((self.conditional_row,), ("cond",), self, info, inside_window=False)
        if self.n_prompt:
            return StepGuidance(self.guided_rows, ("prompt",) * len(self.guided_rows), self, info, True)
        kinds = self.method.needs(info)
        rows = tuple(self.rows_of_kind[k] for k in kinds)
        return StepGuidance(rows, tuple(kinds), self, info, inside_window=True)

    def evaluations(self, sigmas: Sequence[float] | None, steps: int) -> list[int]:
        """Evaluations per stage of each step (the prediction count; the solver multiplies by its stages).
        Without a grid every step counts as inside the sigma window (an upper bound when a window is set)."""
        counts = []
        for i in range(steps):
            if sigmas is None:
                info = StepInfo(index=i, steps=steps, sigma=float("nan"), sigma_next=float("nan"))
                counts.append(len(self.guided_rows) if self.n_prompt else len(self.method.needs(info)))
            else:
                counts.append(self.for_step(sigmas[i], sigmas[i + 1], i, steps).evaluations)
        return counts
