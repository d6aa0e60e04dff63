"""The study's plots, drawn with PIL (no plotting stack needed on a GPU host): lines with error bars."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tnr_tui.services.study.design import CHECK_NAMES, Arm, StudyConfig, single_arms, two_prediction_arms
from tnr_tui.services.study.running import ArmResult
from tnr_tui.services.study.statistics import mean_ci
from tnr_tui.services.study.tables import _columns
from tnr_tui.services.sweep.spec import matched_steps, reference_budget

# ---- plots (PIL) --------------------------------------------------------------------------------------------

# The guidance methods' own colours (every study has these five).
METHOD_COLOURS: dict[str, tuple[int, int, int]] = {
    "cfg": (31, 119, 180),
    "cfg++": (255, 127, 14),
    "tnr-cfg": (44, 160, 44),
    "none": (127, 127, 127),
    "tnr": (214, 39, 40),
}
# Solvers take these in the order the study lists them (any registered solver, any number of them).
SOLVER_CYCLE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (148, 103, 189),
    (44, 160, 44),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (214, 39, 40),
    (127, 127, 127),
)


def solver_colours(solvers: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """One colour per solver, by position: the cycle, darkened by a third on each pass past its end."""
    colours = {}
    for i, solver in enumerate(dict.fromkeys(solvers)):
        shade = (2 / 3) ** (i // len(SOLVER_CYCLE))
        colours[solver] = tuple(round(c * shade) for c in SOLVER_CYCLE[i % len(SOLVER_CYCLE)])
    return colours  # type: ignore[return-value]


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    lo: list[float]
    hi: list[float]
    colour: tuple[int, int, int]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def draw_panel(
    draw: Any,
    box: tuple[int, int, int, int],
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    font: Any,
    hlines: Sequence[tuple[str, float, tuple[int, int, int]]] = (),
    y_range: tuple[float, float] | None = None,
    dodge: float = 0.0,
) -> None:
    """A line plot with error bars in `box` (x0, y0, x1, y1) of an ImageDraw.

    `y_range` fixes the y axis (accuracy: 0..100, so small differences do not look large); `dodge` shifts
    each series sideways by that many pixels times its index, so overlapping error bars stay readable."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 58, x1 - 10, y0 + 24, y1 - 40
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.lo + s.hi] + [h[1] for h in hlines]
    if not xs or not ys:
        return
    pad = 0.04 * (max(xs) - min(xs))  # keep points off the frame
    xt = nice_ticks(min(xs) - pad, max(xs) + pad)
    yt = nice_ticks(*(y_range or (min(ys), max(ys))))
    xmin, xmax, ymin, ymax = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (x - xmin) / (xmax - xmin or 1.0)
        fy = (y - ymin) / (ymax - ymin or 1.0)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    draw.text((x0 + 4, y0 + 4), title, fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for t in xt:
        x, _ = px(t, ymin)
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x - 10, bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font)
    for t in yt:
        _, y = px(xmin, t)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left + 1, y, right - 1, y), fill=(235, 235, 235))
        draw.text((x0 + 4, y - 7), f"{t:g}", fill=(0, 0, 0), font=font)
    draw.text(((left + right) / 2 - 30, bottom + 22), xlabel, fill=(0, 0, 0), font=font)
    draw.text((left + 4, top + 2), ylabel, fill=(90, 90, 90), font=font)
    for label, value, colour in hlines:
        _, y = px(xmin, value)
        for xa in range(int(left), int(right), 8):
            draw.line((xa, y, min(xa + 4, right), y), fill=colour, width=1)
        draw.text((right - 40, y - 14), label, fill=colour, font=font)
    for k, s in enumerate(series):
        shift = dodge * (k - (len(series) - 1) / 2)
        pts = [(px(x, y)[0] + shift, px(x, y)[1]) for x, y in zip(s.xs, s.ys, strict=True)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
            if s.dashed:
                n = max(int(math.hypot(xb - xa, yb - ya) / 6), 1)
                for k in range(0, n, 2):
                    fa, fb = k / n, min((k + 1) / n, 1.0)
                    draw.line(
                        (xa + fa * (xb - xa), ya + fa * (yb - ya), xa + fb * (xb - xa), ya + fb * (yb - ya)),
                        fill=s.colour,
                        width=2,
                    )
            else:
                draw.line((xa, ya, xb, yb), fill=s.colour, width=2)
        for x, lo, hi in zip(s.xs, s.lo, s.hi, strict=True):
            xa, ya = px(x, lo)
            xa += shift
            _, yb = px(x, hi)
            draw.line((xa, ya, xa, yb), fill=s.colour, width=1)
            draw.line((xa - 3, ya, xa + 3, ya), fill=s.colour)
            draw.line((xa - 3, yb, xa + 3, yb), fill=s.colour)
        for xa, ya in pts:
            draw.ellipse((xa - 3, ya - 3, xa + 3, ya + 3), fill=s.colour)


LEGEND_ROW = 20  # pixels per legend line


def legend_layout(series: list[Series], font: Any, width: int, x0: int = 10) -> list[tuple[int, int, Series]]:
    """(x, row, series) of each legend entry, wrapped to `width` (a study may compare any number of solvers)."""
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x, row, placed = x0, 0, []
    for s in series:
        span = 40 + int(measure.textlength(s.label + (" (dashed)" if s.dashed else ""), font=font))
        if x > x0 and x + span > width:
            x, row = x0, row + 1
        placed.append((x, row, s))
        x += span
    return placed


def draw_legend(draw: Any, y: int, placed: list[tuple[int, int, Series]], font: Any) -> None:
    for x, row, s in placed:
        ya = y + row * LEGEND_ROW
        for xa in range(x, x + 24, 8 if s.dashed else 24):
            draw.line((xa, ya + 7, xa + (4 if s.dashed else 24), ya + 7), fill=s.colour, width=2)
        draw.text((x + 30, ya), s.label + (" (dashed)" if s.dashed else ""), fill=(0, 0, 0), font=font)


def _series(
    rows: list[ArmResult], x_of: Callable[[ArmResult], float], name: str, indices: np.ndarray, **kw: Any
) -> Series:
    stats = [mean_ci(r.values[name], indices) for r in rows]
    scale = 100.0 if name in CHECK_NAMES else 1.0
    return Series(
        xs=[x_of(r) for r in rows],
        ys=[scale * m for m, _, _ in stats],
        lo=[scale * lo for _, lo, _ in stats],
        hi=[scale * hi for _, _, hi in stats],
        **kw,
    )


def _save(image: Any, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
    return path


def plot_metrics_vs_scale(
    cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray, path: Path, embedded: bool
) -> Path:
    """Rows: metrics; columns: cfg, cfg++, tnr-cfg (each its own scale axis); dashed: none and tnr."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    metrics = _columns(embedded, next(iter(results.values())))
    methods = [m for m in ("cfg", "cfg++", "tnr-cfg") if cfg.scales.get(m)]
    pw, ph = 330, 220
    img = Image.new("RGB", (pw * max(len(methods), 1), ph * len(metrics) + 30), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text(
        (6, 8),
        f"metric vs scale (Euler, {cfg.steps} steps, {cfg.samples} seeds, 95% bootstrap CI); "
        "dashed lines: none and tnr",
        fill=(0, 0, 0),
        font=font,
    )
    single = {a.guidance: results[a] for a in single_arms(cfg)}
    for i, name in enumerate(metrics):
        unit = " (%)" if name in CHECK_NAMES else ""
        scale = 100.0 if name in CHECK_NAMES else 1.0
        hlines = [(g, scale * float(np.mean(single[g].values[name])), METHOD_COLOURS[g]) for g in ("none", "tnr")]
        for j, method in enumerate(methods):
            rows = sorted(
                (r for a, r in results.items() if a.guidance == method and a in two_prediction_arms(cfg)),
                key=lambda r: r.arm.scale or 0.0,
            )
            s = _series(
                rows, lambda r: float(r.arm.scale or 0.0), name, indices, label=method, colour=METHOD_COLOURS[method]
            )
            box = (j * pw, 30 + i * ph, (j + 1) * pw, 30 + (i + 1) * ph)
            y_range = (0.0, 100.0) if name in CHECK_NAMES else None
            draw_panel(draw, box, [s], f"{method}: {name}{unit}", "scale", "", font, hlines, y_range=y_range)
    return _save(img, path)


def plot_accuracy_vs_evaluations(
    cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray, path: Path, embedded: bool
) -> Path:
    """Accuracy (or colourfulness without a checker) against model evaluations; solid tnr, dashed none."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    names = ["accuracy", "colourfulness"] if embedded else ["colourfulness", "contrast"]
    colours = solver_colours(cfg.solvers)
    panels: list[list[Series]] = []
    for name in names:
        series = []
        for guidance in ("tnr", "none"):
            for solver in cfg.solvers:
                budgets = [reference_budget(b) for b in cfg.budgets]
                arms = [Arm(guidance, None, solver, matched_steps(solver, guidance, b)) for b in budgets]
                rows = sorted((results[a] for a in dict.fromkeys(arms)), key=lambda r: r.evaluations)
                series.append(
                    _series(
                        rows,
                        lambda r: float(r.evaluations),
                        name,
                        indices,
                        label=f"{solver} {guidance}",
                        colour=colours[solver],
                        dashed=guidance == "none",
                    )
                )
        panels.append(series)
    placed = legend_layout(panels[-1], font, 720)
    legend_rows = 1 + max((row for _, row, _ in placed), default=0)
    img = Image.new("RGB", (720, 2 * 420 + 30 + legend_rows * LEGEND_ROW), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, (name, series) in enumerate(zip(names, panels, strict=True)):
        unit = " (%)" if name in CHECK_NAMES else ""
        draw_panel(
            draw,
            (0, i * 420, 720, (i + 1) * 420),
            series,
            f"{name}{unit} vs model evaluations ({cfg.samples} seeds, 95% bootstrap CI)",
            "model evaluations per image",
            "",
            font,
            y_range=(0.0, 100.0) if name in CHECK_NAMES else None,
            dodge=4.0,
        )
    draw_legend(draw, 2 * 420 + 20, placed, font)
    return _save(img, path)
