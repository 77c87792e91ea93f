"""Shared types and helpers for the label-aggregation methods.

Everything here works on integer-coded arrays (item, worker and class indices starting at 0),
so the quality engine can call it without pandas. The CSV/string layer is ``io.py``.

Conventions every method follows:

* ``proba`` rows sum to 1; an item with no answers gets the method's class prior
  (uniform for the vote-counting methods).
* Gold items (``gold={item: class}``) always come back as their gold class with a one-hot row;
  the EM methods also clamp them inside every iteration so gold anchors worker estimates.
* Ties: the label is the arg-max of ``proba``; among classes whose probability is equal
  (within 1e-12) the ``tie_break`` class wins if it is one of them, else the lowest class
  index. The CSV layer sorts class names, so "lowest index" means "first in sorted order".
  Why not break ties at random: the CLI is used by other tools and must be reproducible;
  why not always towards the harmful-to-miss class: that is a product decision (PNEUMONIA),
  so the caller states it with ``tie_break`` instead of the generic code guessing.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import numpy as np

if TYPE_CHECKING:  # imported where used: scipy.sparse is 0.1 s of `cxrlabel aggregate` start-up
    import scipy.sparse as sp

    #: an (items x workers*classes) answer matrix, or its transpose, for the EM products
    AnswerMatrix: TypeAlias = "IncidenceMatrix | sp.csr_matrix"

#: Stated-certainty levels, in code order (0 is the most certain).
CERTAINTY_LEVELS: tuple[str, ...] = ("definitely", "probably", "cant_tell")

_TIE_ATOL = 1e-12


class AggregationInputError(ValueError):
    """Bad input to an aggregation method or its CSV reader (one clear message)."""


@dataclass(frozen=True)
class Judgments:
    """A validated judgments table: one entry per answer, all integer coded."""

    items: np.ndarray
    workers: np.ndarray
    labels: np.ndarray
    n_items: int
    n_workers: int
    n_classes: int
    certainty: np.ndarray | None = None
    gold_items: np.ndarray | None = None
    gold_labels: np.ndarray | None = None
    trust: np.ndarray | None = None

    @property
    def n_answers(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def build(
        cls,
        items: np.ndarray,
        workers: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        *,
        n_items: int | None = None,
        n_workers: int | None = None,
        certainty: np.ndarray | None = None,
        gold: dict[int, int] | None = None,
        trust: np.ndarray | None = None,
    ) -> Judgments:
        items_arr = _as_index_array(items, "items")
        workers_arr = _as_index_array(workers, "workers")
        labels_arr = _as_index_array(labels, "labels")
        if not (items_arr.shape == workers_arr.shape == labels_arr.shape):
            raise AggregationInputError("items, workers and labels must have the same length")
        if n_classes < 1:
            raise AggregationInputError("n_classes must be at least 1")
        if labels_arr.size and labels_arr.max() >= n_classes:
            raise AggregationInputError(f"a label index is >= n_classes ({n_classes})")
        n_items = _count(items_arr, n_items, "n_items")
        n_workers = _count(workers_arr, n_workers, "n_workers")
        certainty_arr = None
        if certainty is not None:
            certainty_arr = _as_index_array(certainty, "certainty")
            if certainty_arr.shape != items_arr.shape:
                raise AggregationInputError("certainty must have one entry per answer")
            if certainty_arr.size and certainty_arr.max() >= len(CERTAINTY_LEVELS):
                raise AggregationInputError(
                    f"certainty codes must be 0..{len(CERTAINTY_LEVELS) - 1} {CERTAINTY_LEVELS}"
                )
        gold_items, gold_labels = _gold_arrays(gold, n_items, n_classes)
        trust_arr = None
        if trust is not None:
            trust_arr = np.asarray(trust, dtype=float)
            if trust_arr.shape != (n_workers,) or not np.all(np.isfinite(trust_arr)):
                raise AggregationInputError("trust must be a finite array of length n_workers")
            if np.any(trust_arr < 0):
                raise AggregationInputError("trust values must be >= 0")
        return cls(
            items_arr,
            workers_arr,
            labels_arr,
            n_items,
            n_workers,
            n_classes,
            certainty_arr,
            gold_items,
            gold_labels,
            trust_arr,
        )

    def vote_counts(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(n_items, n_classes) matrix of (weighted) answer counts, via one bincount."""
        flat = self.items * self.n_classes + self.labels
        size = self.n_items * self.n_classes
        counts = np.bincount(flat, weights=weights, minlength=size)
        return counts.reshape(self.n_items, self.n_classes).astype(float)

    def worker_label_matrix(self, weights: np.ndarray | None = None) -> sp.csr_matrix:
        """Sparse (n_items, n_workers * n_classes) matrix: column ``w * K + j`` counts worker
        ``w`` answering class ``j`` on the item. One sparse product with it replaces a loop over
        judgments in both the E-step and the M-step of confusion-matrix models.
        :meth:`answer_incidence` is the same matrix without scipy."""
        import scipy.sparse as sp

        k = self.n_classes
        data = np.ones(self.n_answers) if weights is None else np.asarray(weights, float)
        matrix = sp.csr_matrix(
            (data, (self.items, self.workers * k + self.labels)),
            shape=(self.n_items, self.n_workers * k),
        )
        matrix.sum_duplicates()
        return matrix

    def answer_matrices(self) -> tuple[AnswerMatrix, AnswerMatrix]:
        """:meth:`worker_label_matrix` and its transpose, for the EM products: as
        ``scipy.sparse`` CSR matrices when SciPy is already imported (their products are 3-8x
        faster), else as :class:`IncidenceMatrix` (importing SciPy costs 0.1 s, more than those
        products save in one ``cxrlabel aggregate`` run; issue 20). Both give the same sums up
        to the order of the additions (1e-16 relative)."""
        if "scipy.sparse" in sys.modules:
            matrix = self.worker_label_matrix()
            return matrix, matrix.T.tocsr()
        incidence = self.answer_incidence()
        return incidence, incidence.T

    def answer_incidence(self, weights: np.ndarray | None = None) -> IncidenceMatrix:
        """:meth:`worker_label_matrix` as an :class:`IncidenceMatrix` (NumPy only)."""
        k = self.n_classes
        return IncidenceMatrix(
            self.items,
            self.workers * k + self.labels,
            (self.n_items, self.n_workers * k),
            None if weights is None else np.asarray(weights, float),
        )

    def clamp_gold(self, proba: np.ndarray) -> np.ndarray:
        """Overwrite gold rows with one-hot rows of their known class (in place, returned)."""
        if self.gold_items is not None and self.gold_items.size:
            proba[self.gold_items] = 0.0
            proba[self.gold_items, self.gold_labels] = 1.0
        return proba

    def answers_per_item(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items)


