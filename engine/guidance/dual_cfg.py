"""dual-cfg: two conditionings (ComfyUI's DualCFGGuider): the prompt c, a second prompt m (`cond2`), and u.

    regular:  den = ren = u + g (m - u) + g1 (c - m)          g = cfg_cond2_negative (--scale), g1 = cfg_conds
    nested:   den = ren = u + g (m + g1 (c - m) - u)

As ComfyUI, the regular style skips u when g = 1 (then m + g1 (c - m)) and m too when g1 = 1 as well (c): the
evaluations per step follow. Linear in the predictions, so the same in eps, x0 and v space (ComfyUI combines
the model's denoised outputs). The second prompt is a parameter of the method (empty: zero conditioning where
the model family zeroes an empty negative, MATH.md 7).
"""

from __future__ import annotations

import math

from engine.guidance.base import GuidanceMethod, Pair, Predictions, StepInfo
from engine.units import GUIDANCE, Param


def dual_cfg(c, m, u, g: float, g1: float, nested: bool = False):  # noqa: ANN001, ANN201 (tensors)
    """ComfyUI's DualCFGGuider: u + g (m - u) + g1 (c - m), or nested u + g (m + g1 (c - m) - u)."""
    if nested:
        return u + g * (m + g1 * (c - m) - u)
    return u + g * (m - u) + g1 * (c - m)


@GUIDANCE.register
class DualCfg(GuidanceMethod):
    name = "dual-cfg"
    aliases = ("dualcfg", "DualCFGGuider")
    summary = "dual CFG: the prompt against a second prompt, and the second prompt against the negative"
    kinds = ("uncond", "cond2", "cond")
    default_scale = 8.0
    scale_help = "cfg_cond2_negative g: the second prompt against the negative"
    params = (
        Param("cond2", "", kind="text", help="the second (middle) prompt"),
        Param("cfg_conds", 8.0, help="scale g1 of the prompt against the second prompt"),
        Param("style", "regular", kind="choice", choices=("regular", "nested"), help="how the two scales combine"),
    )
    rank = 72

    def extra_texts(self) -> dict[str, str]:
        return {"cond2": self.settings["cond2"]}

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        if self.settings["style"] == "nested" or not math.isclose(self.scale, 1.0):
            return self.kinds
        return ("cond",) if math.isclose(self.settings["cfg_conds"], 1.0) else ("cond2", "cond")

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        s = self.settings
        g1 = s["cfg_conds"]
        if p.cond2 is None:  # both scales 1 (regular): the prompt alone
            return p.cond, p.cond
        if p.uncond is None:  # regular, g = 1
            guided = p.cond2 + g1 * (p.cond - p.cond2)
        else:
            guided = dual_cfg(p.cond, p.cond2, p.uncond, self.scale, g1, s["style"] == "nested")
        return guided, guided
