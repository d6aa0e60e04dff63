"""The guidance methods: one module per method, each registering itself with `engine.units.GUIDANCE`.

Importing this package is torch-free. `engine.units.GUIDANCE` lists every method (it imports the modules here
on first use); the names below are the building blocks that the sampler, tests and tools use directly.
"""

from __future__ import annotations

from engine.guidance.base import (
    GuidanceMethod,
    Pair,
    Predictions,
    StepInfo,
    abar_of_sigma,
    equivalent_cfg_scale,
    n_prompt_base,
    rescale_cfg,
    tnr_factor,
    tnr_push,
)
from engine.guidance.cfg import cfg
from engine.guidance.cfg_pp import cfg_pp
from engine.guidance.none import no_guidance
from engine.guidance.plan import GuidancePlan, StepGuidance
from engine.guidance.tnr import tnr
from engine.guidance.tnr_cfg import tnr_cfg

__all__ = [
    "GuidanceMethod",
    "GuidancePlan",
    "Pair",
    "Predictions",
    "StepGuidance",
    "StepInfo",
    "abar_of_sigma",
    "cfg",
    "cfg_pp",
    "equivalent_cfg_scale",
    "n_prompt_base",
    "no_guidance",
    "rescale_cfg",
    "tnr",
    "tnr_cfg",
    "tnr_factor",
    "tnr_push",
]
