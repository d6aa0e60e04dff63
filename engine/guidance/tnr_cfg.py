"""tnr-cfg: True Noise Removal on CFG's output, den = ren = n + S (u + g (c - u) - n) (cfg with TNR on)."""

from __future__ import annotations

from engine.guidance.base import tnr_push
from engine.guidance.cfg import Cfg, cfg
from engine.units import GUIDANCE


def tnr_cfg(u, c, n, g: float, S: float, phi: float = 0.0):  # noqa: ANN001, ANN201 (tensors; torch-free module)
    """TNR on the CFG-guided eps: den = ren = n + S (u + g (c - u) - n)."""
    guided, _ = cfg(u, c, g, phi)
    pushed = tnr_push(guided, n, S)
    return pushed, pushed


@GUIDANCE.register
class TnrCfg(Cfg):
    name = "tnr-cfg"
    aliases = ("tnr_cfg",)
    summary = "True Noise Removal on CFG: n + S (u + g (c - u) - n)"
    tnr = True
    rank = 40
