"""The notebook's own argument, measured per step from every image's telemetry rows (engine.telemetry).

The seed notebook motivates TNR with "the magnitude of the (cond - uncond) difference term ... is on the
order of a hundredth of the magnitude of either base term". Each study image keeps its rows, so the study
reads, for cfg and tnr-cfg at every scale they share (Euler, the study's step count):

- ||c - u|| / ||u|| (`diff_ratio`) at each step: its median over seeds with a 95 % percentile bootstrap
  interval of that median (the study's shared resamples), and its median over every step and seed;
- how TNR's S term changes the trajectory: `x0_change` = ||D_i - D_(i-1)|| / ||D_i|| at each step (median
  over seeds), and per seed the path length sum_i x0_change_i, paired tnr-cfg - cfg (and tnr - none) with
  its bootstrap interval.

TNR leaves c and u themselves alone (it pushes the combined eps), so any difference of diff_ratio between the
arms comes from the different latents each arm's steps visit. The per-step tables use the reference scale:
the middle one of the scales cfg and tnr-cfg share. A study whose sampler kept no rows (a fake sampler in a
test) says so instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tnr_tui.services.study.design import Arm, StudyConfig, single_arms
from tnr_tui.services.study.running import ArmResult
from tnr_tui.services.study.statistics import mean_ci, median_ci

PAIRS = (("cfg", "tnr-cfg"),)  # the two-prediction methods the claim is about (u exists only there)


def common_scales(cfg: StudyConfig) -> list[float]:
    return sorted(set(cfg.scales.get("cfg", ())) & set(cfg.scales.get("tnr-cfg", ())))


def reference_scale(cfg: StudyConfig) -> float | None:
    """The middle scale of those cfg and tnr-cfg share (cfg=1.5,3,5,7.5: 5), None when they share none."""
    scales = common_scales(cfg)
    return scales[len(scales) // 2] if scales else None


def column_matrix(result: ArmResult, name: str) -> np.ndarray | None:
    """[seeds, steps] of one telemetry column over the arm's seeds (NaN where a step has no value); None when
    any seed lacks rows (the sampler kept none)."""
    tables = [result.steps.get(seed) for seed in result.seeds]
    if not tables or any(t is None for t in tables):
        return None
    rows = [
        [math.nan if v is None else float(v) for v in (t.column(name) if name in t.columns else [None] * len(t))]
        for t in tables
    ]
    if len({len(r) for r in rows}) != 1:
        return None
    return np.asarray(rows, dtype=np.float64)


def path_length(result: ArmResult) -> np.ndarray | None:
    """Per seed, sum over steps of x0_change (how far the clean-image estimate travels, relatively)."""
    m = column_matrix(result, "x0_change")
    return None if m is None else np.nansum(m, axis=1)


@dataclass
class StepSeries:
    """A column of one arm, per step: the median over seeds and its bootstrap interval."""

    label: str
    steps: list[int]  # 1-based step numbers
    median: list[float]
    lo: list[float]
    hi: list[float]


def per_step(result: ArmResult, name: str, indices: np.ndarray, label: str) -> StepSeries | None:
    m = column_matrix(result, name)
    if m is None:
        return None
    steps, med, lo, hi = [], [], [], []
    for j in range(m.shape[1]):
        values = m[:, j]
        if np.isnan(values).any():
            continue
        mid, low, high = median_ci(values, indices)
        steps.append(j + 1)
        med.append(mid)
        lo.append(low)
        hi.append(high)
    return StepSeries(label, steps, med, lo, hi)


def has_rows(results: dict[Arm, ArmResult]) -> bool:
    return any(r.steps for r in results.values())


def _arm(results: dict[Arm, ArmResult], method: str, scale: float | None, cfg: StudyConfig) -> ArmResult | None:
    return results.get(Arm(method, scale, "euler", cfg.steps))


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def summary(cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray) -> dict[str, Any]:
    """The numbers study.json keeps and study.md prints (see the module docstring)."""
    out: dict[str, Any] = {"reference_scale": reference_scale(cfg), "scales": []}
    for scale in common_scales(cfg):
        entry: dict[str, Any] = {"scale": scale}
        for method in ("cfg", "tnr-cfg"):
            r = _arm(results, method, scale, cfg)
            m = None if r is None else column_matrix(r, "diff_ratio")
            if m is None:
                continue
            flat = m[~np.isnan(m)]
            entry[method] = {
                "diff_ratio_median": float(np.median(flat)),
                "diff_ratio_first_step": median_ci(m[:, 0], indices),
                "diff_ratio_last_step": median_ci(m[:, -1], indices),
                "per_step_median": [float(np.median(m[:, j])) for j in range(m.shape[1])],
            }
        a, b = _arm(results, "tnr-cfg", scale, cfg), _arm(results, "cfg", scale, cfg)
        la, lb = (None if a is None else path_length(a)), (None if b is None else path_length(b))
        if la is not None and lb is not None:
            entry["path_length"] = {"cfg": mean_ci(lb, indices), "tnr-cfg": mean_ci(la, indices)}
            entry["path_length_difference"] = mean_ci(la - lb, indices)
        out["scales"].append(entry)
    none, tnr = (results.get(a) for a in single_arms(cfg))
    ln, lt = (None if none is None else path_length(none)), (None if tnr is None else path_length(tnr))
    if ln is not None and lt is not None:
        out["single"] = {
            "path_length": {"none": mean_ci(ln, indices), "tnr": mean_ci(lt, indices)},
            "path_length_difference": mean_ci(lt - ln, indices),
        }
    return out


def markdown(cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray) -> list[str]:
    """Section 4 of study.md."""
    lines = [f"## 4. The difference term and the trajectory, per step (Euler, {cfg.steps} steps)", ""]
    if not has_rows(results):
        return lines + ["(no per-step rows: this study's sampler kept none)", ""]
    data = summary(cfg, results, indices)
    scale = data["reference_scale"]
    lines += [
        'The notebook: ‖c - u‖ is "on the order of a hundredth" of ‖u‖. Measured from every image\'s telemetry '
        "rows (c, u: the raw eps of the prompt and the negative at each step's first evaluation; medians over "
        "seeds with 95 % bootstrap intervals of the median). x0_change = ‖D_i - D_(i-1)‖ / ‖D_i‖: how far the "
        "clean-image estimate moves at step i; its sum over the steps is the trajectory's path length.",
        "",
    ]
    if data["scales"]:
        lines += [
            "| scale | cfg: median ‖c-u‖/‖u‖ (all steps) | cfg: step 1 | cfg: last step | tnr-cfg: median "
            "(all steps) | path length cfg | path length tnr-cfg | tnr-cfg - cfg (paired) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in data["scales"]:
            if "cfg" not in e or "tnr-cfg" not in e:
                continue
            c, t = e["cfg"], e["tnr-cfg"]
            first, last = c["diff_ratio_first_step"], c["diff_ratio_last_step"]
            cells = [
                f"{e['scale']:g}",
                _num(c["diff_ratio_median"]),
                f"{_num(first[0])} [{_num(first[1])}, {_num(first[2])}]",
                f"{_num(last[0])} [{_num(last[1])}, {_num(last[2])}]",
                _num(t["diff_ratio_median"]),
            ]
            if "path_length" in e:
                pc, pt, d = e["path_length"]["cfg"], e["path_length"]["tnr-cfg"], e["path_length_difference"]
                mark = " *" if d[1] > 0 or d[2] < 0 else ""
                cells += [_num(pc[0]), _num(pt[0]), f"{_num(d[0])} [{_num(d[1])}, {_num(d[2])}]{mark}"]
            else:
                cells += ["-", "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "single" in data:
        d = data["single"]["path_length_difference"]
        pn, pt = data["single"]["path_length"]["none"], data["single"]["path_length"]["tnr"]
        lines += [
            f"Single prediction: path length none {_num(pn[0])}, tnr {_num(pt[0])}; tnr - none (paired) "
            f"{_num(d[0])} [{_num(d[1])}, {_num(d[2])}]" + (" *" if d[1] > 0 or d[2] < 0 else "") + ".",
            "",
        ]
    if scale is not None:
        lines += per_step_table(cfg, results, indices, scale)
    return lines


def per_step_table(cfg: StudyConfig, results: dict[Arm, ArmResult], indices: np.ndarray, scale: float) -> list[str]:
    cfg_arm, tnr_arm = _arm(results, "cfg", scale, cfg), _arm(results, "tnr-cfg", scale, cfg)
    if cfg_arm is None or tnr_arm is None:
        return []
    ratio_c, ratio_t = column_matrix(cfg_arm, "diff_ratio"), column_matrix(tnr_arm, "diff_ratio")
    x0_c, x0_t = column_matrix(cfg_arm, "x0_change"), column_matrix(tnr_arm, "x0_change")
    sigma, S = column_matrix(tnr_arm, "sigma"), column_matrix(tnr_arm, "tnr_factor")
    if any(m is None for m in (ratio_c, ratio_t, x0_c, x0_t, sigma, S)):
        return []
    lines = [
        f"Per step at scale {scale:g} (median over {len(cfg_arm.seeds)} seeds [95 % CI]; S: TNR's factor):",
        "",
        "| step | sigma | S | ‖c-u‖/‖u‖ cfg | ‖c-u‖/‖u‖ tnr-cfg | x0_change cfg | x0_change tnr-cfg | "
        "x0_change tnr-cfg - cfg (paired mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j in range(ratio_c.shape[1]):
        rc, rt = median_ci(ratio_c[:, j], indices), median_ci(ratio_t[:, j], indices)
        cells = [str(j + 1), f"{sigma[0, j]:.4g}", f"{S[0, j]:.4f}", _ci(rc), _ci(rt)]
        if np.isnan(x0_c[:, j]).any():
            cells += ["-", "-", "-"]
        else:
            d = mean_ci(x0_t[:, j] - x0_c[:, j], indices)
            mark = " *" if d[1] > 0 or d[2] < 0 else ""
            cells += [_ci(median_ci(x0_c[:, j], indices)), _ci(median_ci(x0_t[:, j], indices)), _ci(d) + mark]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _ci(v: Sequence[float]) -> str:
    return f"{_num(v[0])} [{_num(v[1])}, {_num(v[2])}]"


def verdict(cfg: StudyConfig, results: dict[Arm, ArmResult]) -> tuple[str, str] | None:
    """(measured, reading) of the claim for the verdict table: the median ratio at the reference scale."""
    scale = reference_scale(cfg)
    arm = None if scale is None else _arm(results, "cfg", scale, cfg)
    m = None if arm is None else column_matrix(arm, "diff_ratio")
    if m is None:
        return None
    median = float(np.nanmedian(m))
    hundredths = median / 0.01
    # "on the order of a hundredth": held where the median is within a factor of 2 of 0.01.
    held = 0.5 <= hundredths < 2
    reading = f"{'held' if held else 'not held'}: {hundredths:.1f} hundredths (the notebook: about one)"
    return f"cfg {scale:g}: median ‖c - u‖ / ‖u‖ over steps and seeds {median:.3g}", reading


def steps_lines(results: dict[Arm, ArmResult]) -> list[dict[str, Any]]:
    """One JSON-ready record per image (arm, seed and its rows) for DIR/steps.jsonl: every cell's rows kept."""
    out = []
    for r in results.values():
        for seed in r.seeds:
            table = r.steps.get(seed)
            if table is not None:
                out.append(
                    {
                        "arm": r.arm.label,
                        "guidance": r.arm.guidance,
                        "scale": r.arm.scale,
                        "solver": r.arm.solver,
                        "steps": r.arm.steps,
                        "seed": seed,
                        **table.to_dict(),
                    }
                )
    return out
