"""Label aggregation: majority vote, Appen trust, Dawid–Skene, GLAD, certainty-aware DS.

Array-level API (numpy/scipy only, no pandas)::

    from cxrlabel.aggregate import fit, get_method
    result = fit(items, workers, labels, n_classes=2, method="ds", gold={3: 1})
    result.labels, result.proba, result.confidence, result.worker_skill, result.confusion

    ds = get_method("ds", tie_break=1)          # crowd-kit-like object
    ds.fit(items, workers, labels, 2); ds.labels_, ds.probas_

The CSV layer is :mod:`cxrlabel.aggregate.csvfiles` (standard ``csv`` module, used by the
command line) with a DataFrame API on top in :mod:`cxrlabel.aggregate.io` (pandas); the Typer
sub-command is :func:`cxrlabel.aggregate.cli.aggregate_command`. None is imported here, so
importing this package never pulls in pandas or Typer.
"""

from __future__ import annotations

import numpy as np

from .base import (
    CERTAINTY_LEVELS,
    AggregationInputError,
    AggregationResult,
    Aggregator,
    Judgments,
    argmax_tie_break,
)
from .certainty import CertaintyDawidSkene
from .dawid_skene import DawidSkene
from .glad import GLAD
from .majority import MajorityVote
from .trust import TrustWeighted

METHODS: dict[str, type[Aggregator]] = {
    "mv": MajorityVote,
    "trust": TrustWeighted,
    "ds": DawidSkene,
    "glad": GLAD,
    "certainty": CertaintyDawidSkene,
}


def get_method(name: str, **params: object) -> Aggregator:
    """A fresh, unfitted aggregator; ``params`` go to its constructor (e.g. ``tie_break``)."""
    try:
        cls = METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise AggregationInputError(f"unknown method {name!r}; choose one of: {known}") from None
    return cls(**params)  # type: ignore[arg-type]


def fit(
    items: np.ndarray,
    workers: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    method: str = "ds",
    n_items: int | None = None,
    n_workers: int | None = None,
    certainty: np.ndarray | None = None,
    gold: dict[int, int] | None = None,
    trust: np.ndarray | None = None,
    tie_break: int | None = None,
    **params: object,
) -> AggregationResult:
    """Aggregate integer-coded judgments with one method; see :class:`AggregationResult`."""
    aggregator = get_method(method, tie_break=tie_break, **params)
    return aggregator.fit(
        items,
        workers,
        labels,
        n_classes,
        n_items=n_items,
        n_workers=n_workers,
        certainty=certainty,
        gold=gold,
        trust=trust,
    )


__all__ = [
    "CERTAINTY_LEVELS",
    "GLAD",
    "METHODS",
    "AggregationInputError",
    "AggregationResult",
    "Aggregator",
    "CertaintyDawidSkene",
    "DawidSkene",
    "Judgments",
    "MajorityVote",
    "TrustWeighted",
    "argmax_tie_break",
    "fit",
    "get_method",
]
