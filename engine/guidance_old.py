"""Guidance methods: small pure functions from predictions to a direction pair (den, ren), MATH.md section 5.

Notation: c the conditional eps, u the unconditional (negative-prompt) eps, n the true noise, g the scale,
S = 2 - abar(sigma_next)**p the TNR factor of the step. Every method returns (den, ren); the solvers
(engine.solvers) move along the pair.

`GuidancePlan` resolves a request into which prompts to encode, which of them each step evaluates (one batched
model call per stage) and how the step combines them; the sampler loop knows nothing else about guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.request import GenerationRequest
from engine.schedule import abar_of_sigma
from engine.solvers import Pair

# ---- the methods (MATH.md 5, table) -------------------------------------------------------------------


def no_guidance(c: torch.Tensor) -> Pair:
    """none: den = ren = c."""
    return c, c


def cfg(u: torch.Tensor, c: torch.Tensor, g: float, phi: float = 0.0) -> Pair:
    """Classifier-free guidance: den = ren = u + g (c - u) (CFG-rescaled by phi)."""
    guided = rescale_cfg(u + g * (c - u), c, phi)
    return guided, guided


def cfg_pp(u: torch.Tensor, c: torch.Tensor, g: float, phi: float = 0.0) -> Pair:
    """CFG++ (Chung et al. 2024): the clean estimate is guided, the re-noising uses the unconditional eps."""
    return rescale_cfg(u + g * (c - u), c, phi), u


def tnr(c: torch.Tensor, n: torch.Tensor, S: float) -> Pair:
    """True Noise Removal on a single prediction: den = ren = n + S (c - n)."""
    pushed = n + S * (c - n)
    return pushed, pushed


def tnr_cfg(u: torch.Tensor, c: torch.Tensor, n: torch.Tensor, g: float, S: float, phi: float = 0.0) -> Pair:
    """TNR on the CFG-guided eps: den = ren = n + S (u + g (c - u) - n)."""
    guided, _ = cfg(u, c, g, phi)
    return tnr(guided, n, S)


# ---- the pieces they share -----------------------------------------------------------------------------


def tnr_factor(abar_next: float, p: float = 0.25) -> float:
    """S = 2 - abar(sigma_next)**p: from ~1.68 on the first of 15 SDXL trailing steps to 1 at sigma 0."""
    return 2.0 - abar_next**p


def n_prompt_base(predictions: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
    """The N-prompt base: B = mean(p_i), base = B + sum_i s_i (p_i - B)."""
    B = sum(predictions) / len(predictions)
    return B + sum(s * (p - B) for s, p in zip(scales, predictions, strict=True))


def equivalent_cfg_scale(scales: Sequence[float]) -> float | None:
    """For two prompts [u, c] with scales [s0, s1] the base is CFG with g = (1 + s1 - s0) / 2; None for N != 2."""
    if len(scales) != 2:
        return None
    s0, s1 = scales
    return (1.0 + s1 - s0) / 2.0


def rescale_cfg(guided: torch.Tensor, c: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023, diffusers' `rescale_noise_cfg`): match the guided eps' std to c's, mix by phi."""
    if phi == 0:
        return guided
    dims = list(range(1, guided.ndim))
    rescaled = guided * (c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


# ---- the plan of a run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepGuidance:
    """How one step combines its batched predictions: which prompt rows it evaluates and the pair function."""

    rows: tuple[int, ...]  # indices into GuidancePlan.texts, in the order of the batched call
    plan: GuidancePlan
    S: float | None  # the TNR factor, held fixed for all stages of the step
    inside_window: bool

    def pair(self, predictions: torch.Tensor, true_noise: torch.Tensor) -> Pair:
        """(den, ren) from the predictions of one batched call (one row per entry of `rows`)."""
        preds = [predictions[i : i + 1] for i in range(len(self.rows))]
        plan = self.plan
        if not self.inside_window or plan.method == "none":
            return no_guidance(preds[0])
        if plan.method == "tnr":
            return tnr(preds[0], true_noise, self.S)
        if plan.n_prompt:
            # The N-prompt base stands where u + g (c - u) stands in the two-prompt rules.
            base = rescale_cfg(n_prompt_base(preds, plan.scales), preds[plan.rescale_reference], plan.cfg_rescale)
            if plan.method == "cfg":
                return base, base
            if plan.method == "cfg++":
                return base, preds[0]  # the first prompt plays the negative
            return tnr(base, true_noise, self.S)
        u, c = preds
        if plan.method == "cfg":
            return cfg(u, c, plan.scale, plan.cfg_rescale)
        if plan.method == "cfg++":
            return cfg_pp(u, c, plan.scale, plan.cfg_rescale)
        return tnr_cfg(u, c, true_noise, plan.scale, self.S, plan.cfg_rescale)


@dataclass(frozen=True)
class GuidancePlan:
    """A request's guidance, resolved: the texts to encode and, per step, the rows to evaluate.

    Rows of `texts`: the two-prompt form is [negative, prompt]; the N-prompt form is the N prompts, then the
    request's prompt where it is not among them (it is the conditional prediction outside the sigma window).
    """

    method: str
    texts: tuple[str, ...]
    guided_rows: tuple[int, ...]  # what a step inside the window evaluates
    conditional_row: int  # c: what `none`, `tnr` and steps outside the window evaluate
    scale: float
    scales: tuple[float, ...]  # N-prompt form: per-prompt scales (empty otherwise)
    tnr_power: float
    cfg_rescale: float
    sigma_min: float | None
    sigma_max: float | None
    rescale_reference: int = 0  # N-prompt form: the prompt whose std CFG rescale matches (the largest scale)

    @property
    def n_prompt(self) -> bool:
        return bool(self.scales)

    @property
    def uses_tnr(self) -> bool:
        return self.method in ("tnr", "tnr-cfg")

    @property
    def equivalent_cfg_scale(self) -> float | None:
        if self.n_prompt:
            return equivalent_cfg_scale(self.scales)
        return self.scale if self.method in ("cfg", "cfg++", "tnr-cfg") else None

    @classmethod
    def from_request(cls, request: GenerationRequest) -> GuidancePlan:
        method = request.guidance
        common = dict(
            method=method,
            scale=request.effective_scale,
            tnr_power=request.tnr_power,
            cfg_rescale=request.cfg_rescale,
            sigma_min=request.guidance_sigma_min,
            sigma_max=request.guidance_sigma_max,
        )
        if method in ("none", "tnr"):
            return cls(texts=(request.prompt,), guided_rows=(0,), conditional_row=0, scales=(), **common)
        if request.prompts:
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
                guided_rows=tuple(range(len(scales))),
                conditional_row=conditional_row,
                scales=scales,
                rescale_reference=reference,
                **common,
            )
        return cls(
            texts=(request.negative_prompt, request.prompt), guided_rows=(0, 1), conditional_row=1, scales=(), **common
        )

    def in_window(self, sigma: float) -> bool:
        """Guidance applies while the step's start sigma lies in [sigma_min, sigma_max] (either end optional)."""
        if self.sigma_min is not None and sigma < self.sigma_min:
            return False
        return not (self.sigma_max is not None and sigma > self.sigma_max)

    def for_step(self, sigma: float, sigma_next: float) -> StepGuidance:
        inside = self.in_window(sigma)
        S = tnr_factor(abar_of_sigma(sigma_next), self.tnr_power) if self.uses_tnr else None
        rows = self.guided_rows if inside else (self.conditional_row,)
        return StepGuidance(rows=rows, plan=self, S=S, inside_window=inside)
