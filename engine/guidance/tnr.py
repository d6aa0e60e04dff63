"""tnr: True Noise Removal on the conditional prediction alone, den = ren = n + S (c - n) (docs/MATH.md 5).

We know the exact initial noise n, so the single prediction is pushed away from it by S = 2 - abar(sigma_next)^p,
a factor that follows the trained schedule. It costs no second model call.
"""

from __future__ import annotations

from engine.guidance.base import GuidanceMethod, Pair, Predictions, StepInfo, tnr_push
from engine.units import GUIDANCE


def tnr(c, n, S: float):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """True Noise Removal on a single prediction: den = ren = n + S (c - n)."""
    pushed = tnr_push(c, n, S)
    return pushed, pushed


@GUIDANCE.register
class TrueNoiseRemoval(GuidanceMethod):
    name = "tnr"
    aliases = ("true-noise-removal",)
    summary = "True Noise Removal: n + S (c - n), one prediction"
    kinds = ("cond",)
    uses_scale = False
    tnr = True
    rank = 30

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        return p.cond, p.cond  # the plan applies n + S (e - n) to every method with TNR on
