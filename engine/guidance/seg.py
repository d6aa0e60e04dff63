"""seg: Smoothed Energy Guidance (Hong 2024, arXiv:2408.00760), as diffusers' SmoothedEnergyGuidance.

The perturbed pass p is the prompt with the chosen self-attention layers' queries blurred over the token grid
(diffusers' own smoothed-energy hook on their `to_q`), then den = ren = u + g (c - u) + s (c - p),
s = seg_guidance_scale, the perturbed term strictly inside int(seg_guidance_start N) < i <
int(seg_guidance_stop N) (defaults 0 and 1: every step but the first).

As diffusers 0.42 does it, which differs from the paper: a blur sigma above 9999.9 (the default, 9999999) is
a Gaussian blur with the kernel cut to the token grid's side (close to a box filter over the grid, with
reflected borders), and a smaller sigma replaces every query by the mean (the paper's infinite blur). The
hook assumes a square token grid, as the guider does: on a non-square latent it blurs only the first
floor(sqrt(tokens))^2 queries as if they formed a square. `seg_blur_threshold_inf` is not offered: diffusers'
guider takes it but its hook never sees it. (Nor does diffusers 0.42's guider install its own hook in a
modular pipeline: its prepare_models never counts its calls; the lab installs the hook for every perturbed
pass.) Layers are named as the PAG pipelines name them (default "mid",
as SEG's SDXL code). Linear in the predictions.
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
class SmoothedEnergy(PerturbedGuider):
    name = "seg"
    aliases = ("smoothed-energy", "SmoothedEnergyGuidance")
    summary = "Smoothed Energy Guidance: CFG plus a push away from a pass with blurred self-attention queries"
    output_space = False
    perturbed_names = ("seg_guidance_scale", "seg_guidance_start", "seg_guidance_stop")
    params = (
        Param("seg_guidance_scale", 2.8, help="scale s of c - p (0: no perturbed pass)"),
        Param(
            "seg_blur_sigma",
            9999999.0,
            minimum=0.0,
            help="query blur in tokens of the layer's grid (so its reach depends on the resolution); above 9999.9 "
            "a Gaussian cut to the grid, below it the mean (diffusers' rule)",
        ),
        Param("seg_guidance_start", 0.0, minimum=0.0, maximum=1.0, help="p is used strictly after int(start N)"),
        Param("seg_guidance_stop", 1.0, minimum=0.0, maximum=1.0, help="... and strictly before int(stop N)"),
        LayerParam("seg_guidance_layers", "mid", kind="text", help=LAYERS_HELP),
        ORIGINAL_FORMULATION,
        GUIDER_START,
        GUIDER_STOP,
    )
    rank = 62

    def perturbation(self) -> Perturbation:
        return Perturbation(
            "smoothed_energy",
            layer_names(self.settings["seg_guidance_layers"]),
            blur_sigma=float(self.settings["seg_blur_sigma"]),
        )