class IncidenceMatrix:
    """A sparse matrix with one entry per answer: ``weights[a]`` (1 by default) at
    ``(rows[a], cols[a])``, repeated positions adding up. A product with a dense matrix,
    ``M @ dense`` or ``M.T @ dense``, is one row gather and one ``np.bincount``.

    Why, next to ``scipy.sparse``: importing SciPy costs about 0.1 s (it pulls in
    ``numpy.testing`` and ``numpy.f2py``), a fifth of a whole ``cxrlabel aggregate -m ds``
    process on a large file (issue 20). A CSR product is about 3x faster per call (0.36
    against 1.05 ms with 217,000 answers and 3 classes; 4-8x with 96 classes), which one EM
    run does not make up for, so this is used only where SciPy is not loaded yet
    (:meth:`Judgments.answer_matrices`)."""

    def __init__(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        shape: tuple[int, int],
        weights: np.ndarray | None = None,
    ) -> None:
        self.rows = rows
        self.cols = cols
        self.shape = shape
        self.weights = weights
        self._bins: dict[int, np.ndarray] = {}

    @property
    def T(self) -> IncidenceMatrix:  # the name scipy and NumPy use for the transpose
        return IncidenceMatrix(self.cols, self.rows, (self.shape[1], self.shape[0]), self.weights)

    def __matmul__(self, dense: np.ndarray) -> np.ndarray:
        """(rows x cols) @ (cols x m) -> (rows x m); ``dense`` must be 2-D."""
        width = dense.shape[1]
        values = dense.take(self.cols, axis=0)  # (entries, m): each entry's row of dense
        if self.weights is not None:
            values *= self.weights[:, None]
        sums = np.bincount(self._bins_for(width), values.ravel(), self.shape[0] * width)
        return sums.reshape(self.shape[0], width)

    def _bins_for(self, width: int) -> np.ndarray:
        """Output cell ``row * width + column`` of each value of the gathered (entries, width)
        matrix, flattened; kept, since an EM loop multiplies by the same width every time."""
        if width not in self._bins:
            self._bins[width] = (self.rows[:, None] * width + np.arange(width)).ravel()
        return self._bins[width]


