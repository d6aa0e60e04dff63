"""The plot of the study's difference-term measurement (trajectory.py), drawn with PIL like the other plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tnr_tui.services.study.design import Arm, StudyConfig, single_arms
from tnr_tui.services.study.plots import (
    LEGEND_ROW,
    METHOD_COLOURS,
    Series,
    _save,
    draw_legend,
    draw_panel,
    legend_layout,
)
from tnr_tui.services.study.running import ArmResult
from tnr_tui.services.study.trajectory import _arm, has_rows, per_step, reference_scale


def plot(cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray, path: Path) -> Path:
    """Two panels, log10 y: ||c - u|| / ||u|| per step for cfg and tnr-cfg at the reference scale (a line at
    1/100, the notebook's figure), and x0_change per step (cfg, tnr-cfg solid; none, tnr dashed)."""
    from PIL import Image, ImageDraw, ImageFont

    scale = reference_scale(cfg)
    if scale is None or not has_rows(results):
        raise ValueError("no per-step rows of cfg and tnr-cfg at a shared scale to draw")
    font = ImageFont.load_default(size=12)

    def series(arm: ArmResult | None, name: str, label: str, colour: Any, dashed: bool = False) -> Series | None:
        s = None if arm is None else per_step(arm, name, indices, label)
        if s is None or not s.steps or min(s.lo) <= 0:
            return None
        log = [math.log10(v) for v in s.median]
        return Series(
            label,
            [float(x) for x in s.steps],
            log,
            [math.log10(v) for v in s.lo],
            [math.log10(v) for v in s.hi],
            colour,
            dashed,
        )

    cfg_arm, tnr_arm = _arm(results, "cfg", scale, cfg), _arm(results, "tnr-cfg", scale, cfg)
    none, tnr = (results.get(a) for a in single_arms(cfg))
    ratio = [
        s
        for s in (
            series(cfg_arm, "diff_ratio", f"cfg {scale:g}", METHOD_COLOURS["cfg"]),
            series(tnr_arm, "diff_ratio", f"tnr-cfg {scale:g}", METHOD_COLOURS["tnr-cfg"]),
        )
        if s is not None
    ]
    change = [
        s
        for s in (
            series(cfg_arm, "x0_change", f"cfg {scale:g}", METHOD_COLOURS["cfg"]),
            series(tnr_arm, "x0_change", f"tnr-cfg {scale:g}", METHOD_COLOURS["tnr-cfg"]),
            series(none, "x0_change", "none", METHOD_COLOURS["none"], True),
            series(tnr, "x0_change", "tnr", METHOD_COLOURS["tnr"], True),
        )
        if s is not None
    ]
    if not ratio:
        raise ValueError("no ||c - u|| / ||u|| rows to draw")
    width, height = 720, 380
    placed = legend_layout(change or ratio, font, width)
    legend_rows = 1 + max((row for _, row, _ in placed), default=0)
    img = Image.new("RGB", (width, 2 * height + 30 + legend_rows * LEGEND_ROW), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    n = len(cfg_arm.seeds) if cfg_arm is not None else cfg.samples
    draw_panel(
        draw,
        (0, 0, width, height),
        ratio,
        f"log10 ||c - u|| / ||u|| per step (Euler {cfg.steps} steps, median of {n} seeds, 95% bootstrap CI)",
        "step",
        "",
        font,
        hlines=[("1/100", -2.0, (120, 120, 120))],
        dodge=3.0,
    )
    if change:
        draw_panel(
            draw,
            (0, height, width, 2 * height),
            change,
            "log10 x0_change = ||D_i - D_(i-1)|| / ||D_i|| per step (median of seeds, 95% CI)",
            "step",
            "",
            font,
            dodge=3.0,
        )
    draw_legend(draw, 2 * height + 20, placed, font)
    return _save(img, path)
