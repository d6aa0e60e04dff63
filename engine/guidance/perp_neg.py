"""perp-neg: Perp-Neg (Armandpour et al. 2023, arXiv:2304.04968), as ComfyUI's PerpNegGuider.

With e the empty prompt's prediction (the model's unconditional: zero conditioning where the model family
zeroes an empty negative, MATH.md 7), per image over all non-batch dimensions:

    pos = c - e,  neg = u - e
    perp = neg - ((neg . pos) / ||pos||^2) pos           the part of the negative orthogonal to the prompt
    den = ren = e + g (pos - neg_scale perp)

Only the negative's component orthogonal to the prompt is subtracted, so a negative prompt that overlaps the
prompt does not cancel it. Three evaluations per step (u, c, e). ComfyUI applies it to denoised (x0)
predictions and sums over the whole batch; the projection's coefficient is invariant to the common scale
that takes eps differences to x0 or v differences, so eps, x0 and v give the same image, and per image equals
the batch sum for one image.
"""

from __future__ import annotations

from engine.guidance.base import GuidanceMethod, Pair, Predictions, StepInfo, flat_dot
from engine.units import GUIDANCE, Param


def perp_neg(c, u, e, g: float, neg_scale: float):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """e + g ((c - e) - neg_scale * perp), perp = the part of u - e orthogonal to c - e (per image)."""
    pos, neg = c - e, u - e
    perp = neg - (flat_dot(neg, pos) / flat_dot(pos, pos).clamp_min(1e-20)) * pos
    return e + g * (pos - neg_scale * perp)


@GUIDANCE.register
class PerpNeg(GuidanceMethod):
    name = "perp-neg"
    aliases = ("perpneg", "PerpNegGuider")
    summary = "Perp-Neg: CFG from the empty prompt, subtracting only the negative's part orthogonal to the prompt"
    kinds = ("uncond", "cond", "empty")
    default_scale = 8.0
    scale_help = "cfg scale g of the prompt against the empty prompt"
    params = (Param("neg_scale", 1.0, minimum=0.0, help="weight of the negative's orthogonal part (0: CFG from e)"),)
    rank = 70

    def extra_texts(self) -> dict[str, str]:
        return {"empty": ""}

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        guided = perp_neg(p.cond, p.uncond, p.empty, self.scale, self.settings["neg_scale"])
        return guided, guided