@dataclass(frozen=True)
class AggregationResult:
    """What every method returns.

    ``worker_skill`` is method specific but always "higher is better": vote agreement (mv),
    trust (trust), expected accuracy under the fitted confusion matrices (ds, certainty) or
    the ability alpha (glad). ``confusion[w, true, answered]`` is filled by confusion-matrix
    models only.
    """

    labels: np.ndarray
    proba: np.ndarray
    worker_skill: np.ndarray
    method: str
    confusion: np.ndarray | None = None
    item_difficulty: np.ndarray | None = None
    class_prior: np.ndarray | None = None
    level_reliability: np.ndarray | None = None
    n_iter: int = 0
    converged: bool = True

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the chosen label, per item."""
        result: np.ndarray = self.proba[np.arange(self.labels.shape[0]), self.labels]
        return result


class Aggregator(ABC):
    """Crowd-kit-like interface: ``Method(**params).fit(...)`` returns an
    :class:`AggregationResult` and also keeps it as ``result_`` / ``labels_`` / ``probas_``."""

    name: ClassVar[str]
    uses_certainty: ClassVar[bool] = False

    def __init__(self, *, tie_break: int | None = None) -> None:
        self.tie_break = tie_break
        self.result_: AggregationResult | None = None

    def fit(
        self,
        items: np.ndarray,
        workers: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        *,
        n_items: int | None = None,
        n_workers: int | None = None,
        certainty: np.ndarray | None = None,
        gold: dict[int, int] | None = None,
        trust: np.ndarray | None = None,
    ) -> AggregationResult:
        judgments = Judgments.build(
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
        return self.fit_judgments(judgments)

    def fit_judgments(self, judgments: Judgments) -> AggregationResult:
        if self.tie_break is not None and not 0 <= self.tie_break < judgments.n_classes:
            raise AggregationInputError(f"tie_break class {self.tie_break} is out of range")
        raw = self._fit(judgments)
        proba = judgments.clamp_gold(np.array(raw.proba, dtype=float))
        result = replace(raw, proba=proba, labels=argmax_tie_break(proba, self.tie_break))
        self.result_ = result
        return result

    @abstractmethod
    def _fit(self, judgments: Judgments) -> AggregationResult:
        """Fit on validated judgments; ``labels`` of the returned result are recomputed."""

    @property
    def labels_(self) -> np.ndarray:
        return self._fitted().labels

    @property
    def probas_(self) -> np.ndarray:
        return self._fitted().proba

    @property
    def skills_(self) -> np.ndarray:
        return self._fitted().worker_skill

    def _fitted(self) -> AggregationResult:
        if self.result_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        return self.result_


def argmax_tie_break(proba: np.ndarray, tie_break: int | None = None) -> np.ndarray:
    """Row-wise arg-max; ties go to ``tie_break`` if it is tied for the top, else the lowest
    index (``np.argmax`` already returns the first maximum)."""
    labels = np.argmax(proba, axis=1) if proba.size else np.zeros(proba.shape[0], dtype=np.int64)
    if tie_break is not None and proba.size:
        top = proba[np.arange(proba.shape[0]), labels]
        tied = proba[:, tie_break] >= top - _TIE_ATOL
        labels = np.where(tied, tie_break, labels)
    return labels.astype(np.int64)


def normalize_rows(matrix: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Divide rows by their sums; all-zero rows become ``fallback`` (uniform by default)."""
    sums = matrix.sum(axis=1, keepdims=True)
    n_cols = matrix.shape[1]
    if fallback is None:
        fallback = np.full(n_cols, 1.0 / max(n_cols, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(sums > 0, matrix / np.where(sums > 0, sums, 1.0), fallback)
    return out


def softmax_rows(log_matrix: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Numerically stable row softmax of log-probabilities (``in_place``: overwrites
    ``log_matrix``, a float array, and returns it; saves a large temporary per EM step)."""
    top = row_max(log_matrix)[:, None]
    shifted: np.ndarray = np.subtract(log_matrix, top, out=log_matrix if in_place else None)
    np.exp(shifted, out=shifted)
    shifted /= row_sum(shifted)[:, None]
    return shifted


# NumPy reduces along a short contiguous axis slowly: on a (42,624 x 3) matrix ``max(axis=1)``
# takes 1.2 ms and ``sum(axis=1)`` 0.5 ms, against 0.15 ms column by column. The EM loops
# call them every iteration, so for the usual 2-10 classes the rows are reduced column-wise.
_COLUMNWISE_UP_TO = 16


def _reduce_rows(matrix: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc.reduce(matrix, axis=1)`` (2-D, at least one column), column by column when
    there are few columns."""
    if matrix.shape[1] > _COLUMNWISE_UP_TO:
        result: np.ndarray = ufunc.reduce(matrix, axis=1)
        return result
    out = matrix[:, 0].copy()
    for column in range(1, matrix.shape[1]):
        ufunc(out, matrix[:, column], out=out)
    return out


def row_max(matrix: np.ndarray) -> np.ndarray:
    """``matrix.max(axis=1)``, fast for few columns."""
    return _reduce_rows(matrix, np.maximum)


def row_sum(matrix: np.ndarray) -> np.ndarray:
    """``matrix.sum(axis=1)``, fast for few columns."""
    return _reduce_rows(matrix, np.add)


def column_sum(matrix: np.ndarray) -> np.ndarray:
    """``matrix.sum(axis=0)`` of a 2-D matrix, fast for few columns (0.03 against 0.45 ms on a
    (42,624 x 3) matrix)."""
    if matrix.shape[1] > _COLUMNWISE_UP_TO:
        result: np.ndarray = matrix.sum(axis=0)
        return result
    return np.array([matrix[:, column].sum() for column in range(matrix.shape[1])])


def _as_index_array(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise AggregationInputError(f"{name} must be a 1-D array")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise AggregationInputError(f"{name} must hold integer codes, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise AggregationInputError(f"{name} must be >= 0")
    return arr


def _count(codes: np.ndarray, given: int | None, name: str) -> int:
    needed = int(codes.max()) + 1 if codes.size else 0
    if given is None:
        return needed
    if given < needed:
        raise AggregationInputError(f"{name}={given} but codes go up to {needed - 1}")
    return int(given)


def _gold_arrays(
    gold: dict[int, int] | None, n_items: int, n_classes: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not gold:
        return None, None
    gold_items = np.fromiter(gold.keys(), dtype=np.int64, count=len(gold))
    gold_labels = np.fromiter(gold.values(), dtype=np.int64, count=len(gold))
    if gold_items.min() < 0 or gold_items.max() >= n_items:
        raise AggregationInputError("a gold item index is out of range")
    if gold_labels.min() < 0 or gold_labels.max() >= n_classes:
        raise AggregationInputError("a gold label index is out of range")
    return gold_items, gold_labels
