"""autoguidance: AutoGuidance (Karras et al. 2024, arXiv:2406.02507) in diffusers' form (AutoGuidance guider).

The paper guides a model with a smaller, less trained version of itself. The lab offers what diffusers'
guider does, with one model: the "bad version" is the same UNet with the chosen transformer blocks dropped
(diffusers' layer-skip hook, `LayerSkipConfig(dropout=...)`: dropout 1 skips them; below 1 their output goes
through dropout, whose masks the lab seeds from the run's seed and the evaluation's index so a run repeats).
As in the guider, the degraded pass sees the negative prompt and takes u's place:

    den = ren = u_bad + g (c - u_bad)              (c + g (c - u_bad) with use_original_formulation)

Two evaluations per step (c, and u through the degraded model). A second, weaker model directory (the
paper's form) is not offered: the lab loads one model per run. Layers are named as the PAG pipelines name
self-attention layers (default "mid"; the guider's indices are a DiT's). Linear in the predictions.
"""

from __future__ import annotations

from engine.guidance.base import (
    GUIDER_START,
    GUIDER_STOP,
    LAYERS_HELP,
    ORIGINAL_FORMULATION,
    DiffusersGuider,
    LayerParam,
    Pair,
    Perturbation,
    Predictions,
    StepInfo,
    layer_names,
)
from engine.units import GUIDANCE, Param


@GUIDANCE.register
class AutoGuidance(DiffusersGuider):
    name = "autoguidance"
    aliases = ("auto-guidance", "AutoGuidance")
    summary = "AutoGuidance (diffusers' form): CFG against the negative prompt through the model with blocks dropped"
    kinds = ("cond", "perturbed")
    perturbed_prompt = "uncond"
    output_space = False
    params = (
        LayerParam("auto_guidance_layers", "mid", kind="text", help=LAYERS_HELP),
        Param(
            "dropout",
            1.0,
            minimum=0.0,
            maximum=1.0,
            help="dropout of the chosen blocks' output in the degraded pass (1: skip them; seeded per run)",
        ),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 66

    def __init__(self, scale, settings=None, *, cfg_rescale: float = 0.0) -> None:  # noqa: ANN001
        super().__init__(scale, settings, cfg_rescale=cfg_rescale)
        self.passes = 0  # perturbed passes so far: each gets its own dropout seed

    def needs(self, step: StepInfo) -> tuple[str, ...]:
        return ("cond", "perturbed") if self.cfg_active(step) else ("cond",)

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        c = p.cond
        if not self.cfg_active(step):
            return self.finish(c, c)
        return self.finish(self.base(c, p.perturbed) + self.scale * (c - p.perturbed), c)

    def perturbation(self) -> Perturbation:
        self.passes += 1
        return Perturbation(
            "layer_skip",
            layer_names(self.settings["auto_guidance_layers"]),
            skip_attention=True,
            skip_ff=True,
            dropout=float(self.settings["dropout"]),
            seed=(self.run_seed * 1_000_003 + self.passes) % 2**63,
        )
