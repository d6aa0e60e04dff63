"""cfg++: CFG++ (Chung et al. 2024, arXiv:2406.08070): the clean estimate is guided, the re-noising uses u.

den = u + g (c - u), ren = u. Its scale is small (typically 0.3 to 1.2). In the N-prompt form the first
prompt plays the negative.
"""

from __future__ import annotations

from engine.guidance.base import GuidanceMethod, Pair, Predictions, StepInfo, rescale_cfg
from engine.units import GUIDANCE


def cfg_pp(u, c, g: float, phi: float = 0.0):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """CFG++: the clean estimate is guided, the re-noising uses the unconditional eps."""
    return rescale_cfg(u + g * (c - u), c, phi), u


@GUIDANCE.register
class CfgPlusPlus(GuidanceMethod):
    name = "cfg++"
    aliases = ("cfg_pp", "cfgpp")
    summary = "CFG++: guided clean estimate, unconditional re-noising"
    default_scale = 0.8
    scale_help = "CFG++ scale (typically 0.3 to 1.2)"
    n_prompt = True
    rescale = True
    rank = 20

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        return p.cfg_base(self.scale, self.cfg_rescale), p.negative
