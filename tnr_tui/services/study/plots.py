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


# ---- dot plots of the samplers and guidance sections ---------------------------------------------------------

Interval = tuple[float, float, float]  # mean, lo, hi


@dataclass
class DotSeries:
    label: str
    colour: tuple[int, int, int]
    values: list[Interval | None]  # one per row; None: not measured


def draw_dots(
    draw: Any,
    box: tuple[int, int, int, int],
    rows: Sequence[str],
    series: Sequence[DotSeries],
    title: str,
    xlabel: str,
    font: Any,
    vline: float | None = None,
) -> None:
    """Rows of labelled dots with horizontal 95 % interval bars (a forest plot), a dashed line at `vline`."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 156, x1 - 12, y0 + 24, y1 - 40
    xs = [v for s in series for t in s.values if t is not None for v in t] + ([vline] if vline is not None else [])
    if not xs or not rows:
        return
    xt = nice_ticks(min(xs), max(xs))
    xmin, xmax = xt[0], xt[-1]

    def px(x: float) -> float:
        return left + (x - xmin) / (xmax - xmin or 1.0) * (right - left)

    draw.text((x0 + 4, y0 + 4), title, fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for t in xt:
        x = px(t)
        draw.line((x, top + 1, x, bottom - 1), fill=(235, 235, 235))
        draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
        draw.text((x - 10, bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font)
    draw.text(((left + right) / 2 - 40, bottom + 22), xlabel, fill=(0, 0, 0), font=font)
    if vline is not None:
        x = px(vline)
        for ya in range(int(top), int(bottom), 8):
            draw.line((x, ya, x, min(ya + 4, bottom)), fill=(90, 90, 90))
    band = (bottom - top) / len(rows)
    for i, name in enumerate(rows):
        yc = top + (i + 0.5) * band
        draw.text((x0 + 4, yc - 7), name, fill=(0, 0, 0), font=font)
        if i:
            draw.line((left + 1, top + i * band, right - 1, top + i * band), fill=(245, 245, 245))
        for k, s in enumerate(series):
            value = s.values[i] if i < len(s.values) else None
            if value is None:
                continue
            y = yc + (k - (len(series) - 1) / 2) * min(band / (len(series) + 1), 10)
            mean, lo, hi = value
            draw.line((px(lo), y, px(hi), y), fill=s.colour, width=2)
            draw.line((px(lo), y - 3, px(lo), y + 3), fill=s.colour)
            draw.line((px(hi), y - 3, px(hi), y + 3), fill=s.colour)
            draw.ellipse((px(mean) - 3, y - 3, px(mean) + 3, y + 3), fill=s.colour)


def _dot_image(
    panels: Sequence[tuple[str, str, Sequence[str], Sequence[DotSeries], float | None]], path: Path, title: str
) -> Path:
    """Panels side by side (title, x label, rows, series, vline), one legend under them."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    rows = max(len(p[2]) for p in panels)
    pw, ph = 460, 80 + max(rows, 1) * max(8 * len(panels[0][3]) + 10, 26)
    legend = [Series(s.label, [], [], [], [], s.colour) for s in panels[0][3]]
    placed = legend_layout(legend, font, pw * len(panels))
    legend_rows = 1 + max((row for _, row, _ in placed), default=0)
    img = Image.new("RGB", (pw * len(panels), ph + 30 + legend_rows * LEGEND_ROW), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((6, 8), title, fill=(0, 0, 0), font=font)
    for j, (panel_title, xlabel, names, series, vline) in enumerate(panels):
        draw_dots(draw, (j * pw, 30, (j + 1) * pw, 30 + ph), names, series, panel_title, xlabel, font, vline)
    draw_legend(draw, ph + 36, placed, font)
    return _save(img, path)


def _scaled_interval(values: Sequence[float], indices: np.ndarray, name: str) -> Interval:
    scale = 100.0 if name in CHECK_NAMES else 1.0
    mean, lo, hi = mean_ci(values, indices)
    return scale * mean, scale * lo, scale * hi


SAMPLER_PAIRS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("tnr", "none", METHOD_COLOURS["tnr"]),
    ("cfg++", "cfg", METHOD_COLOURS["cfg++"]),
    ("tnr-cfg", "cfg", METHOD_COLOURS["tnr-cfg"]),
)


def plot_samplers(
    cfg: StudyConfig,
    results: dict[Arm, ArmResult],
    best: Any,
    indices: np.ndarray,
    path: Path,
    embedded: bool,
) -> Path:
    """Per sampler, the paired differences tnr - none, cfg++ - cfg and tnr-cfg - cfg with their intervals."""
    from tnr_tui.services.study.design import sampler_arm

    names = ["accuracy", "colourfulness"] if embedded else ["colourfulness", "contrast"]
    panels = []
    for name in names:
        series = []
        for a_method, b_method, colour in SAMPLER_PAIRS:
            values: list[Interval | None] = []
            for solver in cfg.samplers:
                a, b = sampler_arm(cfg, a_method, solver, best), sampler_arm(cfg, b_method, solver, best)
                if a in results and b in results:
                    diff = np.asarray(results[a].values[name]) - np.asarray(results[b].values[name])
                    values.append(_scaled_interval(diff, indices, name))
                else:
                    values.append(None)
            series.append(DotSeries(f"{a_method} - {b_method}", colour, values))
        unit = " (points)" if name in CHECK_NAMES else ""
        panels.append((f"{name}{unit}: paired difference", "difference [95% CI]", cfg.samplers, series, 0.0))
    title = (
        f"samplers at equal model evaluations ({cfg.samplers_budget} Euler steps' worth), {cfg.samples} seeds, "
        "paired 95% bootstrap CI"
    )
    return _dot_image(panels, path, title)


def plot_guidance(
    cfg: StudyConfig,
    results: dict[Arm, ArmResult],
    best: Any,
    indices: np.ndarray,
    path: Path,
    embedded: bool,
) -> Path:
    """Each guidance method at its best setting: the measure's mean and interval (a dashed line at cfg's)."""
    from tnr_tui.services.study.design import guidance_rows

    roles = [(role, results[arm]) for role, arm in guidance_rows(cfg, best) if arm in results]
    if not roles:
        raise ValueError("no guidance arms to draw")
    names = ["accuracy", "colourfulness"] if embedded else ["colourfulness", "contrast"]
    panels = []
    for name in names:
        values = [_scaled_interval(r.values[name], indices, name) for _, r in roles]
        labels = [f"{role} ({r.evaluations}ev)" for role, r in roles]
        reference = next((v[0] for (role, _), v in zip(roles, values, strict=True) if role == "cfg"), None)
        unit = " (%)" if name in CHECK_NAMES else ""
        series = [DotSeries(f"{cfg.samples} seeds, 95% bootstrap CI", (31, 119, 180), values)]
        panels.append((f"{name}{unit}", f"{name}{unit}", labels, series, reference))
    return _dot_image(panels, path, "guidance methods at their best settings (Euler); dashed: cfg")
