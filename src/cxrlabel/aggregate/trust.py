"""Appen (Figure Eight) trust-weighted confidence.

confidence(answer) = sum of trust of the workers who gave it / sum of trust of all workers on
the item, so the confidences of an item sum to 1 and the label is the answer with the largest
one. Appen's trust is a worker's accuracy on the test questions (gold) they saw in the job;
with no test questions every trust is 1 and the confidence is the plain vote share.
"""

from __future__ import annotations

import numpy as np

from .base import AggregationResult, Aggregator, Judgments, normalize_rows


class TrustWeighted(Aggregator):
    """Trust-weighted vote.

    Trust comes from, in order: the ``trust`` array passed to ``fit``; else accuracy on the
    gold items the worker answered; else 1 for everyone. A worker who answered no gold item
    gets ``default_trust`` if given, else the median trust of the workers who did (Appen
    lets nobody work without test questions, so there is no platform rule to copy; the
    median treats an untested worker as a typical one). An item whose workers all have trust
    0 gets a uniform row.
    """

    name = "trust"

    def __init__(self, *, tie_break: int | None = None, default_trust: float | None = None) -> None:
        super().__init__(tie_break=tie_break)
        self.default_trust = default_trust

    def _fit(self, judgments: Judgments) -> AggregationResult:
        trust = self.worker_trust(judgments)
        proba = normalize_rows(judgments.vote_counts(weights=trust[judgments.workers]))
        return AggregationResult(
            labels=np.zeros(judgments.n_items, dtype=np.int64),
            proba=proba,
            worker_skill=trust,
            method=self.name,
        )

    def worker_trust(self, judgments: Judgments) -> np.ndarray:
        if judgments.trust is not None:
            return judgments.trust
        if judgments.gold_items is None:
            return np.ones(judgments.n_workers)
        return gold_accuracy_trust(judgments, self.default_trust)


def gold_accuracy_trust(judgments: Judgments, default_trust: float | None = None) -> np.ndarray:
    """Each worker's accuracy on the gold items they answered (vectorised lookup)."""
    if judgments.gold_items is None or judgments.gold_labels is None:
        raise ValueError("gold accuracy needs the judgments' gold items")
    gold_of_item = np.full(judgments.n_items, -1, dtype=np.int64)
    gold_of_item[judgments.gold_items] = judgments.gold_labels
    answer_gold = gold_of_item[judgments.items]
    on_gold = answer_gold >= 0
    correct = (answer_gold == judgments.labels) & on_gold
    seen = np.bincount(judgments.workers[on_gold], minlength=judgments.n_workers)
    right = np.bincount(judgments.workers[correct], minlength=judgments.n_workers)
    tested = seen > 0
    trust = np.zeros(judgments.n_workers)
    trust[tested] = right[tested] / seen[tested]
    if default_trust is None:
        default_trust = float(np.median(trust[tested])) if tested.any() else 1.0
    trust[~tested] = default_trust
    return trust
