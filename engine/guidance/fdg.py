"""fdg: Frequency-Decoupled Guidance (Sadat et al. 2025, arXiv:2506.19713), as diffusers'
FrequencyDecoupledGuidance.

c and u are split into a Laplacian pyramid of `len(guidance_scales)` levels (kornia's, highest frequency
first; the lowest level is the last Gaussian level), CFG runs per level with that level's scale, and the
pyramid is summed back:

    per level l:  d_l = c_l - u_l,  d_l <- w_l d_par + d_orth (parallel to c_l; w_l = parallel_weights, 1: off)
                  g_l-guided level = u_l + g_l d_l        (c_l + g_l d_l with use_original_formulation)
    den = ren = reconstruct(levels)                         then CFG rescale against c (guidance_rescale_space
                                                            "data"), or per level against c_l ("freq")

The request's flat `cfg_rescale` is diffusers' `guidance_rescale` (one value for every level). A level outside
its own start/stop, or at scale 1, keeps c_l (diffusers 0.42 appends the previous level's c there, which
fails on the shapes: the evident intent is taken). A latent whose sides kornia pads (not divisible by
2^(levels-1)) is guided on the padded pyramid and cropped back (diffusers returns the padded size). The
pyramid levels are fixed sizes in latent pixels, so which frequencies a level holds depends on the
resolution. Needs kornia (`pip install 'tnr-lab[guidance]'`).
"""

from __future__ import annotations

import importlib.util
import math

from engine.guidance.base import (
    ORIGINAL_FORMULATION,
    DiffusersGuider,
    FloatsParam,
    Pair,
    Predictions,
    StepInfo,
    per_level,
    rescale_cfg,
)
from engine.units import GUIDANCE, Param


def laplacian_pyramid(x, levels: int):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """kornia's Laplacian pyramid (reflect borders), highest frequency first."""
    from kornia.geometry.transform import build_laplacian_pyramid

    return build_laplacian_pyramid(x, levels)


def from_pyramid(pyramid):  # noqa: ANN001, ANN201
    """The image of a Laplacian pyramid: from the lowest level, pyrup and add each finer one."""
    from kornia.geometry import pyrup

    image = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        image = pyrup(image) + level
    return image


def project(v0, v1, upcast: bool = True):  # noqa: ANN001, ANN201
    """(parallel, orthogonal) parts of v0 with respect to v1, per image (float64 where `upcast`)."""
    import torch.nn.functional as F

    dtype = v0.dtype
    if upcast:
        v0, v1 = v0.double(), v1.double()
    dims = list(range(1, v0.ndim))
    v1 = F.normalize(v1, dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    orthogonal = v0 - parallel
    return (parallel.to(dtype), orthogonal.to(dtype)) if upcast else (parallel, orthogonal)


WINDOW_HELP = "fraction of the steps; one value, or one per level"


@GUIDANCE.register
class FrequencyDecoupled(DiffusersGuider):
    name = "fdg"
    aliases = ("frequency-decoupled", "FrequencyDecoupledGuidance")
    summary = "Frequency-Decoupled Guidance: CFG per Laplacian-pyramid level, each with its own scale"
    uses_scale = False
    scale_help = "unused: fdg's scales are guidance_scales (one per level)"
    params = (
        FloatsParam(
            "guidance_scales",
            (10.0, 5.0),
            kind="text",
            help="CFG scale per pyramid level, highest frequency first (the levels are fixed latent-pixel "
            "sizes, so what they hold depends on the resolution)",
        ),
        FloatsParam(
            "parallel_weights",
            None,
            kind="text",
            optional=True,
            single=True,
            help="weight of the part of each level's c - u parallel to c (one value or one per level; off: 1)",
        ),
        ORIGINAL_FORMULATION,
        FloatsParam("start", 0.0, kind="text", single=True, minimum=0.0, maximum=1.0, help="start, " + WINDOW_HELP),
        FloatsParam("stop", 1.0, kind="text", single=True, minimum=0.0, maximum=1.0, help="stop, " + WINDOW_HELP),
        Param(
            "guidance_rescale_space",
            "data",
            kind="choice",
            choices=("data", "freq"),
            help="CFG rescale after the pyramid is summed back (data) or per level (freq)",
        ),
        Param("upcast_to_double", True, kind="bool", help="the parallel projection in float64"),
    )
    rank = 58

    def __init__(self, scale, settings=None, *, cfg_rescale: float = 0.0) -> None:  # noqa: ANN001
        super().__init__(scale, settings, cfg_rescale=cfg_rescale)
        if importlib.util.find_spec("kornia") is None:
            from engine.request import RequestError  # what the CLI and the TUI show as one line

            raise RequestError("guidance method 'fdg' needs kornia: pip install 'tnr-lab[guidance]' (or kornia)")
        s = self.settings
        self.scales = [float(g) for g in s["guidance_scales"]]
        levels = len(self.scales)
        self.weights = per_level(1.0 if s["parallel_weights"] is None else s["parallel_weights"], levels)
        self.starts = per_level(s["start"], levels)
        self.stops = per_level(s["stop"], levels)

    @classmethod
    def check_settings(cls, settings):  # noqa: ANN001, ANN206
        levels = len(settings["guidance_scales"])
        for name in ("parallel_weights", "start", "stop"):
            value = settings[name]
            if isinstance(value, (list, tuple)) and len(value) != levels:
                return f"{name} has {len(value)} values but guidance_scales has {levels}"
        starts, stops = per_level(settings["start"], levels), per_level(settings["stop"], levels)
        if any(a > b for a, b in zip(starts, stops, strict=True)):
            return f"start ({settings['start']}) is after stop ({settings['stop']})"
        return None

    def off_scale(self, g: float) -> bool:
        return math.isclose(g, 0.0 if self.settings["use_original_formulation"] else 1.0)

    def level_active(self, step: StepInfo, level: int) -> bool:
        lo, hi = int(self.starts[level] * step.steps), int(self.stops[level] * step.steps)
        return lo <= step.index < hi and not self.off_scale(self.scales[level])

    def cfg_active(self, step: StepInfo) -> bool:
        lo, hi = int(min(self.starts) * step.steps), int(max(self.stops) * step.steps)
        return lo <= step.index < hi and not all(self.off_scale(g) for g in self.scales)

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        c = p.cond
        if not self.cfg_active(step):
            return self.finish(c, c)
        u = p.uncond
        levels = len(self.scales)
        space = self.settings["guidance_rescale_space"]
        pyramid_c, pyramid_u = laplacian_pyramid(c, levels), laplacian_pyramid(u, levels)
        guided = []
        for level in range(levels):
            c_l, u_l = pyramid_c[level], pyramid_u[level]
            if not self.level_active(step, level):
                guided.append(c_l)
                continue
            shift = c_l - u_l
            if not math.isclose(self.weights[level], 1.0):
                parallel, orthogonal = project(shift, c_l, self.settings["upcast_to_double"])
                shift = self.weights[level] * parallel + orthogonal
            pred = self.base(c_l, u_l) + self.scales[level] * shift
            if space == "freq":
                pred = rescale_cfg(pred, c_l, self.cfg_rescale)
            guided.append(pred)
        pred = from_pyramid(guided)[..., : c.shape[-2], : c.shape[-1]]
        if space == "data":
            return self.finish(pred, c)
        return pred, pred
