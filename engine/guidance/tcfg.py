"""tcfg: Tangential CFG (Kwon et al. 2025, arXiv:2503.18137), as diffusers' TangentialClassifierFreeGuidance.

Per image, with c and u flattened to rows of a 2 x D matrix M = [c; u] (float32):

    M = U S V^T,  v1 the first right-singular vector
    u' = (u . v1) v1                            u without its component along the second singular direction
    den = ren = u' + g (c - u')                 (c + g (c - u') with use_original_formulation)

Nonlinear (the SVD depends on the predictions): combines in the model's output space.
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
)
from engine.units import GUIDANCE


def tangential_uncond(c, u):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """u projected onto the first right-singular vector of [c; u] (per image), in float32."""
    import torch

    batch = u.shape[0]
    stacked = torch.stack([c, u], dim=1).float().flatten(2)
    _, _, vh = torch.linalg.svd(stacked, full_matrices=False)
    first = vh[:, :1]  # [B, 1, D]
    flat = u.reshape(batch, 1, -1).float()
    projected = torch.matmul(torch.matmul(flat, first.transpose(-2, -1)), first)
    return projected.reshape(u.shape).to(c.dtype)


@GUIDANCE.register
class TangentialCfg(DiffusersGuider):
    name = "tcfg"
    aliases = ("tangential-cfg", "TangentialClassifierFreeGuidance")
    summary = "Tangential CFG: CFG from u with its component off the main singular direction of [c; u] removed"
    params = (ORIGINAL_FORMULATION, GUIDER_START, GUIDER_STOP)
    rank = 54

    def combine(self, p: Predictions, step: StepInfo) -> Pair:
        c = p.cond
        if not self.cfg_active(step):
            return self.finish(c, c)
        u = tangential_uncond(c, p.uncond)
        return self.finish(self.base(c, u) + self.scale * (c - u), c)
