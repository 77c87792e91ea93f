"""Agreement and calibration metrics on integer-coded judgments (numpy only).

Agreement: Krippendorff's alpha (nominal), Fleiss' kappa, Cohen's kappa of each worker
against a consensus, per-item entropy. Calibration: reliability-diagram bins and expected
calibration error (ECE) of an output confidence against gold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def answer_counts(
    items: np.ndarray, labels: np.ndarray, n_items: int | None = None, n_classes: int | None = None
) -> np.ndarray:
    """(n_items, n_classes) count matrix from answer arrays, via one bincount."""
    items = np.asarray(items, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    n_items = int(items.max()) + 1 if n_items is None else n_items
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    flat = np.bincount(items * n_classes + labels, minlength=n_items * n_classes)
    return flat.reshape(n_items, n_classes).astype(float)


def krippendorff_alpha_nominal(counts: np.ndarray) -> float:
    """Krippendorff's alpha for nominal data from an (items, classes) count matrix.

    Items with fewer than two answers are not pairable and are dropped, as in Krippendorff's
    definition. Builds the coincidence matrix o[c, k] = sum_u n_uc * n_uk / (m_u - 1)
    (minus the self-pairs on the diagonal) with one matrix product.
    """
    counts = np.asarray(counts, dtype=float)
    per_item = counts.sum(axis=1)
    pairable = counts[per_item >= 2]
    m = pairable.sum(axis=1)
    if pairable.size == 0:
        return float("nan")
    scaled = pairable / (m - 1)[:, None]
    coincidence = scaled.T @ pairable - np.diag(scaled.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    expected_disagreement = n * n - np.sum(n_c**2)
    if expected_disagreement <= 0:
        return float("nan")  # a single category is used: alpha is undefined
    observed_disagreement = n - np.trace(coincidence)
    return float(1.0 - (n - 1) * observed_disagreement / expected_disagreement)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an (items, classes) count matrix.

    With a constant number of raters per item this is the textbook formula. With varying
    numbers, each item's agreement uses its own rater count m_i and the class proportions
    pool all answers (items with m_i < 2 are dropped).
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if counts.size == 0:
        return float("nan")
    p_item = (np.sum(counts**2, axis=1) - m) / (m * (m - 1))
    p_class = counts.sum(axis=0) / m.sum()
    p_bar, p_expected = p_item.mean(), np.sum(p_class**2)
    if p_expected >= 1.0:
        return float("nan")
    return float((p_bar - p_expected) / (1.0 - p_expected))


def cohen_kappa_vs_consensus(
    items: np.ndarray,
    workers: np.ndarray,
    labels: np.ndarray,
    consensus: np.ndarray,
    n_workers: int | None = None,
    n_classes: int | None = None,
) -> np.ndarray:
    """Cohen's kappa of each worker's answers against ``consensus[item]`` on the items the
    worker answered; NaN where undefined (no answers, or both sides use a single class)."""
    items = np.asarray(items, dtype=np.int64)
    workers = np.asarray(workers, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    agreed_with = np.asarray(consensus, dtype=np.int64)[items]
    n_workers = int(workers.max()) + 1 if n_workers is None else n_workers
    if n_classes is None:
        n_classes = int(max(labels.max(), agreed_with.max())) + 1
    k = n_classes
    flat = np.bincount((workers * k + labels) * k + agreed_with, minlength=n_workers * k * k)
    table = flat.reshape(n_workers, k, k).astype(float)  # [w, worker's answer, consensus]
    total = table.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.trace(table, axis1=1, axis2=2) / total
        expected = np.einsum("wj,wj->w", table.sum(axis=2), table.sum(axis=1)) / total**2
        kappa: np.ndarray = (observed - expected) / (1.0 - expected)
    kappa[(total == 0) | np.isclose(expected, 1.0)] = np.nan
    return kappa


def item_entropy(proba_or_counts: np.ndarray, base: float = 2.0) -> np.ndarray:
    """Shannon entropy of each row (normalised first, so vote counts work too); in bits by
    default. Rows that sum to zero get NaN."""
    matrix = np.asarray(proba_or_counts, dtype=float)
    sums = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = matrix / sums
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy: np.ndarray = terms.sum(axis=1) / np.log(base)
    entropy[sums[:, 0] == 0] = np.nan
    return entropy


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Equal-width confidence bins; empty bins have count 0 and NaN means."""

    bin_edges: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        gaps = np.abs(np.nan_to_num(self.accuracy - self.mean_confidence))
        return float(np.sum(self.counts / total * gaps))


def reliability_diagram(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
) -> ReliabilityDiagram:
    """Bin ``confidence`` into ``n_bins`` equal-width bins on [0, 1] (right-closed, so 1.0
    falls into the last bin and 0.0 into the first); per bin: mean confidence, accuracy and
    count."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.shape != correct.shape:
        raise ValueError("confidence and correct must have the same shape")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, confidence, n_bins) / counts
        accuracy = np.bincount(bins, correct, n_bins) / counts
    return ReliabilityDiagram(edges, mean_conf, accuracy, counts)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
) -> float:
    """ECE = sum over bins of (bin share) * |accuracy - mean confidence|."""
    return reliability_diagram(confidence, correct, n_bins).ece
