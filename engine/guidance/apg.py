"""apg: Adaptive Projected Guidance (Sadat et al. 2024, arXiv:2410.02416), as diffusers' AdaptiveProjectedGuidance.

With d = c - u (per image, over all non-batch dimensions):

    d <- d + momentum * d_prev_running          running average, when adaptive_projected_guidance_momentum is set
    d <- d * min(1, r / ||d||)                   r = adaptive_projected_guidance_rescale (the norm threshold)
    d_par = (d . c^) c^,  d_orth = d - d_par     c^ = c / ||c||, in float64
    den = ren = u + g (d_orth + eta d_par)       (c + g (...) with use_original_formulation)

At eta 1 and ||d|| <= r this is CFG exactly. diffusers' form guides from u with the full scale g; the paper
writes c + (g - 1)(d_orth + eta d_par), which differs from it when eta != 1 (docs/MATH.md 5). The threshold r
is an absolute L2 norm over the whole latent, so the same r clips more at larger resolutions. The momentum
buffer starts at the first step and is updated at every model evaluation where APG is on (as the guider's is
each time it is called). Off outside [start, stop) of the steps and at scale 1: one prediction, c.
"""

from __future__ import annotations

from engine.guidance.base import (
    GUIDER_START,
    GUIDER_STOP,
    ORIGINAL_FORMULATION,
    GuidanceMethod,
    Pair,
    Predictions,
    StepInfo,
    guider_off,
    in_step_window,
    rescale_cfg,
)
from engine.units import GUIDANCE, Param


@GUIDANCE.register
class AdaptiveProjectedGuidance(GuidanceMethod):
    name = "apg"
    aliases = ("adaptive-projected", "AdaptiveProjectedGuidance")
    summary = "Adaptive Projected Guidance: CFG with the parallel part of c - u down-weighted and its norm capped"
    default_scale = 7.5
    scale_help = "guidance_scale g"
    rescale = True
    output_space = True  # nonlinear: on a v-prediction model it combines v, as diffusers' guider
    params = (
        Param("eta", 1.0, help="weight of the part of c - u parallel to c (0 drops it: the oversaturating part)"),
        Param(
            "adaptive_projected_guidance_rescale",
            15.0,
            minimum=0.0,
            help="norm threshold r: c - u is scaled to L2 norm <= r over the whole latent (0 = off); depends on resolution",
        ),
        Param(
            "adaptive_projected_guidance_momentum",
            None,
            optional=True,
            help="momentum of the running c - u (negative values, e.g. -0.5, as the paper; off by default)",
        ),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 50

    def __init__(self, scale, settings=None, *, cfg_rescale: float = 0.0) -> None:  # noqa: ANN001
        super().__init__(scale, settings, cfg_rescale=cfg_rescale)
        self.running = None  # the momentum buffer's running average of c - u (per run, from the first step)

    def active(self, step: StepInfo) -> bool:
        s = self.settings
        return in_step_window(step, s["start"], s["stop"]) and not guider_off(self.scale, s["use_original_formulation"])

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        return self.kinds if self.active(step) else ("cond",)

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        if not self.active(step):
            return p.cond, p.cond
        s = self.settings
        c, u = p.cond, p.uncond
        diff = c - u
        dims = list(range(1, diff.ndim))
        momentum = s["adaptive_projected_guidance_momentum"]
        if momentum is not None:
            self.running = diff if self.running is None else diff + momentum * self.running
            diff = self.running
        threshold = s["adaptive_projected_guidance_rescale"]
        if threshold > 0:
            diff = diff * (threshold / diff.norm(p=2, dim=dims, keepdim=True)).clamp(max=1.0)
        v0, v1 = diff.double(), c.double()
        v1 = v1 / v1.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
        parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
        orthogonal = (v0 - parallel).to(diff.dtype)
        parallel = parallel.to(diff.dtype)
        p.extras.update(apg_parallel=parallel, apg_orthogonal=orthogonal)  # telemetry takes their norms
        base = c if s["use_original_formulation"] else u
        guided = rescale_cfg(base + self.scale * (orthogonal + s["eta"] * parallel), c, self.cfg_rescale)
        return guided, guided
