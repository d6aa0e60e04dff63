"""none: the conditional prediction alone, den = ren = c (one prediction per evaluation)."""

from __future__ import annotations

from engine.guidance.base import GuidanceMethod, Pair, Predictions, StepInfo
from engine.units import GUIDANCE


def no_guidance(c):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """none: den = ren = c."""
    return c, c


@GUIDANCE.register
class NoGuidance(GuidanceMethod):
    name = "none"
    summary = "the conditional prediction alone (1 evaluation per stage)"
    kinds = ("cond",)
    uses_scale = False
    rank = 0

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        return no_guidance(p.cond)
