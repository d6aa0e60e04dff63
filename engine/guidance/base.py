"""What every guidance method shares (MATH.md section 5).

A guidance method is one class in one module of this package, registered with `@GUIDANCE.register`: small
and pure, it turns a step's predictions into a direction pair (den, ren) that every solver moves along. Its
class attributes declare it (torch-free); an instance is made per run from the request (its scale and its
`guidance_params`), so state across steps (a momentum buffer) lives on the instance.

Notation: c the conditional eps, u the unconditional (negative-prompt) eps, n the true noise, g the scale,
S = 2 - abar(sigma_next)**p the TNR factor of the step (held fixed for all stages of the step).

Prediction kinds a method asks for: "cond" (the prompt), "uncond" (the negative prompt; zeros or "" as the
model family says), "perturbed" (the prompt through a perturbed pass of the model, one more evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from engine.units import Param, resolve_params

if TYPE_CHECKING:
    import torch

Pair = tuple["torch.Tensor", "torch.Tensor"]

PREDICTION_KINDS = ("uncond", "cond", "perturbed")


# ---- the pieces methods share ---------------------------------------------------------------------------


def tnr_factor(abar_next: float, p: float = 0.25) -> float:
    """S = 2 - abar(sigma_next)**p: from ~1.68 on the first of 15 SDXL trailing steps to 1 at sigma 0."""
    return 2.0 - abar_next**p


def abar_of_sigma(sigma: float) -> float:
    """abar(sigma) = 1 / (1 + sigma**2) (as engine.schedule, for floats; no torch here)."""
    return 1.0 / (1.0 + sigma**2)


def tnr_push(e: torch.Tensor, n: torch.Tensor, S: float) -> torch.Tensor:
    """True Noise Removal on one eps: n + S (e - n)."""
    return n + S * (e - n)


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


# ---- what a method sees ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    """The step a prediction belongs to."""

    index: int  # 0-based
    steps: int
    sigma: float  # the step's start sigma
    sigma_next: float
    S: float | None = None  # the TNR factor, where the run uses TNR


@dataclass
class Predictions:
    """A step's predictions at one point, by kind (each [batch, C, h, w]); the N-prompt form has `prompts`."""

    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    perturbed: torch.Tensor | None = None
    true_noise: torch.Tensor | None = None
    prompts: tuple[torch.Tensor, ...] = ()  # N-prompt form: one per prompt, with `scales`
    scales: tuple[float, ...] = ()
    rescale_reference: int = 0  # N-prompt form: the prompt whose std CFG rescale matches (the largest scale)
    extras: dict[str, float] = field(default_factory=dict)  # telemetry a method adds for the step

    def cfg_base(self, g: float, phi: float = 0.0) -> torch.Tensor:
        """u + g (c - u), CFG-rescaled by phi; in the N-prompt form the N-prompt base stands there (MATH.md 5)."""
        if self.prompts:
            return rescale_cfg(n_prompt_base(self.prompts, self.scales), self.prompts[self.rescale_reference], phi)
        assert self.uncond is not None
        return rescale_cfg(self.uncond + g * (self.cond - self.uncond), self.cond, phi)

    @property
    def negative(self) -> torch.Tensor:
        """u, or in the N-prompt form the first prompt (it plays the negative, MATH.md 7)."""
        if self.prompts:
            return self.prompts[0]
        assert self.uncond is not None
        return self.uncond


class GuidanceMethod:
    """Base of every guidance method unit. Subclasses set the class attributes and implement `combine`."""

    kind: ClassVar[str] = "guidance method"
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ("uncond", "cond")  # the predictions it may ask for, in batch order
    default_scale: ClassVar[float] = 1.0  # the scale a request without one gets (a model's tnr_lab.json may differ)
    uses_scale: ClassVar[bool] = True
    scale_help: ClassVar[str] = "guidance scale"
    n_prompt: ClassVar[bool] = False  # accepts the N-prompt form (per-prompt scales)
    rescale: ClassVar[bool] = False  # accepts CFG rescale (phi)
    tnr: ClassVar[bool] = False  # True Noise Removal is always on (tnr, tnr-cfg)
    params: ClassVar[tuple[Param, ...]] = ()
    rank: ClassVar[int] = 100

    def __init__(self, scale: float, settings: Mapping[str, Any] | None = None, *, cfg_rescale: float = 0.0) -> None:
        self.scale = scale
        self.cfg_rescale = cfg_rescale
        self.settings = resolve_params(type(self), settings)

    @classmethod
    def uses_negative(cls) -> bool:
        return "uncond" in cls.kinds

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        """The prediction kinds of this step (its own window may drop some); the count of evaluations reads it."""
        return self.kinds

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        """(den, ren) from the step's predictions."""
        raise NotImplementedError


# ---- diffusers' guider conventions, for the methods named after its guiders ------------------------------

GUIDER_START = Param("start", 0.0, minimum=0.0, maximum=1.0, help="fraction of the steps before the method starts")
GUIDER_STOP = Param("stop", 1.0, minimum=0.0, maximum=1.0, help="fraction of the steps after which it stops")
ORIGINAL_FORMULATION = Param(
    "use_original_formulation",
    False,
    kind="bool",
    help="guide from c instead of u (the papers' form; diffusers' default is u)",
)


def in_step_window(step: StepInfo, start: float, stop: float) -> bool:
    """diffusers' guider window: int(start N) <= i < int(stop N), a fraction of steps (not a sigma range)."""
    return int(start * step.steps) <= step.index < int(stop * step.steps)


def guider_off(scale: float, original: bool) -> bool:
    """A diffusers guider is off at scale 1 (0 with the original formulation): one prediction, c."""
    return math.isclose(scale, 0.0 if original else 1.0)
