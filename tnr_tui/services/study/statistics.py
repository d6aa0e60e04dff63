"""Paired percentile bootstrap over seeds: the same resampled seed sets for every arm, so differences are paired."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tnr_tui.services.study.design import BOOTSTRAP_RESAMPLES

# ---- statistics ---------------------------------------------------------------------------------------------


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Resampled seed indices [resamples, n], shared by every arm so that differences are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def mean_ci(values: Sequence[float], indices: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % percentile bootstrap interval of `values` (one per seed)."""
    v = np.asarray(values, dtype=np.float64)
    means = v[indices].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def median_ci(values: Sequence[float], indices: np.ndarray) -> tuple[float, float, float]:
    """Median and 95 % percentile bootstrap interval of the median of `values` (one per seed)."""
    v = np.asarray(values, dtype=np.float64)
    medians = np.median(v[indices], axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return float(np.median(v)), float(lo), float(hi)
