"""Evaluation figures for a binary triage score (NumPy/SciPy only)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); nan if one class."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width bins: sum of |accuracy - confidence| weighted by bin size."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def sensitivity_specificity(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``p >= threshold`` means pneumonia."""
    y, positive = np.asarray(y).astype(bool), np.asarray(p) >= threshold
    sens = float(positive[y].mean()) if y.any() else float("nan")
    spec = float((~positive[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def negative_predictive_value(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    """Share of truly normal images among those scored below ``threshold``; nan if none."""
    below = np.asarray(p) < threshold
    return float((np.asarray(y)[below] == 0).mean()) if below.any() else float("nan")


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    return float(((np.asarray(p) >= threshold) == np.asarray(y).astype(bool)).mean())


def group_bootstrap_indices(groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``n_boot`` resamples drawn by whole group (patient), with replacement.

    Images of one child are correlated; resampling whole patients keeps intervals honest.
    """
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    samples = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(members), size=len(members))
        samples.append(np.concatenate([members[g] for g in chosen]))
    return samples


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile interval over patient-grouped resamples."""
    y, p = np.asarray(y), np.asarray(p)
    resampled = [statistic(y[idx], p[idx]) for idx in group_bootstrap_indices(groups, n_boot, seed)]
    values = np.asarray([v for v in resampled if np.isfinite(v)])
    estimate = statistic(y, p)
    if values.size == 0:
        return estimate, float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return estimate, float(low), float(high)


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    flag_at: float,
    clear_below: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int | list[float]]:
    """Every figure the model card and benchmark report for one split, with 95 % CIs."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    clear_cut = min(clear_below, flag_at)
    auc, auc_lo, auc_hi = bootstrap_ci(roc_auc, y, p, groups, n_boot, seed)
    acc, acc_lo, acc_hi = bootstrap_ci(accuracy, y, p, groups, n_boot, seed)
    flag_sens, flag_spec = sensitivity_specificity(y, p, flag_at)
    clear_sens, clear_spec = sensitivity_specificity(y, p, clear_cut)
    flagged, cleared = p >= flag_at, p < clear_cut
    return {
        "n": int(y.size),
        "n_pneumonia": int(y.sum()),
        "auc": auc,
        "auc_ci": [auc_lo, auc_hi],
        "accuracy": acc,
        "accuracy_ci": [acc_lo, acc_hi],
        "ece": expected_calibration_error(y, p),
        "flag_sensitivity": flag_sens,
        "flag_specificity": flag_spec,
        "clear_sensitivity": clear_sens,
        "clear_specificity": clear_spec,
        "clear_npv": negative_predictive_value(y, p, clear_cut),
        "share_flag": float(flagged.mean()),
        "share_review": float((~flagged & ~cleared).mean()),
        "share_clear": float(cleared.mean()),
        "pneumonia_in_clear": int(y[cleared].sum()),
        "normal_in_flag": int((1 - y[flagged]).sum()),
    }
