"""pag: Perturbed-Attention Guidance (Ahn et al. 2024, arXiv:2403.17377), as diffusers'
PerturbedAttentionGuidance.

The perturbed pass p is the prompt with the chosen self-attention layers' score matrix replaced by the
identity (each token attends only to itself: the attention output is its value), done with diffusers' own
hook, `LayerSkipConfig(skip_attention_scores=True)` (engine/models/perturb.py). Then

    den = ren = u + g (c - u) + s (c - p)         s = perturbed_guidance_scale

with the guider's windows: CFG on int(start N) <= i < int(stop N), the perturbed term strictly inside
int(perturbed_guidance_start N) < i < int(perturbed_guidance_stop N) (its defaults 0.01 and 0.2: on steps 1
to 3 of 20, none of 8). So step 0 is never perturbed for a start >= 0; a negative start (-1) perturbs every
step, which is what the PAG pipelines (StableDiffusionXLPAGPipeline, pag_scale, no window) do. Layers are
named as the pipelines name them (default "mid"; the guider's integer indices do not fit a UNet). A step with
both terms costs three evaluations (u, c, p). Linear in the predictions, so the same in every space.
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
class PerturbedAttention(PerturbedGuider):
    name = "pag"
    aliases = ("perturbed-attention", "PerturbedAttentionGuidance")
    summary = "Perturbed-Attention Guidance: CFG plus a push away from a pass with identity self-attention"
    output_space = False  # affine: u + g (c - u) + s (c - p) commutes with eps <-> v
    perturbed_names = ("perturbed_guidance_scale", "perturbed_guidance_start", "perturbed_guidance_stop")
    params = (
        Param("perturbed_guidance_scale", 2.8, help="scale s of c - p (0: no perturbed pass)"),
        Param(
            "perturbed_guidance_start",
            0.01,
            minimum=-1.0,
            maximum=1.0,
            help="p is used strictly after int(start N) steps; -1: from step 0 (the PAG pipelines)",
        ),
        Param("perturbed_guidance_stop", 0.2, minimum=0.0, maximum=1.0, help="... and strictly before int(stop N)"),
        LayerParam("perturbed_guidance_layers", "mid", kind="text", help=LAYERS_HELP),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 60

    def perturbation(self) -> Perturbation:
        return Perturbation("attention_scores", layer_names(self.settings["perturbed_guidance_layers"]))
