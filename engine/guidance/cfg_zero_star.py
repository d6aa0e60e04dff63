"""cfg-zero-star: CFG-Zero* (Fan et al. 2025, arXiv:2503.18886), as diffusers' ClassifierFreeZeroStarGuidance.

Per image, over all non-batch dimensions (float32):

    alpha = (c . u) / (||u||^2 + 1e-8)           the optimised scale of u
    den = ren = alpha u + g (c - alpha u)       (c + g (c - alpha u) with use_original_formulation)
    the first `zero_init_steps` steps: the prediction is 0 (in the model's output space: v = 0 on a v model)

Nonlinear (alpha depends on the predictions), so it combines in the model's output space. Zero-init comes
first, as in the guider: it holds even at scale 1 or outside start/stop (the lab's sigma window still comes
before everything: a step outside it moves along c). A zero-init step costs one evaluation here (its output
is not used; the guider's pipeline evaluates both predictions), and CFG rescale is not applied to it
(diffusers' rescale of an all-zero prediction divides by its zero std: NaN).
"""

from __future__ import annotations

from engine.guidance.base import (
    GUIDER_START,
    GUIDER_STOP,
    ORIGINAL_FORMULATION,
    DiffusersGuider,
    Pair,
    Predictions,
    StepInfo,
    flat_dot,
)
from engine.units import GUIDANCE, Param


def zero_star_alpha(c, u, eps: float = 1e-8):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """alpha = (c . u) / (||u||^2 + eps) per image, computed in float32 as the guider does."""
    c32, u32 = c.float(), u.float()
    return (flat_dot(c32, u32) / (flat_dot(u32, u32) + eps)).to(c.dtype)


@GUIDANCE.register
class ClassifierFreeZeroStar(DiffusersGuider):
    name = "cfg-zero-star"
    aliases = ("cfg-zero*", "cfg_zero_star", "ClassifierFreeZeroStarGuidance")
    summary = "CFG-Zero*: CFG from an optimally scaled u, and zero predictions on the first steps"
    params = (
        Param("zero_init_steps", 1, kind="int", minimum=0, help="steps at the start whose prediction is zero"),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 52

    def zero(self, step: StepInfo) -> bool:
        return step.index < self.settings["zero_init_steps"]

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        return ("cond",) if self.zero(step) else super().needs(step)

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        c = p.cond
        if self.zero(step):
            zero = c.new_zeros(c.shape)
            return zero, zero
        if not self.cfg_active(step):
            return self.finish(c, c)
        u = p.uncond * zero_star_alpha(c, p.uncond)
        return self.finish(self.base(c, u) + self.scale * (c - u), c)
