"""cfg: classifier-free guidance (Ho and Salimans 2022), den = ren = u + g (c - u), with CFG rescale (phi).

In the N-prompt form the N-prompt base B + sum s_i (p_i - B) stands where u + g (c - u) stands (MATH.md 5).
"""

from __future__ import annotations

from engine.guidance.base import GuidanceMethod, Pair, Predictions, StepInfo, rescale_cfg
from engine.units import GUIDANCE


def cfg(u, c, g: float, phi: float = 0.0):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """Classifier-free guidance: den = ren = u + g (c - u) (CFG-rescaled by phi)."""
    guided = rescale_cfg(u + g * (c - u), c, phi)
    return guided, guided


@GUIDANCE.register
class Cfg(GuidanceMethod):
    name = "cfg"
    aliases = ("classifier-free",)
    summary = "classifier-free guidance: u + g (c - u)"
    default_scale = 5.0
    scale_help = "CFG scale g (1 = the conditional prediction)"
    n_prompt = True
    rescale = True
    rank = 10

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        guided = p.cfg_base(self.scale, self.cfg_rescale)
        return guided, guided
