"""slg: Skip Layer Guidance (as in Stable Diffusion 3.5), as diffusers' SkipLayerGuidance.

The perturbed pass p is the prompt with the chosen transformer blocks skipped (diffusers' own layer-skip hook:
`LayerSkipConfig(skip_attention, skip_ff)`; both on skips the whole block), then den = ren = u + g (c - u) +
s (c - p), s = skip_layer_guidance_scale, the perturbed term strictly inside int(skip_layer_guidance_start N)
< i < int(skip_layer_guidance_stop N) (defaults 0.01 and 0.2). The guider's layers are indices into a DiT's
block list; on a UNet they are named as the PAG pipelines name self-attention layers (default "mid"): the
blocks holding those layers are skipped. Linear in the predictions.
"""

from __future__ import annotations

from engine.guidance.base import (
    GUIDER_START,
    GUIDER_STOP,
    LAYERS_HELP,
    ORIGINAL_FORMULATION,
    LayerParam,
    Perturbation,
    PerturbedGuider,
    layer_names,
)
from engine.units import GUIDANCE, Param


@GUIDANCE.register
class SkipLayer(PerturbedGuider):
    name = "slg"
    aliases = ("skip-layer", "SkipLayerGuidance")
    summary = "Skip Layer Guidance: CFG plus a push away from a pass that skips transformer blocks"
    output_space = False
    perturbed_names = ("skip_layer_guidance_scale", "skip_layer_guidance_start", "skip_layer_guidance_stop")
    params = (
        Param("skip_layer_guidance_scale", 2.8, help="scale s of c - p (0: no perturbed pass)"),
        Param("skip_layer_guidance_start", 0.01, minimum=0.0, maximum=1.0, help="p strictly after int(start N)"),
        Param("skip_layer_guidance_stop", 0.2, minimum=0.0, maximum=1.0, help="... and strictly before int(stop N)"),
        LayerParam("skip_layer_guidance_layers", "mid", kind="text", help=LAYERS_HELP),
        Param("skip_attention", True, kind="bool", help="skip the blocks' self-attention (LayerSkipConfig)"),
        Param("skip_ff", True, kind="bool", help="skip the blocks' feed-forward (both: the whole block)"),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 64

    @classmethod
    def check_settings(cls, settings):  # noqa: ANN001, ANN206
        if not settings["skip_attention"] and not settings["skip_ff"]:
            return "skip_attention and skip_ff are both off: the pass would not be perturbed"
        return super().check_settings(settings)

    def perturbation(self) -> Perturbation:
        s = self.settings
        return Perturbation(
            "layer_skip",
            layer_names(s["skip_layer_guidance_layers"]),
            skip_attention=s["skip_attention"],
            skip_ff=s["skip_ff"],
        )
