"""mag: magnitude-aware guidance (MAMBO-G, arXiv:2508.03442), as diffusers' MagnitudeAwareGuidance.

Per image, over all non-batch dimensions:

    r = ||c - u|| / ||u||
    g' = 1 + (g - 1) exp(-alpha r)              (g exp(-alpha r) with use_original_formulation)
    den = ren = u + g' (c - u)                  (c + g' (c - u))

A large update relative to u shrinks the scale towards 1. r is a ratio of norms, so it does not grow with the
resolution, but it does depend on the space (eps or v): it combines in the model's output space. diffusers'
guider raises on 4-D UNet latents (`torch.norm` over three dims); this one flattens each image.
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
    flat_norm,
)
from engine.units import GUIDANCE, Param


@GUIDANCE.register
class MagnitudeAware(DiffusersGuider):
    name = "mag"
    aliases = ("mambo-g", "MagnitudeAwareGuidance")
    summary = "magnitude-aware guidance (MAMBO-G): the CFG scale shrinks where ||c - u|| / ||u|| is large"
    default_scale = 10.0
    params = (
        Param("alpha", 8.0, help="how strongly a large ||c - u|| / ||u|| pulls the scale towards 1 (0 = plain CFG)"),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 56

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        c = p.cond
        if not self.cfg_active(step):
            return self.finish(c, c)
        u = p.uncond
        diff = c - u
        decay = (-self.settings["alpha"] * flat_norm(diff) / flat_norm(u)).exp()
        if self.settings["use_original_formulation"]:
            scale = self.scale * decay
        else:
            scale = 1.0 + (self.scale - 1.0) * decay
        return self.finish(self.base(c, u) + scale * diff, c)
