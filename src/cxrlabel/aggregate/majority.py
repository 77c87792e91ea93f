"""Majority vote: each answer counts once; proba is the vote share."""

from __future__ import annotations

import numpy as np

from .base import (
    AggregationResult,
    Aggregator,
    Judgments,
    argmax_tie_break,
    normalize_rows,
)


class MajorityVote(Aggregator):
    """Plain majority vote.

    ``proba`` is the share of answers per class (uniform for an item with no answers), so
    tied classes get equal probability and the shared tie policy picks the label.
    ``worker_skill`` is the fraction of a worker's answers that match the final label
    (NaN for a worker with no answers).
    """

    name = "mv"

    def _fit(self, judgments: Judgments) -> AggregationResult:
        proba = judgments.clamp_gold(normalize_rows(judgments.vote_counts()))
        skill = agreement_with(judgments, proba, self.tie_break)
        return AggregationResult(
            labels=np.zeros(judgments.n_items, dtype=np.int64),
            proba=proba,
            worker_skill=skill,
            method=self.name,
        )


def agreement_with(
    judgments: Judgments, proba: np.ndarray, tie_break: int | None = None
) -> np.ndarray:
    """Per worker: fraction of answers equal to the arg-max label of ``proba``."""
    consensus = argmax_tie_break(proba, tie_break)
    hits = (consensus[judgments.items] == judgments.labels).astype(float)
    agree = np.bincount(judgments.workers, weights=hits, minlength=judgments.n_workers)
    seen = np.bincount(judgments.workers, minlength=judgments.n_workers)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, agree / np.maximum(seen, 1), np.nan)
